using static TorchSharp.torch;

namespace Sam3.Torch.Video;

/// <summary>
/// One frame's tracker output (upstream's compact <c>current_out</c> dict), batched over objects or a per-object slice.
/// Tensors are owned by this object (detached from dispose scopes); the state frees outputs nothing refers to any more.
/// </summary>
internal sealed class TrackerOutput : IDisposable
{
    /// <summary>maskmem_features [B, mem, N, N], stored as bfloat16 (upstream quirk) on the storage device; null until encoded.</summary>
    public Tensor? MaskmemFeatures;
    /// <summary>maskmem_pos_enc [B, mem, N, N] (an expand of the state's constant).</summary>
    public Tensor? MaskmemPosEnc;
    /// <summary>pred_masks: low-res logits [B, 1, 4N, 4N]; null for add_new_mask temporary outputs.</summary>
    public Tensor? PredMasks;
    /// <summary>pred_masks_video_res [B, 1, H, W] (±1024), add_new_mask temporary outputs only.</summary>
    public Tensor? PredMasksVideoRes;
    public Tensor ObjPtr = null!;
    public Tensor ObjectScoreLogits = null!;
    /// <summary>iou_score: [B] for tracked outputs, [B, 1] for consolidated ones (the shape matters for cal_mem_score).</summary>
    public Tensor? IouScore;
    /// <summary>eff_iou_score (memory selection); only tracked outputs and outputs re-sliced by remove_object have it.</summary>
    public float? EffIouScore;
    public bool IsDisposed { get; private set; }

    public IEnumerable<Tensor> Tensors
    {
        get
        {
            if (MaskmemFeatures is not null) yield return MaskmemFeatures;
            if (MaskmemPosEnc is not null) yield return MaskmemPosEnc;
            if (PredMasks is not null) yield return PredMasks;
            if (PredMasksVideoRes is not null) yield return PredMasksVideoRes;
            if (ObjPtr is not null) yield return ObjPtr;
            if (ObjectScoreLogits is not null) yield return ObjectScoreLogits;
            if (IouScore is not null) yield return IouScore;
        }
    }

    /// <summary>Detaches every tensor from dispose scopes (this object owns them).</summary>
    public TrackerOutput Own()
    {
        foreach (var t in Tensors) t.DetachFromDisposeScope();
        return this;
    }

    /// <summary>Bytes held by this output's own tensors (views count their full size).</summary>
    public long Bytes => Tensors.Sum(t => t.numel() * t.ElementSize);

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        foreach (var t in Tensors.ToList()) t.Dispose();
    }
}

/// <summary>Frame index → output, iterated in insertion order (the order of upstream's Python dicts).</summary>
internal sealed class FrameOutputs
{
    private readonly Dictionary<int, TrackerOutput> _map = new();
    private readonly List<int> _order = new();

    public int Count => _map.Count;
    public IReadOnlyList<int> Keys => _order;
    public IEnumerable<TrackerOutput> Values => _order.Select(k => _map[k]);
    public bool Contains(int frame) => _map.ContainsKey(frame);
    public TrackerOutput? Get(int frame) => _map.TryGetValue(frame, out var o) ? o : null;

    public void Set(int frame, TrackerOutput output)
    {
        if (!_map.ContainsKey(frame)) _order.Add(frame);
        _map[frame] = output;
    }

    public TrackerOutput? Pop(int frame)
    {
        if (!_map.Remove(frame, out var o)) return null;
        _order.Remove(frame);
        return o;
    }

    public void Clear()
    {
        _map.Clear();
        _order.Clear();
    }
}

/// <summary>upstream <c>{"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}</c>.</summary>
internal sealed class OutputDict
{
    public FrameOutputs Cond { get; } = new();
    public FrameOutputs NonCond { get; } = new();
    public FrameOutputs this[bool isCond] => isCond ? Cond : NonCond;
    public IEnumerable<TrackerOutput> All => Cond.Values.Concat(NonCond.Values);

    public void Clear()
    {
        Cond.Clear();
        NonCond.Clear();
    }
}

/// <summary>Point prompts of one object on one frame: coordinates [1, P, 2] in model pixels, labels [1, P] int32.</summary>
internal sealed record PointInputs(Tensor Coords, Tensor Labels) : IDisposable
{
    public void Dispose()
    {
        Coords.Dispose();
        Labels.Dispose();
    }
}

/// <summary>Per-object bookkeeping (upstream's *_per_obj dicts at one object index).</summary>
internal sealed class ObjectSlot
{
    public Dictionary<int, PointInputs> PointInputs { get; } = new();
    /// <summary>mask_inputs_per_obj: the binarised video-resolution mask [1, 1, H, W] per frame.</summary>
    public Dictionary<int, Tensor> MaskInputs { get; } = new();
    public OutputDict Output { get; } = new();
    public OutputDict Temp { get; } = new();

