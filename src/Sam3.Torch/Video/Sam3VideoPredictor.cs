using Sam3.Torch.Loading;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Video;

/// <summary>Direction of a propagation through the video.</summary>
public enum PropagationDirection
{
    /// <summary>From the start frame to the end of the video.</summary>
    Forward,
    /// <summary>From the frame before the start frame to the beginning of the video.</summary>
    Backward,
    /// <summary>Forward, then backward (upstream's default).</summary>
    Both,
}

/// <summary>One object on one frame: id, detection probability (1 for objects prompted by points), normalised xywh box and binary mask (row-major, 0/1).</summary>
public sealed record VideoObject(int ObjectId, float Probability, float[] BoxXywh, int Width, int Height, byte[] Mask)
{
    /// <summary>Mask area in pixels.</summary>
    public long Area => Mask.LongCount(b => b != 0);

    /// <summary>The box as the image API's <see cref="Torch.Box"/> (normalised xywh; <c>ToPixels(Width, Height)</c> for pixels).</summary>
    public Box Box => Box.FromXywh(BoxXywh[0], BoxXywh[1], BoxXywh[2], BoxXywh[3], CoordinateSpace.Normalized);

    /// <summary>The mask as the image API's <see cref="Visualization.BinaryMask"/> (a copy of <see cref="Mask"/>).</summary>
    public Visualization.BinaryMask BinaryMask => Visualization.BinaryMask.FromBytes(Mask, Width, Height);
}

/// <summary>All objects on one frame.</summary>
public sealed record VideoFrameResult(int FrameIndex, IReadOnlyList<VideoObject> Objects);

/// <summary>Options of a <see cref="Sam3VideoSession"/>.</summary>
public sealed record Sam3VideoSessionOptions
{
    /// <summary>
    /// For video files: divide by 255 before normalising. Off by default, which reproduces the reference's OpenCV loader
    /// (it forgets the division, so the model sees inputs in [−1, 509]).
    /// </summary>
    public bool CorrectVideoFileScale { get; init; }

    /// <summary>
    /// Device of the session ("cpu", "cuda", "cuda:N"); null = the predictor's. The predictor keeps one model per device:
    /// the first session on another device loads the checkpoint there once, later ones share it.
    /// </summary>
    public string? Device { get; init; }
}

/// <summary>
/// SAM3's text-prompted video predictor (the reference's <c>Sam3VideoPredictor</c>): "find every person in this video and
/// track each one". Detection runs on every frame and is associated with the tracked masklets (hot-start delay,
/// keep-alive, reconditioning, occlusion suppression, non-overlapping outputs), at fp32 parity with the reference.
/// One loaded model serves any number of <see cref="Sam3VideoSession"/>s, also from several threads.
/// </summary>
public sealed class Sam3VideoPredictor : IDisposable
{
    private readonly Sam3ImageModel _model;
    private readonly bool _ownsModel;
    private readonly ClipBpeTokenizer _tokenizer;
    private readonly bool _temporalDisambiguation;
    private readonly VideoPipelineSettings? _settings;

    /// <summary>Loads the video model on another device (null for a predictor over a given model).</summary>
    private Func<Device, Sam3ImageModel>? _loadOnDevice;
    /// <summary>Models loaded for other devices than the first model's (owned), by canonical device name.</summary>
    private readonly Dictionary<string, Sam3ImageModel> _deviceModels = new(StringComparer.Ordinal);
    private readonly object _deviceGate = new();

    /// <summary>Called with the pipeline of every new session or stream (tests and the parity runner: probes, settings).</summary>
    internal Action<Sam3VideoEngine>? EngineCreated { get; set; }

    /// <summary>Device of the predictor's own model ("cpu", "cuda:0").</summary>
    internal string ModelDeviceName => DeviceName(_model.parameters().First().device);

    /// <summary>Number of models held, one per device used (the predictor's own included).</summary>
    internal int ModelCount { get { lock (_deviceGate) return 1 + _deviceModels.Count; } }

    private static string DeviceName(Device d) =>
        d.type == DeviceType.CPU ? "cpu" : $"{d.type.ToString().ToLowerInvariant()}:{Math.Max(d.index, 0)}";

