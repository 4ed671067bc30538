namespace Sam3.Torch.Video;

/// <summary>Options of a <see cref="Sam3VideoStream"/>.</summary>
public sealed record Sam3VideoStreamOptions
{
    /// <summary>
    /// Tracker memories (non-conditioning frames) kept per group of tracked objects, the most recent ones (default 64).
    /// Upstream keeps every frame; the tracker's attention uses at most <c>num_maskmem</c> memories and
    /// <c>max_obj_ptrs_in_encoder</c> object pointers chosen among the retained frames, so results equal upstream's as long
    /// as the frames its memory selection would choose lie within this window.
    /// </summary>
    public int MemoryFrames { get; init; } = 64;

    /// <summary>Device of the stream ("cpu", "cuda:N"); null = the predictor's (see <see cref="Sam3VideoSessionOptions.Device"/>).</summary>
    public string? Device { get; init; }
}

/// <summary>
/// Streaming mode of the video predictor: frames are pushed one at a time (a camera) and each frame's objects are
/// returned as soon as the hot-start rules make them final. The pipeline is the one of
/// <see cref="Sam3VideoSession.Propagate"/> forward from frame 0 (same outputs), with the hot-start heuristics kept:
/// the output of frame t is returned by the push of frame t + <see cref="OutputDelay"/>, where the delay is
/// <c>hotstart_delay − 1</c> frames (14 with the released configuration; 0 for a predictor loaded without temporal
/// disambiguation), because an object first seen on frame f can still be removed by the hot-start rules while frame
/// f + <c>hotstart_delay</c> − 1 is processed. <see cref="Complete"/> returns the frames still held back.
/// Memory is bounded over an unbounded stream: only the last frames, the tracker memories of
/// <see cref="Sam3VideoStreamOptions.MemoryFrames"/> frames and the most recent conditioning frames are kept.
/// Calls are serialised; different streams run independently.
/// </summary>
public sealed class Sam3VideoStream : IDisposable
{
    private readonly Sam3VideoEngine _engine;
    private readonly StreamRetention _retention;
    private readonly object _gate = new();
    private PushFrameSource? _source;
    private VideoInferenceState? _state;
    private HotstartOutputBuffer? _buffer;
    private int _emittedThrough = -1;
    private bool _completed, _disposed;

    /// <summary>Checks the options before anything is built for the stream (StartStream calls it before making the engine).</summary>
    internal static void Validate(Sam3VideoStreamOptions options)
    {
        if (options.MemoryFrames < 1)
            throw new ArgumentOutOfRangeException($"{nameof(options)}.{nameof(Sam3VideoStreamOptions.MemoryFrames)}", options.MemoryFrames,
                $"MemoryFrames must be at least 1, got {options.MemoryFrames}");
    }

    internal Sam3VideoStream(Sam3VideoEngine engine, string? text, Sam3VideoStreamOptions options, BoxPrompt? box = null)
    {
        _engine = engine;
        Text = text;
        Box = box;
        _retention = new StreamRetention { NonCondFrames = options.MemoryFrames };
    }

    /// <summary>The text prompt ("person"), applied to the first frame as <see cref="Sam3VideoSession.AddText"/> does; null for a stream prompted by a box only.</summary>
    public string? Text { get; }

    /// <summary>The box prompt (visual exemplar) applied to the first frame as <see cref="Sam3VideoSession.AddBox"/> does, or null.</summary>
    public BoxPrompt? Box { get; }

    /// <summary>Frames between a pushed frame and the return of its objects: <c>hotstart_delay − 1</c> (14 by default).</summary>
    public int OutputDelay => _engine.OutputDelayFrames;

    /// <summary>Frames pushed so far.</summary>
    public int FramesPushed { get { lock (_gate) return _source?.Pushed ?? 0; } }

    /// <summary>The session state (tests and diagnostics).</summary>
    internal VideoInferenceState? State => _state;

