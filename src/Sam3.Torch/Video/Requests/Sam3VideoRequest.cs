using System.Text.Json;
using System.Text.Json.Serialization;

namespace Sam3.Torch.Video;

/// <summary>
/// A request of the reference's <c>Sam3VideoPredictor.handle_request</c> / <c>handle_stream_request</c>, with the same
/// field names (JSON snake_case), so a request written for the Python predictor deserialises unchanged
/// (<see cref="FromJson"/>). <see cref="Type"/> is one of <c>start_session</c>, <c>add_prompt</c>, <c>remove_object</c>,
/// <c>reset_session</c>, <c>close_session</c> (for <see cref="Sam3VideoRequestHandler.Handle"/>) or
/// <c>propagate_in_video</c> (for <see cref="Sam3VideoRequestHandler.HandleStream"/>); the other fields are those the
/// type reads, null when absent. Coordinates are normalised to [0, 1] as upstream.
/// </summary>
public sealed record Sam3VideoRequest
{
    /// <summary>Request type (<c>start_session</c>, <c>add_prompt</c>, ..., <c>propagate_in_video</c>).</summary>
    [JsonPropertyName("type")] public string Type { get; init; } = "";
    /// <summary>Session id (every type; optional for <c>start_session</c>, which then creates one).</summary>
    [JsonPropertyName("session_id"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? SessionId { get; init; }
    /// <summary><c>start_session</c>: a frame folder, a video file or an image.</summary>
    [JsonPropertyName("resource_path"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? ResourcePath { get; init; }
    /// <summary><c>add_prompt</c>: the prompted frame.</summary>
    [JsonPropertyName("frame_index"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int? FrameIndex { get; init; }
    /// <summary><c>add_prompt</c>: text prompt ("person"; "visual" = no text, as upstream).</summary>
    [JsonPropertyName("text"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Text { get; init; }
    /// <summary><c>add_prompt</c>: clicks <c>[[x, y], ...]</c> (normalised) on object <see cref="ObjId"/>.</summary>
    [JsonPropertyName("points"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public float[][]? Points { get; init; }
    /// <summary><c>add_prompt</c>: one label per point (1 positive, 0 negative).</summary>
    [JsonPropertyName("point_labels"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int[]? PointLabels { get; init; }
    /// <summary><c>add_prompt</c>: boxes <c>[[x, y, w, h], ...]</c> (normalised xywh).</summary>
    [JsonPropertyName("bounding_boxes"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public float[][]? BoundingBoxes { get; init; }
    /// <summary><c>add_prompt</c>: one label per box (1 positive, 0 negative).</summary>
    [JsonPropertyName("bounding_box_labels"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int[]? BoundingBoxLabels { get; init; }
    /// <summary><c>add_prompt</c> with points, <c>remove_object</c>: the object id.</summary>
    [JsonPropertyName("obj_id"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int? ObjId { get; init; }
    /// <summary><c>remove_object</c>: a user action (default true) is recorded in the action history.</summary>
    [JsonPropertyName("is_user_action"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public bool? IsUserAction { get; init; }
    /// <summary><c>propagate_in_video</c>: <c>forward</c>, <c>backward</c> or <c>both</c> (default).</summary>
    [JsonPropertyName("propagation_direction"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? PropagationDirection { get; init; }
    /// <summary><c>propagate_in_video</c>: first frame (default: the earliest prompted frame, or the last one backwards).</summary>
    [JsonPropertyName("start_frame_index"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int? StartFrameIndex { get; init; }
    /// <summary><c>propagate_in_video</c>: maximum number of frames per direction (default: the whole video).</summary>
    [JsonPropertyName("max_frame_num_to_track"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int? MaxFrameNumToTrack { get; init; }

    /// <summary>Reads a request written in upstream's field names (unknown fields are ignored, as a Python dict lookup would).</summary>
    /// <exception cref="JsonException">Malformed JSON or a field of the wrong type.</exception>
    public static Sam3VideoRequest FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        return JsonSerializer.Deserialize<Sam3VideoRequest>(json, VideoRequestJson.Options)
               ?? throw new JsonException("the request JSON is null");
    }

    /// <summary>The request as JSON in upstream's field names (absent fields omitted).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, VideoRequestJson.Options);
}

/// <summary>
/// A response of the request form (<see cref="Sam3VideoRequestHandler"/>), with upstream's field names:
/// <c>{"session_id"}</c> for <c>start_session</c>, <c>{"frame_index", "outputs"}</c> for <c>add_prompt</c> and each
/// frame of <c>propagate_in_video</c>, <c>{"is_success": true}</c> for the others. Absent fields are null (omitted in JSON).
/// </summary>
public sealed record Sam3VideoResponse
{
    /// <summary><c>start_session</c>: the session id (given or created).</summary>
    [JsonPropertyName("session_id"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? SessionId { get; init; }
    /// <summary>The frame the outputs belong to.</summary>
    [JsonPropertyName("frame_index"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public int? FrameIndex { get; init; }
    /// <summary>The objects on <see cref="FrameIndex"/>.</summary>
    [JsonPropertyName("outputs"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public Sam3VideoOutputs? Outputs { get; init; }
    /// <summary><c>remove_object</c>, <c>reset_session</c>, <c>close_session</c>: true.</summary>
    [JsonPropertyName("is_success"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public bool? IsSuccess { get; init; }

    /// <summary>Reads a response written in upstream's field names.</summary>
    /// <exception cref="JsonException">Malformed JSON or a field of the wrong type.</exception>
    public static Sam3VideoResponse FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        return JsonSerializer.Deserialize<Sam3VideoResponse>(json, VideoRequestJson.Options)
               ?? throw new JsonException("the response JSON is null");
    }

    /// <summary>The response as JSON in upstream's field names (masks as nested 0/1 rows, as <c>numpy.tolist()</c> gives them).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, VideoRequestJson.Options);
}

/// <summary>
/// The per-frame <c>outputs</c> of upstream's video predictor: object ids, detection probabilities, normalised xywh boxes
/// (one <c>[x, y, w, h]</c> per object) and binary masks at video resolution, index-aligned. (Upstream's optional
/// <c>frame_stats</c> diagnostics are not part of the request form.)
/// </summary>
public sealed record Sam3VideoOutputs
{
    /// <summary>Object ids.</summary>
    [JsonPropertyName("out_obj_ids")] public int[] OutObjIds { get; init; } = [];
    /// <summary>Detection probabilities (1 for objects added by clicks).</summary>
    [JsonPropertyName("out_probs")] public float[] OutProbs { get; init; } = [];
    /// <summary>Boxes, normalised xywh.</summary>
    [JsonPropertyName("out_boxes_xywh")] public float[][] OutBoxesXywh { get; init; } = [];
    /// <summary>Masks at video resolution (JSON: per object an array of rows of 0/1, or of booleans when reading).</summary>
    [JsonPropertyName("out_binary_masks"), JsonConverter(typeof(BinaryMaskListJsonConverter))]
    public Visualization.BinaryMask[] OutBinaryMasks { get; init; } = [];

    /// <summary>The outputs of a frame result.</summary>
    public static Sam3VideoOutputs FromFrame(VideoFrameResult frame)
    {
        ArgumentNullException.ThrowIfNull(frame);
        var o = frame.Objects;
        return new Sam3VideoOutputs
        {
            OutObjIds = o.Select(x => x.ObjectId).ToArray(),
            OutProbs = o.Select(x => x.Probability).ToArray(),
            OutBoxesXywh = o.Select(x => x.BoxXywh.ToArray()).ToArray(),
            OutBinaryMasks = o.Select(x => x.BinaryMask).ToArray(),
        };
    }
}

internal static class VideoRequestJson
{
    public static readonly JsonSerializerOptions Options = new()
    {
        // upstream's handle_request reads with dict.get: unknown keys are ignored, numbers may come as 0.5 or 5e-1
        PropertyNameCaseInsensitive = false,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
}

/// <summary>
/// <c>out_binary_masks</c> as JSON: per object an array of rows, each row an array of 0/1 (what
/// <c>json.dumps(masks.astype(int).tolist())</c> writes); reading also accepts booleans (<c>masks.tolist()</c>).
/// </summary>
internal sealed class BinaryMaskListJsonConverter : JsonConverter<Visualization.BinaryMask[]>
{
    public override Visualization.BinaryMask[] Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("out_binary_masks must be an array of masks");
        var masks = new List<Visualization.BinaryMask>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("a mask must be an array of rows");
            var data = new List<byte>();
            int width = -1, height = 0;
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            {
                if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("a mask row must be an array");
                int n = 0;
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    data.Add(reader.TokenType switch
                    {
                        JsonTokenType.True => 1,
                        JsonTokenType.False => 0,
                        JsonTokenType.Number when reader.TryGetInt32(out int v) && v is 0 or 1 => (byte)v,
                        _ => throw new JsonException($"mask pixel must be 0/1 or a boolean, got {reader.TokenType}"),
                    });
                    n++;
                }
                if (width >= 0 && n != width) throw new JsonException($"mask row {height} has {n} pixels, the first row {width}");
                width = n;
                height++;
            }
            masks.Add(Visualization.BinaryMask.FromBytes(data.ToArray(), Math.Max(width, 0), height));
        }
        return masks.ToArray();
    }

    public override void Write(Utf8JsonWriter writer, Visualization.BinaryMask[] value, JsonSerializerOptions options)
    {
        writer.WriteStartArray();
        foreach (var m in value)
        {
            writer.WriteStartArray();
            for (int y = 0; y < m.Height; y++)
            {
                writer.WriteStartArray();
                var row = m.Data.AsSpan(y * m.Width, m.Width);
                foreach (byte b in row) writer.WriteNumberValue(b);
                writer.WriteEndArray();
            }
            writer.WriteEndArray();
        }
        writer.WriteEndArray();
    }
}
