using System.Diagnostics;
using System.Text.Json;
using TorchSharp;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Video;

namespace Sam3.Torch.Tests.Video;

/// <summary>
/// The public video-predictor session facade on the tiny model and the parity video: a text prompt and a forward
/// propagation give the reference's objects and probabilities (values from scenario f's JSON), reset forgets them,
/// closed sessions refuse calls, and removing an unknown object is a typed error.
/// </summary>
[TestFixture, Category("Slow")]
public class VideoPredictorSessionTests
{
    private Sam3VideoPredictor? _predictor;
    private JsonElement _f;

    [OneTimeSetUp]
    public void Load()
    {
        var config = Sam3Config.Load(SharedData.Parity("tiny", "config.json"));
        _predictor = Sam3VideoPredictor.Load(SharedData.Parity("tiny", "model.safetensors"), config,
                                             SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"));
        _f = JsonDocument.Parse(File.ReadAllText(SharedData.Parity("tiny", "f_video_predictor_text.json"))).RootElement.GetProperty("parameters");
    }

    [OneTimeTearDown]
    public void Unload() => _predictor?.Dispose();

    [Test]
    public void TextPromptThenForwardPropagationMatchesTheReferenceObjects()
    {
        using var session = _predictor!.StartSession(SharedData.Parity("inputs", "video_0001"));
        Assert.That(session.FrameCount, Is.EqualTo(8));
        var first = session.AddText(0, "person");
        int expectedCount = _f.GetProperty("frame_stats")[0].GetProperty("num_obj_tracked").GetInt32();
        Assert.That(first.Objects, Has.Count.EqualTo(expectedCount));
        Assert.That(first.Objects[0].Probability, Is.EqualTo(0.9165173f).Within(1e-5f)); // add_prompt.out_probs of scenario f
        Assert.That(first.Objects[0].Mask, Has.Length.EqualTo(session.Width * session.Height));

        var frames = session.Propagate(PropagationDirection.Forward).ToList();
        Assert.That(frames.Select(f => f.FrameIndex), Is.EqualTo(Enumerable.Range(0, 8)));
        Assert.That(frames.All(f => f.Objects.Count == 1 && f.Objects[0].ObjectId == first.Objects[0].ObjectId), Is.True);
        // a backward pass from the first prompted frame has nothing before frame 0 to visit
        Assert.That(session.Propagate(PropagationDirection.Backward, startFrame: 0).ToList(), Is.Empty);

        Assert.Throws<Sam3PromptException>(() => session.RemoveObject(99));
        session.Reset();
        Assert.That(session.ObjectIds, Is.Empty);
        session.Dispose();
        Assert.Throws<Sam3StateException>(() => session.AddText(0, "person"));
    }

    private static List<string> Run(Sam3VideoSession session, CancellationToken ct = default)
    {
        var log = new List<string>();
        foreach (var o in session.AddText(0, "person").Objects) log.Add($"prompt {o.ObjectId} {o.Probability:R} {o.Area}");
        foreach (var f in session.Propagate(PropagationDirection.Forward, maxFrames: 2, cancellationToken: ct))
            foreach (var o in f.Objects) log.Add($"{f.FrameIndex} {o.ObjectId} {o.Probability:R} {o.Area} {string.Join(",", o.BoxXywh)}");
        return log;
    }

    [Test]
    public void SessionsOnSeveralThreadsGiveTheSequentialResults()
    {
        string video = SharedData.Parity("inputs", "video_0001");
        List<string> sequential;
        using (var s = _predictor!.StartSession(video)) sequential = Run(s);
        Assert.That(sequential, Has.Count.GreaterThan(1));
        var tasks = Enumerable.Range(0, 3).Select(_ => Task.Run(() =>
        {
            using var s = _predictor.StartSession(video);
            return Run(s);
        })).ToArray();
        Task.WaitAll(tasks);
        foreach (var t in tasks) Assert.That(t.Result, Is.EqualTo(sequential));
    }

    [Test]
    public void CancelledPropagationLeavesTheSessionUsable()
    {
        using var session = _predictor!.StartSession(SharedData.Parity("inputs", "video_0001"));
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.Throws<OperationCanceledException>(() => Run(session, cts.Token));
        var log = Run(session);
        Assert.That(log.Count(l => !l.StartsWith("prompt")), Is.EqualTo(3)); // frames 0..2, one object each
    }

    [Test]
    public void PropagationCancelledMidwayLeavesTheSessionUsable()
    {
        string video = SharedData.Parity("inputs", "video_0001");
        List<string> uncancelled;
        using (var s = _predictor!.StartSession(video)) uncancelled = Run(s);
        using var session = _predictor.StartSession(video);
        var (engine, state) = session.Internals;
        session.AddText(0, "person");
        using var cts = new CancellationTokenSource();
        var started = new List<int>();
        // cancel while frame 1 is being processed: frame 2 never starts
        Assert.Throws<OperationCanceledException>(() =>
        {
            foreach (var o in engine.Propagate(state, null, 2, reverse: false, onFrameStart: f => { started.Add(f); if (f == 1) cts.Cancel(); },
                                               cancellationToken: cts.Token))
                o.Dispose();
        });
        Assert.That(started, Is.EqualTo(new[] { 0, 1 }));
        Assert.That(Run(session), Is.EqualTo(uncancelled));
    }

    [Test]
    public void TwoHundredSessionsLeaveNativeMemoryFlat()
    {
        string video = SharedData.Parity("inputs", "video_0001");
        void OneSession()
        {
            using var s = _predictor!.StartSession(video);
            Assert.That(s.ReadFrame(0).Width, Is.EqualTo(s.Width));
        }
        for (int i = 0; i < 5; i++) OneSession();
        var before = Measure();
        for (int i = 0; i < 200; i++) OneSession();
        var after = Measure();
        TestContext.Out.WriteLine($"200 sessions: live tensors {before.Live} -> {after.Live}, RSS {before.Rss / 1048576.0:F1} -> {after.Rss / 1048576.0:F1} MiB");
        Assert.That(after.Live, Is.LessThanOrEqualTo(before.Live), "tensors leaked by closed sessions");
        Assert.That(after.Rss - before.Rss, Is.LessThan(48L << 20), "RSS grew by more than 48 MiB over 200 sessions");
    }

    private static (long Live, long Rss) Measure() => MemoryProbe.Measure();

    [Test]
    public void BoxPromptsThenResetsLeaveNoTensorsBehind()
    {
        // a box as the initial prompt is kept by the session (its tensors outlive the call); reset and close must free it
        using var session = _predictor!.StartSession(SharedData.Parity("inputs", "video_0001"));
        var box = new BoxPrompt(Box.FromXywh(0.25f, 0.2f, 0.4f, 0.6f, CoordinateSpace.Normalized));
        void Once()
        {
            session.AddBox(0, box);
            session.Reset();
        }
        Once();
        Once();
        var before = Measure();
        for (int i = 0; i < 4; i++) Once();
        var after = Measure();
        TestContext.Out.WriteLine($"4 box prompts + resets: live tensors {before.Live} -> {after.Live}");
        Assert.That(after.Live, Is.LessThanOrEqualTo(before.Live), "tensors of reset box prompts were not freed");
    }

    [Test]
    public void OpeningAndClosingSessionsLeavesMemoryFlat()
    {
        string video = SharedData.Parity("inputs", "video_0001");
        void OneSession()
        {
            using var s = _predictor!.StartSession(video);
            Assert.That(s.AddText(0, "person").Objects, Is.Not.Empty);
        }
        for (int i = 0; i < 3; i++) OneSession();
        var before = Measure();
        const int n = 15; // the live-tensor count is exact: a leak shows after one session
        for (int i = 0; i < n; i++) OneSession();
        var after = Measure();
        TestContext.Out.WriteLine($"{n} sessions: live tensors {before.Live} -> {after.Live}, RSS {before.Rss / 1048576.0:F1} -> {after.Rss / 1048576.0:F1} MiB");
        Assert.That(after.Live, Is.LessThanOrEqualTo(before.Live), "tensors leaked by closed sessions");
        Assert.That(after.Rss - before.Rss, Is.LessThan(64L << 20), "RSS grew by more than 64 MiB over the sessions");
    }
}
