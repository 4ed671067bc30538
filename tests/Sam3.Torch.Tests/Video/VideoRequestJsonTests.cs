using System.Text.Json;
using System.Text.Json.Nodes;
using NUnit.Framework;
using Sam3.Torch.Video;

namespace Sam3.Torch.Tests.Video;

/// <summary>
/// The request form's JSON: every request and response type of upstream's <c>handle_request</c> /
/// <c>handle_stream_request</c>, written by hand in upstream's field names, deserialises to the expected values and
/// serialises back to the same JSON.
/// </summary>
[TestFixture, Category("Fast")]
public class VideoRequestJsonTests
{
    private static void AssertSameJson(string ours, string expected) =>
        Assert.That(JsonNode.DeepEquals(JsonNode.Parse(ours), JsonNode.Parse(expected)), Is.True, $"ours:     {ours}\nexpected: {expected}");

    [Test]
    public void StartSession()
    {
        const string json = """{"type": "start_session", "resource_path": "/data/frames", "session_id": "s1"}""";
        var r = Sam3VideoRequest.FromJson(json);
        Assert.That((r.Type, r.ResourcePath, r.SessionId), Is.EqualTo(("start_session", "/data/frames", "s1")));
        Assert.That(r.FrameIndex, Is.Null);
        AssertSameJson(r.ToJson(), json);
        var noId = Sam3VideoRequest.FromJson("""{"type": "start_session", "resource_path": "v.mp4"}""");
        Assert.That(noId.SessionId, Is.Null);
    }

    [Test]
    public void AddPromptText()
    {
        const string json = """{"type": "add_prompt", "session_id": "s1", "frame_index": 0, "text": "person"}""";
        var r = Sam3VideoRequest.FromJson(json);
        Assert.That((r.Type, r.SessionId, r.FrameIndex, r.Text), Is.EqualTo(("add_prompt", "s1", (int?)0, "person")));
        Assert.That(r.Points, Is.Null);
        Assert.That(r.BoundingBoxes, Is.Null);
        AssertSameJson(r.ToJson(), json);
    }

    [Test]
    public void AddPromptPoints()
    {
        const string json = """{"type": "add_prompt", "session_id": "s1", "frame_index": 4, "points": [[0.3, 0.4], [0.7, 0.7]], "point_labels": [1, 0], "obj_id": 0}""";
        var r = Sam3VideoRequest.FromJson(json);
        Assert.That(r.FrameIndex, Is.EqualTo(4));
        Assert.That(r.Points, Is.EqualTo(new[] { new[] { 0.3f, 0.4f }, new[] { 0.7f, 0.7f } }));
        Assert.That(r.PointLabels, Is.EqualTo(new[] { 1, 0 }));
        Assert.That(r.ObjId, Is.EqualTo(0));
        AssertSameJson(r.ToJson(), json);
    }

    [Test]
    public void AddPromptBoxes()
    {
        const string json = """{"type": "add_prompt", "session_id": "s1", "frame_index": 1, "bounding_boxes": [[0.35, 0.25, 0.3, 0.5]], "bounding_box_labels": [1]}""";
        var r = Sam3VideoRequest.FromJson(json);
        Assert.That(r.BoundingBoxes, Is.EqualTo(new[] { new[] { 0.35f, 0.25f, 0.3f, 0.5f } }));
        Assert.That(r.BoundingBoxLabels, Is.EqualTo(new[] { 1 }));
        AssertSameJson(r.ToJson(), json);
    }

    [Test]
    public void RemoveResetClose()
    {
        const string remove = """{"type": "remove_object", "session_id": "s1", "obj_id": 2, "is_user_action": false}""";
        var r = Sam3VideoRequest.FromJson(remove);
        Assert.That((r.Type, r.ObjId, r.IsUserAction), Is.EqualTo(("remove_object", (int?)2, (bool?)false)));
        AssertSameJson(r.ToJson(), remove);
        foreach (var type in new[] { "reset_session", "close_session" })
        {
            string json = $$"""{"type": "{{type}}", "session_id": "s1"}""";
            var x = Sam3VideoRequest.FromJson(json);
            Assert.That((x.Type, x.SessionId), Is.EqualTo((type, "s1")));
            AssertSameJson(x.ToJson(), json);
        }
    }

    [Test]
    public void PropagateInVideo()
    {
        const string json = """{"type": "propagate_in_video", "session_id": "s1", "propagation_direction": "backward", "start_frame_index": 2, "max_frame_num_to_track": 5}""";
        var r = Sam3VideoRequest.FromJson(json);
        Assert.That((r.PropagationDirection, r.StartFrameIndex, r.MaxFrameNumToTrack), Is.EqualTo(("backward", (int?)2, (int?)5)));
        AssertSameJson(r.ToJson(), json);
        var defaults = Sam3VideoRequest.FromJson("""{"type": "propagate_in_video", "session_id": "s1"}""");
        Assert.That((defaults.PropagationDirection, defaults.StartFrameIndex, defaults.MaxFrameNumToTrack), Is.EqualTo(((string?)null, (int?)null, (int?)null)));
    }

    [Test]
    public void UnknownFieldsAreIgnoredAndWrongTypesRejected()
    {
        var r = Sam3VideoRequest.FromJson("""{"type": "reset_session", "session_id": "s1", "priority": 3}""");
        Assert.That(r.Type, Is.EqualTo("reset_session"));
        Assert.Throws<JsonException>(() => Sam3VideoRequest.FromJson("""{"type": "add_prompt", "frame_index": "zero"}"""));
        Assert.Throws<JsonException>(() => Sam3VideoRequest.FromJson("null"));
    }

