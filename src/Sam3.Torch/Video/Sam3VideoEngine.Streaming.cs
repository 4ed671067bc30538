using Sam3.Torch.IO;

namespace Sam3.Torch.Video;

/// <summary>
/// Frames pushed one at a time (a camera): the length is unknown (<see cref="FrameCount"/> is <see cref="int.MaxValue"/>)
/// and only the most recent <see cref="Window"/> frames are kept. Reading a frame not pushed yet or already dropped is a
/// <see cref="Sam3StateException"/>.
/// </summary>
internal sealed class PushFrameSource : IFrameSource
{
    private readonly Queue<(int Index, RgbImage Image)> _recent = new();

    public PushFrameSource(RgbImage first, int window = 2, string description = "a live stream")
    {
        ArgumentNullException.ThrowIfNull(first);
        if (window < 1) throw new ArgumentOutOfRangeException(nameof(window), window, "the window must hold at least one frame");
        Window = window;
        Description = description;
        Width = first.Width;
        Height = first.Height;
        Push(first);
    }

    public int Window { get; }
    /// <summary>Frames pushed so far.</summary>
    public int Pushed { get; private set; }
    public int FrameCount => int.MaxValue;
    public int Width { get; }
    public int Height { get; }
    public string Description { get; }

    public bool IsAvailable(int index) => _recent.Any(r => r.Index == index);

    /// <summary>Appends the next frame (same size as the first) and returns its index.</summary>
    public int Push(RgbImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        FrameSource.CheckSize(image, Width, Height, $"{Description} frame {Pushed}");
        int index = Pushed++;
        _recent.Enqueue((index, image));
        while (_recent.Count > Window) _recent.Dequeue();
        return index;
    }

    public RgbImage ReadFrame(int index)
    {
        foreach (var (i, img) in _recent) if (i == index) return img;
        throw new Sam3StateException(index >= Pushed
            ? $"{Description}: frame {index} has not been pushed yet ({Pushed} so far)"
            : $"{Description}: frame {index} is no longer kept (the stream keeps the {Window} most recent frames)");
    }

    public void Dispose() => _recent.Clear();
}

/// <summary>
/// The output side of upstream's <c>propagate_in_video</c> (<c>Sam3VideoInference</c>): raw frame outputs are held in the
/// <c>hotstart_buffer</c> until <c>hotstart_delay</c> frames are buffered (or the end of the range), so that a masklet
/// the hot-start rules remove within its first frames is hidden on every frame; then each is post-processed and cached.
/// With <c>hotstart_delay</c> = D the output of frame t is final once frame t + D − 1 has been processed: an object that
/// first appears on frame f can be removed up to frame f + D − 1 (<c>first &gt; frame − D</c>), so D − 1 frames is the
/// smallest delay that never shows a removed object.
/// </summary>
internal sealed class HotstartOutputBuffer : IDisposable
{
    private readonly Sam3VideoEngine _engine;
    private readonly VideoInferenceState _s;
    private readonly bool _reverse;
    private readonly List<(int Frame, RawFrameOutput Out)> _buffer = new();
    private readonly Queue<(int Frame, RawFrameOutput Out)> _ready = new();
    private readonly HashSet<int> _removed = new();
    private readonly Dictionary<int, List<int>> _unconfirmed = new();
    private readonly int _unconfirmedDelay;

    public HotstartOutputBuffer(Sam3VideoEngine engine, VideoInferenceState s, bool reverse)
    {
        _engine = engine;
        _s = s;
        _reverse = reverse;
        _unconfirmedDelay = engine.Settings.MaskletConfirmationConsecutiveDetThresh - 1;
    }

    /// <summary>Forget per-frame bookkeeping of emitted frames (a stream of unbounded length; forward only).</summary>
    public bool ForgetEmitted { get; init; }

    /// <summary>Frames processed but not yet emitted.</summary>
    public int Pending => _buffer.Count + _ready.Count;