    public void DropPoints(int frame)
    {
        if (PointInputs.Remove(frame, out var p)) p.Dispose();
    }

    public void DropMask(int frame)
    {
        if (MaskInputs.Remove(frame, out var m)) m.Dispose();
    }

    public void ClearInputs()
    {
        foreach (var p in PointInputs.Values) p.Dispose();
        PointInputs.Clear();
        foreach (var m in MaskInputs.Values) m.Dispose();
        MaskInputs.Clear();
    }
}

/// <summary>Image features of one frame for the tracker (levels: conv_s0(4N), conv_s1(2N), N), batch 1.</summary>
internal sealed class FrameFeatures : IDisposable
{
    public required int FrameIndex { get; init; }
    public required Tensor[] Fpn { get; init; }
    public required Tensor[] Pos { get; init; }

    public void Dispose()
    {
        foreach (var t in Fpn.Concat(Pos)) t.Dispose();
    }
}

/// <summary>
/// The tracker's inference state (upstream's <c>inference_state</c> dict, typed). Created by
/// <see cref="TrackerPredictor.InitState"/>; owns its frames and every stored tensor. Not thread-safe.
/// </summary>
internal sealed class TrackerState : IDisposable
{
    public required TrackerFrames Frames { get; init; }
    public int NumFrames => Frames.Count;
    public int VideoHeight => Frames.VideoHeight;
    public int VideoWidth => Frames.VideoWidth;
    /// <summary>Compute device (the model's).</summary>
    public required Device Device { get; init; }
    /// <summary>Where stored outputs live (CPU with offload_state_to_cpu).</summary>
    public required Device StorageDevice { get; init; }
    /// <summary>
    /// Bounded-memory option (not upstream): keep at most this many non-conditioning outputs per dict (the most recently
    /// tracked ones); null keeps every tracked frame as upstream (<c>trim_past_non_cond_mem_for_eval=False</c>).
    /// </summary>
    public int? RetainNonCondFrames { get; init; }

    public List<int> ObjIds { get; } = new();
    public Dictionary<int, int> ObjIdToIdx { get; } = new();
    public List<ObjectSlot> Objects { get; } = new();
    public OutputDict Output { get; } = new();
    public HashSet<int> ConsolidatedCond { get; } = new();
    public HashSet<int> ConsolidatedNonCond { get; } = new();
    public bool TrackingHasStarted { get; set; }
    /// <summary>frames_already_tracked: frame → tracked in reverse.</summary>
    public Dictionary<int, bool> FramesAlreadyTracked { get; } = new();
    public int? FirstAnnFrameIdx { get; set; }
    /// <summary>constants["maskmem_pos_enc"]: [1, mem, N, N].</summary>
    public Tensor? MaskmemPosEnc { get; set; }
    /// <summary>cached_features: the most recent frame's features.</summary>
    public FrameFeatures? Cached { get; set; }
    /// <summary>Non-conditioning frames in the order they were stored (for <see cref="RetainNonCondFrames"/>).</summary>
    internal LinkedList<int> NonCondRecency { get; } = new();

    private readonly HashSet<TrackerOutput> _live = new(ReferenceEqualityComparer.Instance);
    public bool IsDisposed { get; private set; }

    public TrackerOutput Register(TrackerOutput o)
    {
        o.Own();
        _live.Add(o);
        return o;
    }

    public int NumObjects => ObjIds.Count;

    /// <summary>Frees every registered output that no dict refers to any more.</summary>
    public void Sweep()
    {
        var reachable = new HashSet<TrackerOutput>(ReferenceEqualityComparer.Instance);
        foreach (var o in Output.All) reachable.Add(o);
        foreach (var s in Objects)
        {
            foreach (var o in s.Output.All) reachable.Add(o);
            foreach (var o in s.Temp.All) reachable.Add(o);
        }
        var dead = _live.Where(o => !reachable.Contains(o)).ToList();
        foreach (var o in dead)
        {
            o.Dispose();
            _live.Remove(o);
        }
    }

    /// <summary>Number of stored outputs and the bytes they hold (views count their full size; diagnostics).</summary>
    public (int Outputs, long Bytes) StoredSize() => (_live.Count, _live.Sum(o => o.Bytes));

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        foreach (var s in Objects) s.ClearInputs();
        foreach (var o in _live) o.Dispose();
        _live.Clear();
        Output.Clear();
        Objects.Clear();
        MaskmemPosEnc?.Dispose();
        MaskmemPosEnc = null;
        Cached?.Dispose();
        Cached = null;
        Frames.Dispose();
    }
}
