using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Video;

namespace Sam3.Torch.Tests.Video;

/// <summary>
/// The request handler's session bookkeeping and request checks (the replay of the recorded f2 request sequence with
/// parity is in VideoPredictorParityTests), the device-per-session model cache, and the prompts a live stream refuses.
/// Tiny model; one text prompt on one frame.
/// </summary>
[TestFixture, Category("Fast")]
public class VideoRequestHandlerTests
{
    private Sam3VideoPredictor? _predictor;
    private string _frames = "";

    [OneTimeSetUp]
    public void Load()
    {
        var config = Sam3Config.Load(SharedData.Parity("tiny", "config.json"));
        _predictor = Sam3VideoPredictor.Load(SharedData.Parity("tiny", "model.safetensors"), config,
                                             SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"));
        _frames = SharedData.Parity("inputs", "video_0001");
    }

    [OneTimeTearDown]
    public void Unload() => _predictor?.Dispose();

    private static Sam3VideoRequest Req(string type, string? session = null) => new() { Type = type, SessionId = session };

    [Test]
    public void SessionLifecycleAndTextPrompt()
    {
        using var handler = new Sam3VideoRequestHandler(_predictor!);
        var started = handler.Handle(new Sam3VideoRequest { Type = "start_session", ResourcePath = _frames });
        Assert.That(Guid.TryParse(started.SessionId, out _), Is.True, "a session id is created when none is given");
        string id = started.SessionId!;
        Assert.That(handler.SessionIds, Is.EqualTo(new[] { id }));

        var r = handler.Handle(Sam3VideoRequest.FromJson($$"""{"type": "add_prompt", "session_id": "{{id}}", "frame_index": 0, "text": "person"}"""));
        Assert.That(r.FrameIndex, Is.EqualTo(0));
        var o = r.Outputs!;
        Assert.That(o.OutObjIds, Is.Not.Empty, "scenario f: the tiny model finds a person on frame 0");
        Assert.That(o.OutProbs, Has.Length.EqualTo(o.OutObjIds.Length));
        Assert.That(o.OutBoxesXywh, Has.Length.EqualTo(o.OutObjIds.Length));
        Assert.That(o.OutBinaryMasks, Has.Length.EqualTo(o.OutObjIds.Length));
        Assert.That(handler.TryGetSession(id, out var session), Is.True);
        for (int i = 0; i < o.OutObjIds.Length; i++)
        {
            var m = o.OutBinaryMasks[i];
            Assert.That((m.Width, m.Height), Is.EqualTo((session.Width, session.Height)));
            // out_boxes_xywh = masks_to_boxes (inclusive xyxy) as normalised xywh
            var (x0, y0, x1, y1) = m.Bounds()!.Value;
            var b = o.OutBoxesXywh[i];
            Assert.That(b[0] * session.Width, Is.EqualTo(x0).Within(1e-3));
            Assert.That(b[1] * session.Height, Is.EqualTo(y0).Within(1e-3));
            Assert.That(b[2] * session.Width, Is.EqualTo(x1 - x0).Within(1e-3));
            Assert.That(b[3] * session.Height, Is.EqualTo(y1 - y0).Within(1e-3));
        }

        // the typed session API gives the same objects, with the image API's Box and BinaryMask
        var again = session.AddText(0, "person");
        Assert.That(again.Objects.Select(x => x.ObjectId), Is.EqualTo(o.OutObjIds));
        for (int i = 0; i < again.Objects.Count; i++)
        {
            Assert.That(again.Objects[i].BinaryMask.Data, Is.EqualTo(o.OutBinaryMasks[i].Data));
            var (x, y, w, h) = again.Objects[i].Box.ToXywh();
            Assert.That(new[] { x, y, w, h }, Is.EqualTo(o.OutBoxesXywh[i]));
        }

        Assert.That(handler.Handle(Req("reset_session", id)).IsSuccess, Is.True);
        Assert.That(session.ObjectIds, Is.Empty);

        // a start with the id of an open session replaces (and closes) it
        var replaced = handler.Handle(new Sam3VideoRequest { Type = "start_session", ResourcePath = _frames, SessionId = id });
        Assert.That(replaced.SessionId, Is.EqualTo(id));
        Assert.That(handler.SessionIds, Has.Count.EqualTo(1));
        Assert.Throws<Sam3StateException>(() => session.AddText(0, "person"), "the replaced session is closed");

        Assert.That(handler.Handle(Req("close_session", id)).IsSuccess, Is.True);
        Assert.That(handler.Handle(Req("close_session", id)).IsSuccess, Is.True, "close_session is idempotent");
        Assert.That(handler.SessionIds, Is.Empty);
    }

    [Test]
    public void InvalidRequestsNameTheProblem()
    {
        using var handler = new Sam3VideoRequestHandler(_predictor!);
        string id = handler.Handle(new Sam3VideoRequest { Type = "start_session", ResourcePath = _frames, SessionId = "s" }).SessionId!;
        Assert.That(Assert.Throws<ArgumentException>(() => handler.Handle(Req("propagate_in_video", id)))!.Message, Does.Contain("propagate_in_video"));
        Assert.That(Assert.Throws<ArgumentException>(() => handler.HandleStream(Req("add_prompt", id)))!.Message, Does.Contain("add_prompt"));
        Assert.That(Assert.Throws<ArgumentException>(() => handler.Handle(Req("explode", id)))!.Message, Does.Contain("explode"));
        Assert.That(Assert.Throws<ArgumentException>(() => handler.HandleStream(Req("propagate_in_video", id) with { PropagationDirection = "sideways" }))!.Message,
                    Does.Contain("sideways"));
        Assert.That(Assert.Throws<Sam3StateException>(() => handler.Handle(Req("reset_session", "nope")))!.Message, Does.Contain("nope"));
        Assert.That(Assert.Throws<Sam3StateException>(() => handler.HandleStream(Req("propagate_in_video", "nope")))!.Message, Does.Contain("nope"));
        Assert.That(Assert.Throws<ArgumentException>(() => handler.Handle(Req("start_session")))!.Message, Does.Contain("resource_path"));
        Assert.That(Assert.Throws<ArgumentException>(() => handler.Handle(Req("add_prompt", id) with { Text = "person" }))!.Message, Does.Contain("frame_index"));
        var points = Req("add_prompt", id) with { FrameIndex = 0, Points = [[0.5f, 0.5f]], PointLabels = [1] };
        Assert.That(Assert.Throws<ArgumentException>(() => handler.Handle(points))!.Message, Does.Contain("obj_id"));
        Assert.That(Assert.Throws<ArgumentException>(() => handler.Handle(points with { ObjId = 1, Text = "person" }))!.Message, Does.Contain("text"));
        Assert.That(Assert.Throws<ArgumentException>(() => handler.Handle(points with { ObjId = 1, PointLabels = [1, 0] }))!.Message, Does.Contain("point_labels"));
        Assert.That(Assert.Throws<ArgumentException>(() => handler.Handle(Req("add_prompt", id) with { FrameIndex = 0, BoundingBoxes = [[0.1f, 0.1f, 0.2f]], BoundingBoxLabels = [1] }))!.Message,
                    Does.Contain("[x, y, w, h]"));
        Assert.That(Assert.Throws<ArgumentException>(() => handler.Handle(Req("add_prompt", id) with { FrameIndex = 0 }))!.Message, Does.Contain("at least one"));
        Assert.That(Assert.Throws<ArgumentException>(() => handler.Handle(Req("remove_object", id)))!.Message, Does.Contain("obj_id"));

        // Dispose closes every session (upstream shutdown)
        Assert.That(handler.TryGetSession(id, out var session), Is.True);
        handler.Dispose();
        Assert.Throws<Sam3StateException>(() => session.AddText(0, "person"));
        Assert.Throws<ObjectDisposedException>(() => handler.Handle(Req("reset_session", id)));
    }

    [Test]
    public void SessionsOnOneDeviceShareOneModel()
    {
        Assert.That(_predictor!.ModelDeviceName, Is.EqualTo("cpu"));
        using var a = _predictor.StartSession(_frames);
        using var b = _predictor.StartSession(_frames, new Sam3VideoSessionOptions { Device = "cpu" });
        using var c = _predictor.StartSession(_frames, new Sam3VideoSessionOptions { Device = "CPU" });
        Assert.That(b.Internals.Engine.Detector, Is.SameAs(a.Internals.Engine.Detector));
        Assert.That(c.Internals.Engine.Detector, Is.SameAs(a.Internals.Engine.Detector));
        Assert.That(_predictor.ModelCount, Is.EqualTo(1));
    }

    [Test]
    public void UnavailableOrUnknownDevicesAreTypedErrorsNamingThem()
    {
        var e = Assert.Throws<Sam3ConfigException>(() => _predictor!.StartSession(_frames, new Sam3VideoSessionOptions { Device = "cuda:63" }))!;
        Assert.That(e.Message, Does.Contain("cuda:63"));
        var a = Assert.Throws<ArgumentException>(() => _predictor!.StartSession(_frames, new Sam3VideoSessionOptions { Device = "abacus" }))!;
        Assert.That(a.Message, Does.Contain("abacus"));
        Assert.That(_predictor!.ModelCount, Is.EqualTo(1), "a failed request loads nothing");
    }

    [Test]
    public void LiveStreamsRefuseBoxesAndPointsSayingWhy()
    {
        using var stream = _predictor!.StartStream("person");
        var box = Assert.Throws<Sam3StateException>(() => stream.AddBox(0, new BoxPrompt(Box.FromXywh(0.1f, 0.1f, 0.2f, 0.2f, CoordinateSpace.Normalized))))!;
        Assert.That(box.Message, Does.Contain("reset_state"));
        var pts = Assert.Throws<Sam3StateException>(() => stream.AddPoints(0, 1, [PointPrompt.Normalized(0.5f, 0.5f)]))!;
        Assert.That(pts.Message, Does.Contain("add_tracker_new_points"));
        // the stream is unchanged and usable
        using (var session = _predictor.StartSession(_frames))
            Assert.That(stream.Push(session.ReadFrame(0)), Is.Empty, "the first frame is held back by the hot-start delay");
        Assert.That(stream.FramesPushed, Is.EqualTo(1));
    }

    [Test]
    public void BoxPromptedStreamFollowsTheSessionBoxPrompt()
    {
        // upstream add_prompt(frame 0, bounding_boxes) then forward propagation; 2 frames: frame 0 must match exactly,
        // frame 1 keeps the ids (shorter than 16 frames, the object-pointer encoding differs by design, see docs)
        var box = new BoxPrompt(Box.FromXywh(0.35f, 0.25f, 0.30f, 0.50f, CoordinateSpace.Normalized));
        List<VideoFrameResult> expected;
        var frames = new List<RgbImage>();
        using (var session = _predictor!.StartSession(_frames))
        {
            for (int i = 0; i < 2; i++) frames.Add(session.ReadFrame(i));
            session.AddBox(0, box);
            expected = session.Propagate(PropagationDirection.Forward, maxFrames: 1).ToList();
        }
        Assert.That(expected.Select(f => f.FrameIndex), Is.EqualTo(new[] { 0, 1 }));
        Assert.That(expected[0].Objects, Is.Not.Empty, "the box finds an object on frame 0");

        using var stream = _predictor.StartStream(box, options: new Sam3VideoStreamOptions { Device = "cpu" });
        Assert.That((stream.Text, stream.Box), Is.EqualTo(((string?)null, (BoxPrompt?)box)));
        var got = new List<VideoFrameResult>();
        foreach (var f in frames) got.AddRange(stream.Push(f));
        got.AddRange(stream.Complete());
        Assert.That(got.Select(f => f.FrameIndex), Is.EqualTo(new[] { 0, 1 }));
        Assert.That(VideoStreamTests.Describe(got[0]), Is.EqualTo(VideoStreamTests.Describe(expected[0])));
        Assert.That(got[1].Objects.Select(o => o.ObjectId), Is.EqualTo(expected[1].Objects.Select(o => o.ObjectId)), "frame 1");
    }
}