    /// <summary>Takes ownership of <paramref name="raw"/>; <paramref name="isEnd"/> = the last frame of the range (flushes).</summary>
    public void Add(int frame, RawFrameOutput raw, bool isEnd)
    {
        int delay = _engine.Settings.HotstartDelay;
        if (delay <= 0)
        {
            _ready.Enqueue((frame, raw));
            return;
        }
        _buffer.Add((frame, raw));
        _removed.UnionWith(raw.RemovedObjIds);
        _unconfirmed[frame] = raw.UnconfirmedObjIds;
        if (isEnd) Flush();
        else if (_buffer.Count >= delay)
        {
            _ready.Enqueue(_buffer[0]);
            _buffer.RemoveAt(0);
        }
    }

    /// <summary>Releases every buffered frame for emission (end of the range or of the stream).</summary>
    public void Flush()
    {
        foreach (var b in _buffer) _ready.Enqueue(b);
        _buffer.Clear();
    }

    /// <summary>The next final output (caller-owned): post-processed and cached as upstream.</summary>
    public bool TryEmit(out VideoFrameOutput post)
    {
        post = null!;
        if (_ready.Count == 0) return false;
        var (f, raw) = _ready.Dequeue();
        using (raw)
        {
            int confFrame = Math.Clamp(_reverse ? f - _unconfirmedDelay : f + _unconfirmedDelay, 0, _s.NumFrames - 1);
            var unconfirmed = _unconfirmed.TryGetValue(confFrame, out var u) ? u : null;
            post = _engine.PostprocessOutput(_s, f, raw, _removed, raw.SuppressedObjIds, unconfirmed);
            Sam3VideoEngine.CacheFrameOutputs(_s, f, raw.ObjIdToMask, raw.SuppressedObjIds, _removed, unconfirmed);
        }
        if (ForgetEmitted)
            foreach (int k in _unconfirmed.Keys.Where(k => k <= f).ToList()) _unconfirmed.Remove(k);
        return true;
    }

    public void Dispose()
    {
        foreach (var (_, o) in _buffer) o.Dispose();
        _buffer.Clear();
        while (_ready.Count > 0) _ready.Dequeue().Out.Dispose();
    }
}

/// <summary>Bounds of what a streaming session keeps (see <see cref="Sam3VideoEngine.ForgetStreamedFrames"/>).</summary>
internal sealed record StreamRetention
{
    /// <summary>Non-conditioning tracker outputs (memories, object pointers) kept per tracker state, the most recent ones.</summary>
    public int NonCondFrames { get; init; } = 64;
}

internal sealed partial class Sam3VideoEngine
{
    /// <summary>
    /// The output delay of a full propagation in frames: the output of frame t is emitted after frame
    /// t + <see cref="OutputDelayFrames"/> has been processed (<c>hotstart_delay − 1</c>; 0 without hot-start).
    /// </summary>
    public int OutputDelayFrames => Math.Max(0, Settings.HotstartDelay - 1);