    /// <summary>
    /// Processes the next frame (the same size as the first) and returns the frames that became final: none while the
    /// first <see cref="OutputDelay"/> frames arrive, then one per push, in frame order. A cancelled push processes
    /// nothing and leaves the stream usable.
    /// </summary>
    public IReadOnlyList<VideoFrameResult> Push(RgbImage frame, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(frame);
        lock (_gate)
        {
            CheckOpen();
            cancellationToken.ThrowIfCancellationRequested();
            int f;
            if (_state is null)
            {
                var source = new PushFrameSource(frame);
                VideoInferenceState state;
                try
                {
                    state = _engine.InitState(source, loader: VideoFrameLoader.ImageFolder);
                }
                catch
                {
                    source.Dispose();
                    throw;
                }
                try
                {
                    if (Box is { } b)
                    {
                        // upstream add_prompt(frame 0, text and/or boxes): the box in normalised xywh of the first frame
                        var (x, y, w, h) = b.Box.ToNormalized(frame.Width, frame.Height).ToXywh();
                        using (_engine.AddPrompt(state, 0, text: Text, boxesXywh: [(x, y, w, h)], boxLabels: [b.Positive])) { }
                    }
                    else using (_engine.AddPrompt(state, 0, text: Text)) { }
                }
                catch
                {
                    state.Dispose();
                    throw;
                }
                _source = source;
                _state = state;
                _buffer = new HotstartOutputBuffer(_engine, state, reverse: false) { ForgetEmitted = true };
                f = 0;
            }
            else f = _source!.Push(frame);
            _buffer!.Add(f, _engine.RunSingleFrameInference(_state, f, reverse: false), isEnd: false);
            var results = Drain();
            _engine.ForgetStreamedFrames(_state, f, _emittedThrough, _retention);
            return results;
        }
    }

    /// <summary>End of the stream: returns the frames still held back (their objects are final now). No push may follow.</summary>
    public IReadOnlyList<VideoFrameResult> Complete()
    {
        lock (_gate)
        {
            CheckOpen();
            _completed = true;
            if (_buffer is null) return [];
            _buffer.Flush();
            return Drain();
        }
    }

    /// <summary>
    /// Not possible on a live stream, by upstream's semantics: a box prompt is a semantic prompt (upstream
    /// <c>add_prompt</c> with boxes calls <c>reset_state</c> and starts detection over on the prompted frame), which would
    /// discard every tracked object, its ids and the frames still held back by the hot-start delay. Start a new stream
    /// (or use a <see cref="Sam3VideoSession"/>) instead. The stream is left unchanged.
    /// </summary>
    /// <exception cref="Sam3StateException">Always, saying why.</exception>
    public VideoFrameResult AddBox(int frameIndex, BoxPrompt box)
    {
        lock (_gate) CheckOpen();
        throw new Sam3StateException(
            $"a box prompt ({box}) on frame {frameIndex} cannot be added to a live stream: upstream's add_prompt with boxes is a semantic prompt that " +
            "resets the session (reset_state) and starts detection over on that frame, discarding every tracked object and the frames held back " +
            "by the hot-start delay; start a new stream, or prompt a Sam3VideoSession");
    }

    /// <summary>
    /// Not possible on a live stream, by upstream's semantics: clicks go through <c>add_tracker_new_points</c> on an
    /// already computed frame, and the touched objects are then re-propagated over the computed frames
    /// (<c>propagation_partial</c> of the action history) — frames a stream has already returned and, beyond its
    /// memory window, forgotten. Use a <see cref="Sam3VideoSession"/> on the recorded frames instead. The stream is left unchanged.
    /// </summary>
    /// <exception cref="Sam3StateException">Always, saying why.</exception>
    public VideoFrameResult AddPoints(int frameIndex, int objectId, IReadOnlyList<PointPrompt> points)
    {
        ArgumentNullException.ThrowIfNull(points);
        lock (_gate) CheckOpen();
        throw new Sam3StateException(
            $"points for object {objectId} on frame {frameIndex} cannot be added to a live stream: upstream applies clicks with add_tracker_new_points " +
            "and re-propagates the touched objects over the frames already computed (propagation_partial), which a stream has already returned " +
            "and forgotten beyond its memory window; prompt a Sam3VideoSession on the recorded frames instead");
    }

    private List<VideoFrameResult> Drain()
    {
        var results = new List<VideoFrameResult>();
        while (_buffer!.TryEmit(out var post))
            using (post)
            {
                results.Add(Sam3VideoSession.Convert(post));
                _emittedThrough = post.FrameIndex;
            }
        return results;
    }

    private void CheckOpen()
    {
        if (_disposed) throw new Sam3StateException("the video stream has been closed");
        if (_completed) throw new Sam3StateException("the video stream has been completed; start a new stream");
    }

    /// <summary>Frees every tensor the stream holds.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            _buffer?.Dispose();
            _state?.Dispose();
        }
    }
}