    /// <summary>
    /// The model for <paramref name="device"/> (null: the predictor's own): the same instance for every session on one
    /// device, loaded on first use for a new device.
    /// </summary>
    /// <exception cref="ArgumentException">Not a device name.</exception>
    /// <exception cref="Sam3ConfigException">The device is not available here, or the predictor cannot load another copy.</exception>
    internal Sam3ImageModel ModelFor(string? device)
    {
        // every caller passes a session's or stream's options.Device: the argument errors name that property
        const string paramName = "options.Device";
        if (device is null) return _model;
        // parsed here: torch.device("cuda:N") throws from LibTorch on a machine without CUDA
        var match = System.Text.RegularExpressions.Regex.Match(device.Trim(), "^(cpu|cuda)(?::([0-9]{1,4}))?$", System.Text.RegularExpressions.RegexOptions.IgnoreCase);
        if (!match.Success) throw new ArgumentException($"unknown device '{device}' (expected cpu, cuda or cuda:N)", paramName);
        bool cuda = match.Groups[1].Value.Equals("cuda", StringComparison.OrdinalIgnoreCase);
        int index = match.Groups[2].Success ? int.Parse(match.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture) : 0;
        if (!cuda && index != 0) throw new ArgumentException($"unknown device '{device}' (expected cpu, cuda or cuda:N)", paramName);
        if (cuda)
        {
            int count = torch.cuda.is_available() ? torch.cuda.device_count() : 0;
            if (index >= count)
                throw new Sam3ConfigException($"device '{device}' is not available ({(count == 0 ? "no CUDA device is visible to LibTorch" : $"{count} CUDA device(s): cuda:0..cuda:{count - 1}")})");
        }
        var d = cuda ? torch.device(DeviceType.CUDA, index) : torch.CPU;
        string name = DeviceName(d);
        if (name == ModelDeviceName) return _model;
        lock (_deviceGate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_deviceModels.TryGetValue(name, out var m)) return m;
            var load = _loadOnDevice ?? throw new Sam3ConfigException(
                $"device '{device}': this predictor wraps a model on {ModelDeviceName} and cannot load another copy (use Sam3VideoPredictor.Load)");
            m = load(d);
            _deviceModels[name] = m;
            return m;
        }
    }

    /// <summary>A predictor over an already loaded video model (not owned), with explicit pipeline settings (default: the model configuration's).</summary>
    internal static Sam3VideoPredictor FromModel(Sam3ImageModel model, ClipBpeTokenizer tokenizer, bool applyTemporalDisambiguation = true,
                                                 VideoPipelineSettings? settings = null) =>
        new(model, tokenizer, ownsModel: false, applyTemporalDisambiguation, settings);

    /// <summary>
    /// Loads a checkpoint (released layout or image-model layout) as the video model.
    /// </summary>
    /// <param name="checkpointPath">sam3.pt or a safetensors file.</param>
    /// <param name="config">The model configuration (its <c>video</c> section holds the pipeline heuristics).</param>
    /// <param name="bpeVocabularyPath">bpe_simple_vocab_16e6.txt.gz.</param>
    /// <param name="device">Device of the model (default CPU).</param>
    /// <param name="applyTemporalDisambiguation">False = the reference's ablation variant (no hot-start delay, no
    /// reconditioning, no tracker memory selection): outputs are emitted as soon as each frame is computed.</param>
    internal static Sam3VideoPredictor Load(string checkpointPath, Sam3Config config, string bpeVocabularyPath, Device? device = null,
                                          bool applyTemporalDisambiguation = true)
    {
        ArgumentNullException.ThrowIfNull(config);
        var tokenizer = ClipBpeTokenizer.FromBpeGz(bpeVocabularyPath, new ClipTokenizerOptions { Text = config.Text });
        return Load(checkpointPath, config, tokenizer, device, applyTemporalDisambiguation);
    }

    /// <summary>
    /// Loads the video model from a checkpoint file or folder, found as <see cref="Sam3Model.Load"/> finds it (checkpoint,
    /// configuration, tokenizer). The detector scores as upstream's video model does (joint logits with presence), so it
    /// is a model of its own rather than one shared with the image predictors.
    /// </summary>
    /// <param name="path">A checkpoint file or a folder.</param>
    /// <param name="options">Configuration, tokenizer, device (as for <see cref="Sam3Model.Load"/>).</param>
    /// <param name="applyTemporalDisambiguation">False = the reference's ablation variant (no hot-start delay, no
    /// reconditioning, no tracker memory selection): outputs are emitted as soon as each frame is computed.</param>
    public static Sam3VideoPredictor Load(string path, Sam3ModelOptions? options = null, bool applyTemporalDisambiguation = true)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        options ??= new Sam3ModelOptions();
        var files = ModelFolder.Locate(path, options);
        var tokenizer = ModelFolder.LoadTokenizer(files.TokenizerPath, files.Config);
        return Load(files.CheckpointPath, files.Config, tokenizer, torch.device(options.Device), applyTemporalDisambiguation);
    }

    /// <summary>Loads a checkpoint as the video model, with an already loaded tokenizer.</summary>
    internal static Sam3VideoPredictor Load(string checkpointPath, Sam3Config config, ClipBpeTokenizer tokenizer, Device? device = null,
                                          bool applyTemporalDisambiguation = true)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(tokenizer);
        Sam3ImageModel LoadOn(Device? d) => Sam3ModelLoader.LoadImageModel(checkpointPath, config,
            new Sam3LoadOptions { EnableInstInteractivity = true, Device = d, Grounding = GroundingOptions.VideoDetector });
        return new Sam3VideoPredictor(LoadOn(device), tokenizer, ownsModel: true, applyTemporalDisambiguation) { _loadOnDevice = d => LoadOn(d) };
    }

    private Sam3VideoPredictor(Sam3ImageModel model, ClipBpeTokenizer tokenizer, bool ownsModel, bool applyTemporalDisambiguation,
                               VideoPipelineSettings? settings = null)
    {
        _settings = settings;
        _model = model;
        _tokenizer = tokenizer;
        _ownsModel = ownsModel;
        _temporalDisambiguation = applyTemporalDisambiguation;
    }

    /// <summary>Starts a session on a frame folder (<c>&lt;index&gt;.jpg</c>), an image or a video file.</summary>
    public Sam3VideoSession StartSession(string path, Sam3VideoSessionOptions? options = null) => StartSession(FrameSource.Open(path), options);

    /// <summary>Starts a session on a list of images (one frame each).</summary>
    public Sam3VideoSession StartSession(IReadOnlyList<string> imagePaths, Sam3VideoSessionOptions? options = null) =>
        StartSession(new ImageListFrameSource(imagePaths), options);

    private Sam3VideoSession StartSession(IFrameSource source, Sam3VideoSessionOptions? options)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        options ??= new Sam3VideoSessionOptions();
        var engine = NewEngine(options.Device);
        VideoInferenceState state;
        try
        {
            state = engine.InitState(source, loader: VideoPredictorFrames.DefaultLoader(source, options.CorrectVideoFileScale));
        }
        catch
        {
            source.Dispose();
            throw;
        }
        return new Sam3VideoSession(engine, state);
    }

    /// <summary>
    /// Starts a streaming session: frames pushed one at a time (a camera), the text prompt applied to the first one,
    /// each frame's objects returned <c>hotstart_delay − 1</c> frames later (14 by default), memory bounded over an
    /// unbounded stream (see <see cref="Sam3VideoStream"/>).
    /// </summary>
    /// <param name="text">The text prompt ("person").</param>
    public Sam3VideoStream StartStream(string text) => StartStream(text, null);

    // no optional parameter: one overload of a public method may have them, the box one (analyzer rule RS0026)
    /// <inheritdoc cref="StartStream(string)"/>
    /// <param name="text">The text prompt ("person").</param>
    /// <param name="options">Memory retention and device; null: defaults.</param>
    public Sam3VideoStream StartStream(string text, Sam3VideoStreamOptions? options)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (string.IsNullOrWhiteSpace(text)) throw new ArgumentException("the text prompt is empty", nameof(text));
        options ??= new Sam3VideoStreamOptions();
        Sam3VideoStream.Validate(options);
        var engine = NewEngine(options.Device);
        return new Sam3VideoStream(engine, text, options);
    }

    /// <summary>
    /// Starts a streaming session prompted by a box on the first frame (a visual exemplar, optionally with a text
    /// prompt): upstream's <c>add_prompt(frame 0, bounding_boxes, text)</c> followed by a forward propagation, frame by
    /// frame, with the delay and memory bounds of <see cref="StartStream(string, Sam3VideoStreamOptions?)"/>.
    /// </summary>
    /// <param name="box">The box on the first frame (pixels or normalised; converted with the first frame's size).</param>
    /// <param name="text">An optional text prompt applied with the box.</param>
    /// <param name="options">Memory retention and device.</param>
    public Sam3VideoStream StartStream(BoxPrompt box, string? text = null, Sam3VideoStreamOptions? options = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!box.Box.IsFinite) throw new Sam3PromptException($"box {box} has a non-finite coordinate");
        if (text is not null && string.IsNullOrWhiteSpace(text)) throw new ArgumentException("the text prompt is empty", nameof(text));
        options ??= new Sam3VideoStreamOptions();
        Sam3VideoStream.Validate(options);
        var engine = NewEngine(options.Device);
        return new Sam3VideoStream(engine, text, options, box);
    }

    private Sam3VideoEngine NewEngine(string? device = null)
    {
        var engine = new Sam3VideoEngine(ModelFor(device), _tokenizer, _settings, applyTemporalDisambiguation: _temporalDisambiguation);
        EngineCreated?.Invoke(engine);
        return engine;
    }

    private bool _disposed;

    /// <summary>Frees the model when this predictor loaded it, and the models it loaded for other devices. Sessions must be closed first.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_ownsModel) _model.Dispose();
        lock (_deviceGate)
        {
            foreach (var m in _deviceModels.Values) m.Dispose();
            _deviceModels.Clear();
        }
    }
}