    /// <summary>
    /// After frame <paramref name="frameIdx"/> of a forward stream: forgets what no later frame can use. Exact (outputs
    /// unchanged) except for the retention window of non-conditioning memories: per-frame flags, scores and suppression
    /// sets of frames already emitted (<paramref name="emittedThrough"/>), their cached masks, the unmatched/overlap frame
    /// logs of masklets past their hot-start period (only their length within the period matters), tracker outputs of
    /// frames before the window (conditioning frames: all but the <c>max_cond_frames_in_attn</c> most recent, which are
    /// the ones a forward pass selects), and prompts of dropped conditioning frames.
    /// </summary>
    public void ForgetStreamedFrames(VideoInferenceState s, int frameIdx, int emittedThrough, StreamRetention retention)
    {
        CheckState(s);
        int keepFrom = emittedThrough + 1;
        s.HasOutputs.RemoveBefore(frameIdx);
        s.HasVisualPrompt.RemoveBefore(frameIdx);
        s.PerFrameGeometricPrompt.RemoveBefore(frameIdx, p => p?.DisposeTensors());
        foreach (int f in s.CachedFrameOutputs.Keys.Where(f => f < keepFrom).ToList())
            if (s.CachedFrameOutputs.Remove(f, out var d)) foreach (var t in d.Values) t.Dispose();
        if (s.Metadata is { } md)
        {
            foreach (int f in md.TrackerScoreFrameWise.Keys.Where(f => f < keepFrom).ToList()) md.TrackerScoreFrameWise.Remove(f);
            foreach (int f in md.SuppressedObjIds.Keys.Where(f => f < keepFrom).ToList()) md.SuppressedObjIds.Remove(f);
            // the next frame's hotstart_diff: masklets that first appeared at or before it are never "within hot-start" again
            int nextDiff = frameIdx + 1 - Settings.HotstartDelay;
            bool Past(int id) => md.RemovedObjIds.Contains(id) || (md.ObjFirstFrameIdx.TryGetValue(id, out int first) && first <= nextDiff);
            foreach (var (id, list) in md.UnmatchedFrameInds)
                if (Past(id) && list.Count > 0) list.Clear();
            foreach (int id in md.UnmatchedFrameInds.Keys.Where(md.RemovedObjIds.Contains).ToList()) md.UnmatchedFrameInds.Remove(id);
            md.OverlapPairToFrameInds.RemoveAll(p => Past(p.Key.Obj));
        }
        foreach (var st in s.TrackerStates) Tracker.ForgetFramesBefore(st, frameIdx, retention.NonCondFrames);
    }
}

internal sealed partial class TrackerPredictor
{
    /// <summary>
    /// Bounded memory on a forward stream at frame <paramref name="frameIdx"/>: keeps the <paramref name="nonCondFrames"/>
    /// most recent non-conditioning outputs, the <c>max_cond_frames_in_attn</c> most recent conditioning outputs (those
    /// <c>select_closest_cond_frames</c> picks for a frame after all of them) plus any at or after frame − 1 (a pointer
    /// fallback), and the tracked-frame log of the current frame only.
    /// </summary>
    public void ForgetFramesBefore(TrackerState st, int frameIdx, int nonCondFrames)
    {
        CheckState(st);
        if (nonCondFrames < 1) throw new ArgumentOutOfRangeException(nameof(nonCondFrames), nonCondFrames, "at least one memory frame must be kept");
        foreach (int f in st.Output.NonCond.Keys.Where(f => f < frameIdx - nonCondFrames + 1 && !st.ConsolidatedNonCond.Contains(f)).ToList())
        {
            st.Output.NonCond.Pop(f);
            foreach (var slot in st.Objects) slot.Output.NonCond.Pop(f);
            st.NonCondRecency.Remove(f);
        }
        int maxCond = _t.MaxCondFramesInAttn;
        if (maxCond > 0)
        {
            var cond = st.Output.Cond.Keys.OrderByDescending(f => f).ToList();
            int? first = _t.KeepFirstCondFrame && cond.Count > 0 ? cond[^1] : null;
            foreach (int f in cond.Skip(maxCond).Where(f => f < frameIdx - 1 && f != first).ToList())
            {
                st.Output.Cond.Pop(f);
                st.ConsolidatedCond.Remove(f);
                foreach (var slot in st.Objects)
                {
                    slot.Output.Cond.Pop(f);
                    slot.DropPoints(f);
                    slot.DropMask(f);
                }
            }
            if (st.FirstAnnFrameIdx is int fa && !st.Output.Cond.Contains(fa))
                st.FirstAnnFrameIdx = st.Output.Cond.Count > 0 ? st.Output.Cond.Keys.Min() : null;
        }
        foreach (int f in st.FramesAlreadyTracked.Keys.Where(f => f < frameIdx).ToList()) st.FramesAlreadyTracked.Remove(f);
        st.Sweep();
    }
}