    [Test]
    public void SessionAndSuccessResponses()
    {
        var started = Sam3VideoResponse.FromJson("""{"session_id": "0b6f"}""");
        Assert.That((started.SessionId, started.FrameIndex, started.Outputs, started.IsSuccess), Is.EqualTo(("0b6f", (int?)null, (Sam3VideoOutputs?)null, (bool?)null)));
        AssertSameJson(new Sam3VideoResponse { SessionId = "0b6f" }.ToJson(), """{"session_id": "0b6f"}""");
        Assert.That(Sam3VideoResponse.FromJson("""{"is_success": true}""").IsSuccess, Is.True);
        AssertSameJson(new Sam3VideoResponse { IsSuccess = true }.ToJson(), """{"is_success": true}""");
    }

    [Test]
    public void FrameResponse()
    {
        // two objects on a 4x2 video: masks as nested rows (numpy tolist of 0/1)
        const string json = """
            {"frame_index": 3, "outputs": {"out_obj_ids": [1, 4], "out_probs": [0.875, 1.0],
             "out_boxes_xywh": [[0.25, 0.0, 0.25, 0.5], [0.0, 0.0, 0.0, 0.5]],
             "out_binary_masks": [[[0, 1, 1, 0], [0, 0, 0, 0]], [[1, 0, 0, 0], [1, 0, 0, 0]]]}}
            """;
        var r = Sam3VideoResponse.FromJson(json);
        Assert.That(r.FrameIndex, Is.EqualTo(3));
        var o = r.Outputs!;
        Assert.That(o.OutObjIds, Is.EqualTo(new[] { 1, 4 }));
        Assert.That(o.OutProbs, Is.EqualTo(new[] { 0.875f, 1f }));
        Assert.That(o.OutBoxesXywh[1], Is.EqualTo(new[] { 0f, 0f, 0f, 0.5f }));
        Assert.That(o.OutBinaryMasks, Has.Length.EqualTo(2));
        Assert.That((o.OutBinaryMasks[0].Width, o.OutBinaryMasks[0].Height), Is.EqualTo((4, 2)));
        Assert.That(o.OutBinaryMasks[0].Data, Is.EqualTo(new byte[] { 0, 1, 1, 0, 0, 0, 0, 0 }));
        Assert.That(o.OutBinaryMasks[1][0, 1], Is.True);
        Assert.That(o.OutBinaryMasks[1][1, 0], Is.False);
        AssertSameJson(r.ToJson(), json);

        // boolean masks (numpy tolist of a bool array) read the same
        var b = Sam3VideoResponse.FromJson("""{"frame_index": 0, "outputs": {"out_obj_ids": [7], "out_probs": [0.5], "out_boxes_xywh": [[0.5, 0.0, 0.0, 0.0]], "out_binary_masks": [[[false, true]]]}}""");
        Assert.That(b.Outputs!.OutBinaryMasks[0].Data, Is.EqualTo(new byte[] { 0, 1 }));
        Assert.Throws<JsonException>(() => Sam3VideoResponse.FromJson("""{"outputs": {"out_binary_masks": [[[0, 1], [1]]]}}"""), "ragged rows");
        Assert.Throws<JsonException>(() => Sam3VideoResponse.FromJson("""{"outputs": {"out_binary_masks": [[[0, 2]]]}}"""), "pixel 2");
    }

    [Test]
    public void OutputsFromAFrameResult()
    {
        var mask = new byte[] { 0, 1, 1, 0, 0, 1, 1, 0 };
        var frame = new VideoFrameResult(5, [new VideoObject(2, 0.75f, [0.25f, 0f, 0.25f, 0.5f], 4, 2, mask)]);
        var o = Sam3VideoOutputs.FromFrame(frame);
        Assert.That(o.OutObjIds, Is.EqualTo(new[] { 2 }));
        Assert.That(o.OutProbs, Is.EqualTo(new[] { 0.75f }));
        Assert.That(o.OutBoxesXywh[0], Is.EqualTo(new[] { 0.25f, 0f, 0.25f, 0.5f }));
        Assert.That(o.OutBinaryMasks[0].Data, Is.EqualTo(mask));
        AssertSameJson(new Sam3VideoResponse { FrameIndex = 5, Outputs = o }.ToJson(),
            """{"frame_index": 5, "outputs": {"out_obj_ids": [2], "out_probs": [0.75], "out_boxes_xywh": [[0.25, 0, 0.25, 0.5]], "out_binary_masks": [[[0, 1, 1, 0], [0, 1, 1, 0]]]}}""");
    }

    [Test]
    public void VideoObjectExposesTheImageApiBoxAndMask()
    {
        // a 4x2 mask with foreground columns 1..2 on both rows: masks_to_boxes gives x0=1, x1=2, y0=0, y1=1
        var mask = new byte[] { 0, 1, 1, 0, 0, 1, 1, 0 };
        var obj = new VideoObject(2, 0.75f, [0.25f, 0f, 0.25f, 0.5f], 4, 2, mask);
        Assert.That(obj.Box.Space, Is.EqualTo(CoordinateSpace.Normalized));
        Assert.That(obj.Box.ToXywh(), Is.EqualTo((0.25f, 0f, 0.25f, 0.5f)));
        Assert.That(obj.Box.ToPixels(4, 2).ToXyxy(), Is.EqualTo((1f, 0f, 2f, 1f)));
        Assert.That(obj.BinaryMask.Data, Is.EqualTo(mask));
        Assert.That(obj.BinaryMask.Bounds(), Is.EqualTo(((int, int, int, int)?)(1, 0, 2, 1)));
        Assert.That(obj.BinaryMask.Area(), Is.EqualTo(obj.Area));
    }
}