/// <summary>
/// One video being annotated (the reference's session: start_session … close_session). Prompts replace or refine the
/// objects; <see cref="Propagate"/> streams per-frame results. Calls on one session are serialised; different sessions
/// run independently. <see cref="Dispose"/> frees every tensor the session holds.
/// </summary>
public sealed class Sam3VideoSession : IDisposable
{
    private readonly Sam3VideoEngine _engine;
    private readonly VideoInferenceState _state;
    private readonly object _gate = new();

    internal Sam3VideoSession(Sam3VideoEngine engine, VideoInferenceState state)
    {
        _engine = engine;
        _state = state;
    }

    /// <summary>The pipeline and state (tests: progress hooks, stored sizes).</summary>
    internal (Sam3VideoEngine Engine, VideoInferenceState State) Internals => (_engine, _state);

    /// <summary>Number of frames.</summary>
    public int FrameCount => _state.NumFrames;
    /// <summary>Video width in pixels.</summary>
    public int Width => _state.OrigWidth;
    /// <summary>Video height in pixels.</summary>
    public int Height => _state.OrigHeight;
    /// <summary>Frame <paramref name="index"/> as decoded (for overlays).</summary>
    public RgbImage ReadFrame(int index)
    {
        lock (_gate) return _state.Frames.Source.ReadFrame(index);
    }

