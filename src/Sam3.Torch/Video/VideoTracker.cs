using Sam3.Torch.Loading;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Video;

/// <summary>A click on a video frame in pixels of the video (x right, y down); positive = part of the object.</summary>
internal readonly record struct VideoPoint(float X, float Y, bool Positive = true);

/// <summary>One object on one frame: its id, object-score logit (present when &gt; 0), xyxy pixel box (null when the mask is empty) and mask.</summary>
/// <param name="ObjectId">The id given when the object was prompted.</param>
/// <param name="ScoreLogit">The tracker's object-score logit; <see cref="Score"/> is its sigmoid.</param>
/// <param name="Box">xyxy in pixels, exclusive right/bottom edge (x1 = last column + 1); null for an empty mask.</param>
/// <param name="Mask">Row-major 0/1 bytes of the video size.</param>
public sealed record TrackedObject(int ObjectId, float ScoreLogit, float[]? Box, int Width, int Height, byte[] Mask)
{
    public float Score => 1f / (1f + MathF.Exp(-ScoreLogit));
    public long Area => Mask.LongCount(b => b != 0);
}

/// <summary>All tracked objects on one frame (caller-owned managed data; nothing refers back to the tracker).</summary>
public sealed record TrackedFrame(int FrameIndex, IReadOnlyList<TrackedObject> Objects);

/// <summary>Options of a <see cref="VideoSession"/>.</summary>
public sealed record VideoSessionOptions
{
    /// <summary>
    /// Non-conditioning frames kept as memory (the most recently tracked ones). The memory read needs at most
    /// num_maskmem − 1 of them and 15 pointers, so the default (64) changes results only when memory selection would
    /// have reached further back; null keeps every tracked frame like the reference (memory then grows with the video:
    /// about 1 MB per object and frame at full size).
    /// </summary>
    public int? RetainNonCondFrames { get; init; } = 64;
    /// <summary>Resized frames kept decoded (uint8); others are decoded again when needed.</summary>
    public int FrameCacheCapacity { get; init; } = 4;
    /// <summary>Keep the stored state in CPU memory (the reference's offload_state_to_cpu).</summary>
    public bool OffloadStateToCpu { get; init; } = true;
}

/// <summary>
/// The SAM2-style video tracker of SAM3 (the reference's <c>Sam3TrackerPredictor</c> driven by the detector's
/// backbone): prompt objects with clicks, a box or a mask on any frame, then propagate forwards or backwards. Frames are
/// read lazily from a folder of <c>&lt;index&gt;.jpg</c>, a video file (through OpenCV) or an image list; results are
/// streamed frame by frame and never accumulated. Reproduces the reference at fp32 (scenarios e and e2 of the parity
/// fixtures).
/// </summary>
public sealed class VideoTracker : IDisposable
{
    private readonly Sam3ImageModel _model;
    private readonly bool _ownsModel;
    private readonly TrackerPredictor _predictor;

