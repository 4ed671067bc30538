using NUnit.Framework;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Parity;

/// <summary>
/// fp32 parity of the SAM3 video predictor (scenario f_video_predictor_text: text prompt on a frame, then forward
/// propagation with detection, association, hot-start buffering and memory updates on every frame) through the same
/// data-driven runner as <c>sam3 parity</c>: every recorded detector output and per-frame output (ids, probabilities,
/// boxes, masks within 0.1% of pixels), plus the number of tracked objects per frame from <c>frame_stats</c>; and
/// f2_video_predictor_interactive (the recorded session-API request sequence: text detection, point refinement, a new
/// object by points, partial propagation both ways, removal, fetch, reset, box prompt; non-overlap compared on the
/// recorded inputs as README-video-extra.md prescribes). f2 replays the recorded request JSONs through the request form
/// (Sam3VideoRequest.FromJson + Sam3VideoRequestHandler, upstream's handle_request / handle_stream_request) and compares
/// the responses. f2 takes about 2 minutes on 2 cores.
/// </summary>
[TestFixture, Category("Parity"), Category("Slow")]
public class VideoPredictorParityTests
{
    private ParityRunner? _runner;

    [OneTimeSetUp]
    public void Open() => _runner = new ParityRunner(SharedData.Parity());

    [OneTimeTearDown]
    public void Close() => _runner?.Dispose();

    [TestCase("f_")]
    [TestCase("f2")]
    public void ScenarioPasses(string prefix)
    {
        foreach (var name in _runner!.Select([prefix]))
        {
            var report = _runner.Run(name);
            foreach (var c in report.Comparisons) TestContext.Out.WriteLine(c.ToString());
            foreach (var d in report.Detections) TestContext.Out.WriteLine($"check {d.Where}: reference {d.Reference}, ours {d.Ours}");
            foreach (var n in report.NotCompared) TestContext.Out.WriteLine($"not compared: {n}");
            TestContext.Out.WriteLine($"{name}: {report.Seconds:F1} s");
            Assert.That(report.Passed, Is.True, $"{name}: {report.Failure}");
            Assert.That(report.Comparisons, Is.Not.Empty);
        }
    }
}