    /// <summary>Ids of the objects currently tracked.</summary>
    public IReadOnlyList<int> ObjectIds { get { lock (_gate) return _state.Metadata?.ObjIds.ToArray() ?? []; } }

    /// <summary>Text prompt ("person"): detects every instance on <paramref name="frameIndex"/> (starts over, as upstream).</summary>
    public VideoFrameResult AddText(int frameIndex, string text)
    {
        if (string.IsNullOrWhiteSpace(text)) throw new ArgumentException("the text prompt is empty", nameof(text));
        lock (_gate) using (var o = _engine.AddPrompt(_state, frameIndex, text: text)) return Convert(o);
    }

    /// <summary>Box prompt (any format and space) as a visual exemplar: detects objects like it (starts over, as upstream).</summary>
    public VideoFrameResult AddBox(int frameIndex, BoxPrompt box)
    {
        if (!box.Box.IsFinite) throw new Sam3PromptException($"box {box} has a non-finite coordinate");
        var (x, y, w, h) = box.Box.ToNormalized(Width, Height).ToXywh();
        return AddBox(frameIndex, x, y, w, h, box.Positive);
    }

    /// <summary>Clicks (pixels or normalised) refining object <paramref name="objectId"/>, or adding it when the id is new.</summary>
    public VideoFrameResult AddPoints(int frameIndex, int objectId, IReadOnlyList<PointPrompt> points)
    {
        ArgumentNullException.ThrowIfNull(points);
        return AddPoints(frameIndex, objectId, points.Select(p => p.ToNormalized(Width, Height) is var n ? new VideoPoint(n.X, n.Y, n.Positive) : default).ToList());
    }

    internal VideoFrameResult AddBox(int frameIndex, float x, float y, float width, float height, bool positive = true)
    {
        lock (_gate) using (var o = _engine.AddPrompt(_state, frameIndex, boxesXywh: [(x, y, width, height)], boxLabels: [positive])) return Convert(o);
    }