    /// <summary>Loads a checkpoint (released layout or image-model layout) with the tracker weights.</summary>
    internal static VideoTracker Load(string checkpointPath, Sam3Config config, Device? device = null)
    {
        var model = Sam3ModelLoader.LoadImageModel(checkpointPath, config, new Sam3LoadOptions { EnableInstInteractivity = true, Device = device });
        try
        {
            return new VideoTracker(model, ownsModel: true);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>A tracker over a loaded image model (built with the interactive heads); the model stays the caller's.</summary>
    internal VideoTracker(Sam3ImageModel model) : this(model, ownsModel: false) { }

    private VideoTracker(Sam3ImageModel model, bool ownsModel)
    {
        ArgumentNullException.ThrowIfNull(model);
        _model = model;
        _ownsModel = ownsModel;
        _predictor = TrackerPredictor.FromImageModel(model);
    }

    /// <summary>A session over a frame folder, a video file (mp4/mov/avi/mkv/webm) or a single image.</summary>
    public VideoSession Open(string videoPath, VideoSessionOptions? options = null) => Open(FrameSource.Open(videoPath), options);

    /// <summary>A session over image files, in the given order (all of one size).</summary>
    public VideoSession Open(IReadOnlyList<string> imagePaths, VideoSessionOptions? options = null) => Open(new ImageListFrameSource(imagePaths), options);

    /// <summary>A session over frames produced on demand by <paramref name="readFrame"/> (index → frame of the given size).</summary>
    public VideoSession Open(int frameCount, int width, int height, Func<int, RgbImage> readFrame, VideoSessionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(readFrame);
        if (frameCount <= 0) throw new Sam3ImageException($"a video needs at least one frame, got {frameCount}");
        return Open(new CallbackFrameSource(frameCount, width, height, readFrame), options);
    }

    /// <summary>
    /// A session over frames that arrive one after another (a camera, a stream): each frame is pulled from
    /// <paramref name="frames"/> when tracking reaches it, and propagation ends with the stream. Prompt the first
    /// frames, then propagate forwards; frames before the most recent few are not kept.
    /// </summary>
    public VideoSession OpenLive(IEnumerable<RgbImage> frames, VideoSessionOptions? options = null) => Open(new LiveFrameSource(frames), options);

    /// <summary>As <see cref="OpenLive(IEnumerable{RgbImage}, VideoSessionOptions?)"/> for an asynchronous stream (read on the tracking thread).</summary>
    public VideoSession OpenLive(IAsyncEnumerable<RgbImage> frames, VideoSessionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(frames);
        return OpenLive(frames.ToBlockingEnumerable(), options);
    }

    private VideoSession Open(IFrameSource source, VideoSessionOptions? options)
    {
        options ??= new VideoSessionOptions();
        try
        {
            var state = _predictor.InitState(source, options.OffloadStateToCpu, options.RetainNonCondFrames, options.FrameCacheCapacity);
            return new VideoSession(_predictor, state, source as LiveFrameSource);
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        if (_ownsModel) _model.Dispose();
    }

    private sealed class CallbackFrameSource(int count, int width, int height, Func<int, RgbImage> read) : IFrameSource
    {
        public int FrameCount => count;
        public int Width => width;
        public int Height => height;
        public string Description => $"{count} frame(s) from a callback";

        public RgbImage ReadFrame(int index)
        {
            var img = read(index) ?? throw new Sam3ImageException($"the frame callback returned no image for frame {index}");
            FrameSource.CheckSize(img, width, height, $"frame {index}");
            return img;
        }

        public void Dispose() { }
    }
}

/// <summary>
/// One video being tracked (the reference's inference state). Objects must be prompted before the first
/// <see cref="Propagate"/>; after that new ids are refused until <see cref="Reset"/> (as upstream). Not thread-safe.
/// </summary>
public sealed class VideoSession : IDisposable
{
    private readonly TrackerPredictor _predictor;
    private readonly TrackerState _state;
    private readonly LiveFrameSource? _live;

    internal VideoSession(TrackerPredictor predictor, TrackerState state, LiveFrameSource? live = null)
    {
        _predictor = predictor;
        _state = state;
        _live = live;
    }

    /// <summary>Number of frames (<see cref="int.MaxValue"/> for a live source whose end has not been reached).</summary>
    public int FrameCount => _state.NumFrames;
    public int Width => _state.VideoWidth;
    public int Height => _state.VideoHeight;
    public IReadOnlyList<int> ObjectIds => _state.ObjIds.ToArray();
    /// <summary>Whether propagation has started (new object ids are refused until <see cref="Reset"/>).</summary>
    public bool TrackingHasStarted => _state.TrackingHasStarted;
    /// <summary>Frame <paramref name="index"/> as decoded from the source (RGB, video size).</summary>
    public RgbImage ReadFrame(int index) => _state.Frames.Original(index);

    /// <summary>Bytes of tracker outputs currently stored (memory features, low-res masks, pointers).</summary>
    public long StoredStateBytes => _state.StoredSize().Bytes;

    private (float, float) Rel(VideoPoint p, int i)
    {
        if (!float.IsFinite(p.X) || !float.IsFinite(p.Y) || p.X < 0 || p.Y < 0 || p.X > Width || p.Y > Height)
            throw new Sam3PromptException($"point {i} ({p.X}, {p.Y}) lies outside the {Width}x{Height} video");
        return (p.X / Width, p.Y / Height);
    }

    /// <summary>Adds clicks (pixels or normalised) for an object on a frame (refines it when the frame was tracked). Returns that frame's objects.</summary>
    public TrackedFrame AddPoints(int frameIndex, int objectId, IReadOnlyList<PointPrompt> points, bool clearOldPoints = true)
    {
        ArgumentNullException.ThrowIfNull(points);
        return AddPoints(frameIndex, objectId, ToVideoPoints(points), clearOldPoints);
    }

    /// <summary>Adds a box (any format and space), optionally with clicks, for an object on a frame (replaces its earlier clicks there).</summary>
    public TrackedFrame AddBox(int frameIndex, int objectId, Box box, IReadOnlyList<PointPrompt>? points = null)
    {
        if (!box.IsFinite) throw new Sam3PromptException($"box {box} has a non-finite coordinate");
        var (x0, y0, x1, y1) = box.ToPixels(Width, Height).ToXyxy();
        return AddBox(frameIndex, objectId, x0, y0, x1, y1, points is null ? null : ToVideoPoints(points));
    }

    /// <summary>Gives an object's mask on a frame (any size, resized to the video).</summary>
    public TrackedFrame AddMask(int frameIndex, int objectId, Visualization.BinaryMask mask)
    {
        ArgumentNullException.ThrowIfNull(mask);
        return AddMask(frameIndex, objectId, mask.Data, mask.Width, mask.Height);
    }

    private List<VideoPoint> ToVideoPoints(IReadOnlyList<PointPrompt> points) => points.Select((p, i) =>
    {
        if (!float.IsFinite(p.X) || !float.IsFinite(p.Y)) throw new Sam3PromptException($"point {i} {p} is not finite");
        var q = p.ToPixels(Width, Height);
        return new VideoPoint(q.X, q.Y, q.Positive);
    }).ToList();

    internal TrackedFrame AddPoints(int frameIndex, int objectId, IReadOnlyList<VideoPoint> points, bool clearOldPoints = true)
    {
        ArgumentNullException.ThrowIfNull(points);
        if (points.Count == 0) throw new Sam3PromptException("no points given");
        var rel = points.Select(Rel).ToList();
        using var logits = _predictor.AddNewPointsOrBox(_state, frameIndex, objectId, rel, points.Select(p => p.Positive ? 1 : 0).ToList(), clearOldPoints);
        return ToFrame(frameIndex, logits);
    }

    internal TrackedFrame AddBox(int frameIndex, int objectId, float x0, float y0, float x1, float y1, IReadOnlyList<VideoPoint>? points = null)
    {
        if (!(x1 > x0 && y1 > y0)) throw new Sam3PromptException($"box ({x0}, {y0}, {x1}, {y1}): expected x0 < x1 and y0 < y1");
        var (rx0, ry0) = Rel(new VideoPoint(x0, y0), 0);
        var (rx1, ry1) = Rel(new VideoPoint(x1, y1), 1);
        var rel = points?.Select(Rel).ToList();
        using var logits = _predictor.AddNewPointsOrBox(_state, frameIndex, objectId, rel, rel is null ? null : points!.Select(p => p.Positive ? 1 : 0).ToList(),
                                                        clearOldPoints: true, box: (rx0, ry0, rx1, ry1));
        return ToFrame(frameIndex, logits);
    }

    internal TrackedFrame AddMask(int frameIndex, int objectId, ReadOnlySpan<byte> mask, int width, int height)
    {
        if (width <= 0 || height <= 0 || mask.Length != (long)width * height)
            throw new Sam3PromptException($"mask of {mask.Length} bytes does not match {width}x{height}");
        using var scope = NewDisposeScope();
        var bools = new bool[mask.Length];
        for (int i = 0; i < bools.Length; i++) bools[i] = mask[i] != 0;
        var t = torch.tensor(bools, new long[] { height, width });
        using var logits = _predictor.AddNewMask(_state, frameIndex, objectId, t);
        return ToFrame(frameIndex, logits);
    }

    /// <summary>
    /// Tracks from <paramref name="startFrame"/> (default: the first prompted frame) over at most
    /// <paramref name="maxFrames"/> further frames (default: to the end), forwards or in reverse, yielding each frame.
    /// </summary>
    public IEnumerable<TrackedFrame> Propagate(int? startFrame = null, int? maxFrames = null, bool reverse = false, CancellationToken cancellationToken = default)
    {
        if (startFrame is int s && (s < 0 || s >= FrameCount))
            throw new ArgumentOutOfRangeException(nameof(startFrame), s, $"start frame outside [0, {FrameCount - 1}]");
        if (_state.ObjIds.Count == 0) throw new Sam3StateException("no object has been prompted: add points, a box or a mask first");
        _live?.StartStreaming();
        using var frames = _predictor.Propagate(_state, startFrame, maxFrames, reverse).GetEnumerator();
        while (true)
        {
            TrackerFrameResult r;
            try
            {
                if (!frames.MoveNext()) yield break;
                r = frames.Current;
            }
            catch (EndOfVideoException)
            {
                yield break; // a live stream ended
            }
            using (r)
            {
                cancellationToken.ThrowIfCancellationRequested();
                yield return ToFrame(r.FrameIndex, r.VideoResLogits, r.ObjectScores);
            }
        }
    }

    /// <summary>Removes an object (an unknown id is a <see cref="Sam3PromptException"/>); returns the remaining ids.</summary>
    public IReadOnlyList<int> RemoveObject(int objectId)
    {
        var (ids, updated) = _predictor.RemoveObject(_state, objectId, strict: true, needOutput: false);
        foreach (var (_, t) in updated) t.Dispose();
        return ids;
    }

    /// <summary>Removes every prompt, object and result (the reference's clear_all_points_in_video).</summary>
    public void Reset() => _predictor.ClearAllPointsInVideo(_state);

    private TrackedFrame ToFrame(int frameIndex, Tensor videoLogits, Tensor? scores = null)
    {
        using var scope = NewDisposeScope();
        int h = Height, w = Width;
        var masks = videoLogits.gt(0).to(ScalarType.Byte).cpu().contiguous();
        var bytes = masks.data<byte>().ToArray();
        float[]? sc = scores?.to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
        var ids = _state.ObjIds;
        var objects = new List<TrackedObject>();
        int plane = h * w;
        for (int i = 0; i < ids.Count && (long)(i + 1) * plane <= bytes.Length; i++)
        {
            var m = bytes.AsSpan(i * plane, plane).ToArray();
            objects.Add(new TrackedObject(ids[i], sc is null ? float.NaN : sc[i], BoxOf(m, w, h), w, h, m));
        }
        return new TrackedFrame(frameIndex, objects);
    }

    private static float[]? BoxOf(byte[] m, int w, int h)
    {
        int x0 = w, y0 = h, x1 = -1, y1 = -1;
        for (int y = 0; y < h; y++)
        {
            int row = y * w;
            for (int x = 0; x < w; x++)
            {
                if (m[row + x] == 0) continue;
                if (x < x0) x0 = x;
                if (x > x1) x1 = x;
                if (y < y0) y0 = y;
                y1 = y;
            }
        }
        return x1 < 0 ? null : [x0, y0, x1 + 1, y1 + 1];
    }

    public void Dispose() => _state.Dispose();
}