    /// <summary>add_prompt with text and/or normalised xywh boxes (the request form: several boxes, labels as upstream).</summary>
    internal VideoFrameResult AddPrompt(int frameIndex, string? text, IReadOnlyList<(float X, float Y, float W, float H)>? boxesXywh, IReadOnlyList<bool>? boxLabels)
    {
        lock (_gate) using (var o = _engine.AddPrompt(_state, frameIndex, text, boxesXywh, boxLabels)) return Convert(o);
    }

    /// <summary>add_tracker_new_points with upstream's integer labels (the request form).</summary>
    internal VideoFrameResult AddPoints(int frameIndex, int objectId, IReadOnlyList<(float X, float Y)> points, IReadOnlyList<int> labels)
    {
        lock (_gate) using (var o = _engine.AddTrackerNewPoints(_state, frameIndex, objectId, points, labels)) return Convert(o);
    }

    /// <summary>remove_object with upstream's <c>is_user_action</c> flag.</summary>
    internal void RemoveObject(int objectId, bool isUserAction)
    {
        lock (_gate) _engine.RemoveObject(_state, objectId, isUserAction);
    }

    internal VideoFrameResult AddPoints(int frameIndex, int objectId, IReadOnlyList<VideoPoint> points)
    {
        ArgumentNullException.ThrowIfNull(points);
        if (points.Count == 0) throw new ArgumentException("at least one point is needed", nameof(points));
        lock (_gate)
            using (var o = _engine.AddTrackerNewPoints(_state, frameIndex, objectId, points.Select(p => (p.X, p.Y)).ToList(), points.Select(p => p.Positive ? 1 : 0).ToList()))
                return Convert(o);
    }

    /// <summary>
    /// Propagates the prompts through the video, streaming one result per frame. Which work runs follows the reference's
    /// action history: a full detection+tracking pass after a text/box prompt, a tracker-only pass of the objects added or
    /// refined by clicks, or the cached results when nothing changed. With temporal disambiguation, results of a full
    /// pass are delayed by up to <c>hotstart_delay</c> frames (15) so that objects rejected by the hot-start rules are
    /// never shown.
    /// </summary>
    public IEnumerable<VideoFrameResult> Propagate(PropagationDirection direction = PropagationDirection.Both, int? startFrame = null, int? maxFrames = null,
                                                   CancellationToken cancellationToken = default)
    {
        var passes = direction switch
        {
            PropagationDirection.Forward => new[] { false },
            PropagationDirection.Backward => new[] { true },
            _ => new[] { false, true },
        };
        foreach (bool reverse in passes)
        {
            IEnumerator<VideoFrameOutput> e;
            lock (_gate) e = _engine.Propagate(_state, startFrame, maxFrames, reverse, cancellationToken: cancellationToken).GetEnumerator();
            using (e)
            {
                while (true)
                {
                    VideoFrameResult r;
                    lock (_gate)
                    {
                        if (!e.MoveNext()) break;
                        using var o = e.Current;
                        r = Convert(o);
                    }
                    yield return r;
                }
            }
        }
    }

    /// <summary>Stops tracking an object.</summary>
    public void RemoveObject(int objectId)
    {
        lock (_gate) _engine.RemoveObject(_state, objectId);
    }

    /// <summary>Back to the state right after the session started (reset_session).</summary>
    public void Reset()
    {
        lock (_gate) _engine.ResetState(_state);
    }

    internal static VideoFrameResult Convert(VideoFrameOutput o)
    {
        int n = o.ObjIds.Length;
        var objects = new List<VideoObject>(n);
        if (n > 0)
        {
            using var scope = NewDisposeScope();
            var boxes = o.BoxesXywh.cpu().data<float>().ToArray();
            var masks = o.Masks.cpu().to(ScalarType.Byte);
            int h = (int)masks.shape[1], w = (int)masks.shape[2];
            var all = masks.data<byte>().ToArray();
            for (int i = 0; i < n; i++)
            {
                var m = new byte[h * w];
                Array.Copy(all, (long)i * h * w, m, 0, h * w);
                objects.Add(new VideoObject((int)o.ObjIds[i], o.Probs[i], boxes[(i * 4)..(i * 4 + 4)], w, h, m));
            }
        }
        return new VideoFrameResult(o.FrameIndex, objects);
    }

    /// <summary>close_session: frees the session's tensors and frames.</summary>
    public void Dispose()
    {
        lock (_gate) _state.Dispose();
    }
}
