using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Tracker;
using Sam3.Torch.Processing;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Video;

/// <summary>One propagated frame: object ids, low-res logits [O,1,4N,4N], video-resolution logits [O,1,H,W], object-score logits [O,1]. Caller-owned.</summary>
internal sealed record TrackerFrameResult(int FrameIndex, IReadOnlyList<int> ObjectIds, Tensor LowResMasks, Tensor VideoResLogits, Tensor ObjectScores) : IDisposable
{
    public void Dispose()
    {
        LowResMasks.Dispose();
        VideoResLogits.Dispose();
        ObjectScores.Dispose();
    }
}

/// <summary>Composition of one memory-attention call (diagnostics; upstream e2 fixture json records the same).</summary>
internal readonly record struct MemoryAttentionInfo(int PromptLength, int NumObjPtrTokens, int NumSpatialMemoryFrames);

/// <summary>
/// The SAM2-style video tracker (upstream <c>Sam3TrackerPredictor</c> on top of <c>Sam3TrackerBase</c>, with the
/// detector's backbone as its image encoder): inference states, point/box/mask prompts, consolidation of per-object
/// outputs, preflight memory encoding and propagation forwards or backwards, object removal. The numerics follow the
/// reference call by call at fp32 (see shared/docs/sam3-architecture.md §3.3 and shared/pyref/README-video-extra.md),
/// including its quirks:
/// <list type="bullet">
/// <item>stored memory features are rounded to bfloat16 (<c>maskmem_features.to(torch.bfloat16)</c>);</item>
/// <item>memory selection (<c>frame_filter</c>) never considers frame 0 when tracking forwards, its pointer loop drops
/// the earliest valid frame and uses the loop index (not the frame distance) as temporal position;</item>
/// <item><c>cal_mem_score</c> broadcasts <c>[B,1]·[B]</c> to <c>[B,B]</c> for tracked frames (its mean is
/// mean(score)·mean(iou) for several objects);</item>
/// <item>add_new_mask's low-res copy has size S/stride·4 (a SAM2 leftover) and is discarded.</item>
/// </list>
/// Image features of only the most recent frame are cached (as upstream); frames are decoded lazily.
/// </summary>
internal sealed partial class TrackerPredictor
{
    public Sam3TrackerBase Net { get; }
    public SAM3VLBackbone Backbone { get; }
    public Sam3Config Config { get; }
    /// <summary>Receives intermediates named as the parity fixtures (sam.mask_decoder.{0..3}, mem_attn.*, mem_enc.*, track_step.*).</summary>
    public Action<string, Tensor>? Probe { get; set; }
    /// <summary>Called for every memory-attention call.</summary>
    public Action<MemoryAttentionInfo>? MemoryAttentionObserved { get; set; }

    private readonly TrackerConfig _t;
    private readonly HardcodedConfig _hc;
    private readonly int _s, _lowRes, _inputMaskSize, _numMaskmem, _hidden, _memDim;
    private readonly double _noObj;
    // upstream Sam3TrackerPredictor constants (not builder arguments)
    private const bool IterUsePrevMaskPred = true;
    private const bool AddAllFramesToCorrectAsCond = true;
    private const double PrevMaskLogitClamp = 32.0;
    private const double ConsolidatedDefaultObjectScore = 10.0;
    private const double MaskInputBinarizeThreshold = 0.5;

    public TrackerPredictor(Sam3TrackerBase net, SAM3VLBackbone backbone, Sam3Config config)
    {
        Net = net ?? throw new ArgumentNullException(nameof(net));
        Backbone = backbone ?? throw new ArgumentNullException(nameof(backbone));
        Config = config ?? throw new ArgumentNullException(nameof(config));
        _t = config.Tracker;
        _hc = config.HardcodedInClasses;
        _s = net.image_size;
        _lowRes = net.low_res_mask_size;
        _inputMaskSize = net.input_mask_size;
        _numMaskmem = net.num_maskmem;
        _hidden = net.hidden_dim;
        _memDim = net.mem_dim;
        _noObj = net.no_obj_score;
        if (!config.Neck.AddSam2Neck) throw new Sam3ConfigException("the tracker needs the backbone's SAM2 neck (neck.add_sam2_neck)");
    }

    /// <summary>Builds a tracker on an image model loaded with the interactive heads (its tracker weights and SAM2 neck).</summary>
    public static TrackerPredictor FromImageModel(Sam3ImageModel model) =>
        new(model.Tracker ?? throw new Sam3StateException("the model was loaded without the tracker (inst_interactive_predictor): load it with the interactive heads"),
            model.backbone, model.Config);

    private Device ModelDevice => Net.no_mem_embed.device;

    // =============================================================== state

    /// <summary>init_state: a new state over <paramref name="source"/> (the state owns and disposes it).</summary>
    public TrackerState InitState(IFrameSource source, bool offloadStateToCpu = true, int? retainNonCondFrames = null, int frameCacheCapacity = 4)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (retainNonCondFrames is < 1) throw new ArgumentOutOfRangeException(nameof(retainNonCondFrames), retainNonCondFrames, "must be at least 1 (or null to keep all)");
        var frames = new TrackerFrames(source, _s, Config.ImageMean[0], Config.ImageStd[0], frameCacheCapacity);
        var device = ModelDevice;
        return new TrackerState
        {
            Frames = frames,
            Device = device,
            StorageDevice = offloadStateToCpu ? torch.CPU : device,
            RetainNonCondFrames = retainNonCondFrames,
        };
    }

    private int ObjIdToIdx(TrackerState st, int objId)
    {
        if (st.ObjIdToIdx.TryGetValue(objId, out int idx)) return idx;
        if (st.TrackingHasStarted)
            throw new Sam3StateException($"Cannot add new object id {objId} after tracking starts. All existing object ids: [{string.Join(", ", st.ObjIds)}]. " +
                                         "Reset the state (or remove all objects) first, or track the new object in a new state.");
        idx = st.ObjIds.Count;
        st.ObjIdToIdx[objId] = idx;
        st.ObjIds.Add(objId);
        st.Objects.Add(new ObjectSlot());
        return idx;
    }

    private static void CheckState(TrackerState st)
    {
        ArgumentNullException.ThrowIfNull(st);
        if (st.IsDisposed) throw new Sam3StateException("the tracker state has been disposed");
    }

    private static void CheckFrame(TrackerState st, int frameIdx)
    {
        if ((uint)frameIdx >= (uint)st.NumFrames)
            throw new ArgumentOutOfRangeException(nameof(frameIdx), frameIdx, $"frame index {frameIdx} outside [0, {st.NumFrames - 1}] of the video");
    }

    // =============================================================== prompts

    /// <summary>
    /// add_new_points_or_box. <paramref name="points"/> as (x, y) pairs and <paramref name="box"/> (x0, y0, x1, y1) in
    /// relative coordinates ([0,1] of the video, multiplied by S) when <paramref name="relCoordinates"/>, else in model
    /// pixels. Labels 1/0 (positive/negative). Returns the consolidated video-resolution logits of all objects on the frame.
    /// </summary>
    public Tensor AddNewPointsOrBox(TrackerState st, int frameIdx, int objId, IReadOnlyList<(float X, float Y)>? points = null,
                                   IReadOnlyList<int>? labels = null, bool clearOldPoints = true, bool relCoordinates = true,
                                   (float X0, float Y0, float X1, float Y1)? box = null, bool usePrevMemFrame = false)
    {
        CheckState(st);
        CheckFrame(st, frameIdx);
        if ((points is null) != (labels is null)) throw new Sam3PromptException("points and labels must be provided together");
        if (points is null && box is null) throw new Sam3PromptException("at least one of points or box must be provided as input");
        if (points is not null && points.Count != labels!.Count) throw new Sam3PromptException($"{points.Count} points with {labels.Count} labels");
        if (labels is not null)
            for (int i = 0; i < labels.Count; i++)
                if (labels[i] is not (0 or 1)) throw new Sam3PromptException($"point {i} has label {labels[i]}: labels are 1 (positive) or 0 (negative)");
        if (box is not null && !clearOldPoints)
            throw new Sam3PromptException("cannot add box without clearing old points, since box prompt must be provided before any point prompt (please use clear_old_points=True instead)");
        float lim = relCoordinates ? 1f : _s;
        if (points is not null)
            for (int i = 0; i < points.Count; i++)
                if (!float.IsFinite(points[i].X) || !float.IsFinite(points[i].Y) || points[i].X < 0 || points[i].Y < 0 || points[i].X > lim || points[i].Y > lim)
                    throw new Sam3PromptException($"point {i} ({points[i].X}, {points[i].Y}) lies outside the frame ([0, {lim}] expected)");
        if (box is { } bx && (!float.IsFinite(bx.X0) || !float.IsFinite(bx.Y0) || !float.IsFinite(bx.X1) || !float.IsFinite(bx.Y1)
                             || bx.X0 < 0 || bx.Y0 < 0 || bx.X1 > lim || bx.Y1 > lim || bx.X1 < bx.X0 || bx.Y1 < bx.Y0))
            throw new Sam3PromptException($"box ({bx.X0}, {bx.Y0}, {bx.X1}, {bx.Y1}) is not an xyxy box inside the frame ([0, {lim}] expected)");

        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        int objIdx = ObjIdToIdx(st, objId);
        var slot = st.Objects[objIdx];
        var device = st.Device;

        var pts = points is null ? torch.zeros(1, 0, 2) : torch.tensor(points.SelectMany(p => new[] { p.X, p.Y }).ToArray(), new long[] { 1, points.Count, 2 });
        var lbl = labels is null ? torch.zeros(1, 0, dtype: ScalarType.Int32) : torch.tensor(labels.ToArray(), new long[] { 1, labels.Count }, dtype: ScalarType.Int32);
        Tensor? boxT = box is { } b ? torch.tensor(new[] { b.X0, b.Y0, b.X1, b.Y1 }) : null;
        if (relCoordinates)
        {
            pts = pts * _s; // float32 · int, as upstream
            if (boxT is not null) boxT = boxT * _s;
        }
        if (boxT is not null)
        {
            pts = torch.cat([boxT.reshape(1, 2, 2), pts], 1);
            lbl = torch.cat([torch.tensor(new[] { 2, 3 }, dtype: ScalarType.Int32).reshape(1, 2), lbl], 1);
        }
        pts = pts.to(device);
        lbl = lbl.to(device);
        PointInputs? old = clearOldPoints ? null : slot.PointInputs.GetValueOrDefault(frameIdx);
        var coords = old is null ? pts : torch.cat([old.Coords, pts], 1);
        var labs = old is null ? lbl : torch.cat([old.Labels, lbl], 1);

        bool isInitCond = !st.FramesAlreadyTracked.ContainsKey(frameIdx);
        bool reverse = !isInitCond && st.FramesAlreadyTracked[frameIdx];
        bool isCond = isInitCond || AddAllFramesToCorrectAsCond;

        int maxPts = _t.MaxPointNumInPromptEnc;
        long numPoints = coords.shape[1];
        if (maxPts > 0 && numPoints > maxPts)
        {
            int first = maxPts / 2, last = maxPts - first;
            coords = torch.cat([coords[.., ..first], coords[.., (int)(numPoints - last)..]], 1);
            labs = torch.cat([labs[.., ..first], labs[.., (int)(numPoints - last)..]], 1);
        }
        slot.DropPoints(frameIdx);
        slot.PointInputs[frameIdx] = new PointInputs(coords.DetachFromDisposeScope(), labs.DetachFromDisposeScope());
        slot.DropMask(frameIdx);
        var pointInputs = slot.PointInputs[frameIdx];

        Tensor? prevLogits = null;
        if (IterUsePrevMaskPred)
        {
            var prev = slot.Temp[isCond].Get(frameIdx) ?? slot.Output.Cond.Get(frameIdx) ?? slot.Output.NonCond.Get(frameIdx);
            if (prev?.PredMasks is not null) prevLogits = prev.PredMasks.to(device).clamp(-PrevMaskLogitClamp, PrevMaskLogitClamp);
        }
        var (current, _) = RunSingleFrameInference(st, slot.Output, frameIdx, 1, isInitCond, pointInputs, null, reverse,
                                                    runMemEncoder: false, prevLogits, usePrevMemFrame);
        SetOutput(st, slot.Temp[isCond], frameIdx, current);

        var consolidated = ConsolidateTempOutput(st, frameIdx, isCond, runMemEncoder: false, atVideoRes: true);
        var video = GetOrigVideoResOutput(st, consolidated.PredMasksVideoRes!);
        consolidated.Dispose(); // never stored
        st.Sweep();
        return video.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// add_new_mask: a [H', W'] mask (bool or probabilities in [0,1], any size) for one object on one frame; it is
    /// resized to the input-mask size (bilinear, antialias) for the model and to the video size (&gt; 0.5) for the output.
    /// Returns the consolidated video-resolution logits of all objects on the frame.
    /// </summary>
    public Tensor AddNewMask(TrackerState st, int frameIdx, int objId, Tensor mask)
    {
        CheckState(st);
        CheckFrame(st, frameIdx);
        ArgumentNullException.ThrowIfNull(mask);
        if (mask.dim() != 2) throw new Sam3PromptException($"the mask must be 2-D [H, W], got [{string.Join(",", mask.shape)}]");
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        int objIdx = ObjIdToIdx(st, objId);
        var slot = st.Objects[objIdx];
        var device = st.Device;
        long mh = mask.shape[0], mw = mask.shape[1];
        var orig = mask[TensorIndex.None, TensorIndex.None].to(ScalarType.Float32).to(device);
        var maskInputs = mh != _inputMaskSize || mw != _inputMaskSize
            ? nn.functional.interpolate(orig, [_inputMaskSize, _inputMaskSize], mode: InterpolationMode.Bilinear, align_corners: false, antialias: true)
            : orig;
        var videoRes = mh != st.VideoHeight || mw != st.VideoWidth
            ? nn.functional.interpolate(orig, [st.VideoHeight, st.VideoWidth], mode: InterpolationMode.Bilinear, align_corners: false, antialias: true)
            : orig;
        var videoResMask = videoRes.gt(MaskInputBinarizeThreshold);

        slot.DropMask(frameIdx);
        slot.MaskInputs[frameIdx] = videoResMask.alias().DetachFromDisposeScope();
        slot.DropPoints(frameIdx);
        bool isInitCond = !st.FramesAlreadyTracked.ContainsKey(frameIdx);
        bool reverse = !isInitCond && st.FramesAlreadyTracked[frameIdx];
        bool isCond = isInitCond || AddAllFramesToCorrectAsCond;

        var (current, _) = RunSingleFrameInference(st, slot.Output, frameIdx, 1, isInitCond, null, maskInputs, reverse, runMemEncoder: false);
        current.PredMasks?.Dispose();
        current.PredMasks = null;
        current.PredMasksVideoRes = torch.where(videoResMask, torch.tensor(-_noObj, device: device), torch.tensor(_noObj, device: device))
                                          .to(ScalarType.Float32).DetachFromDisposeScope();
        SetOutput(st, slot.Temp[isCond], frameIdx, current);
        for (int i = 0; i < st.Objects.Count; i++)
        {
            if (i == objIdx) continue;
            var other = st.Objects[i].Temp[isCond].Get(frameIdx);
            if (other?.PredMasksVideoRes is null) continue;
            var erased = torch.where(videoResMask, torch.tensor(_noObj, device: device), other.PredMasksVideoRes).DetachFromDisposeScope();
            other.PredMasksVideoRes.Dispose();
            other.PredMasksVideoRes = erased;
        }
        var consolidated = ConsolidateTempOutput(st, frameIdx, isCond, runMemEncoder: false, atVideoRes: true);
        var video = GetOrigVideoResOutput(st, consolidated.PredMasksVideoRes!);
        consolidated.Dispose();
        st.Sweep();
        return video.MoveToOuterDisposeScope();
    }

    private static void SetOutput(TrackerState st, FrameOutputs dict, int frame, TrackerOutput o)
    {
        st.Register(o);
        dict.Set(frame, o);
    }

    // =============================================================== consolidation

    /// <summary>_get_orig_video_res_output: bilinear resize to the video size, optional non-overlap and hole filling.</summary>
    private Tensor GetOrigVideoResOutput(TrackerState st, Tensor anyRes)
    {
        var m = anyRes.to(st.Device);
        var video = m.shape[^2] == st.VideoHeight && m.shape[^1] == st.VideoWidth
            ? m.alias()
            : nn.functional.interpolate(m, [st.VideoHeight, st.VideoWidth], mode: InterpolationMode.Bilinear, align_corners: false);
        if (_t.NonOverlapMasksForOutput) video = Net.ApplyNonOverlappingConstraints(video);
        if (_t.FillHoleArea > 0) video = MaskPost.FillHolesInMaskScores(video, _t.FillHoleArea, _hc.VideoFillHoleLogit);
        return video;
    }

    /// <summary>_consolidate_temp_output_across_obj. The result is not registered (the caller stores or disposes it).</summary>
    private TrackerOutput ConsolidateTempOutput(TrackerState st, int frameIdx, bool isCond, bool runMemEncoder, bool atVideoRes)
    {
        int b = st.NumObjects;
        var device = st.Device;
        if (atVideoRes && runMemEncoder) throw new InvalidOperationException("memory encoder cannot run at video resolution");
        long ch = atVideoRes ? st.VideoHeight : _lowRes, cw = atVideoRes ? st.VideoWidth : _lowRes;
        var masks = torch.full(b, 1, ch, cw, _noObj, dtype: ScalarType.Float32, device: st.StorageDevice);
        var objPtr = torch.full(b, _hidden, _noObj, dtype: ScalarType.Float32, device: device);
        var scores = torch.full(b, 1, ConsolidatedDefaultObjectScore, dtype: ScalarType.Float32, device: device);
        Tensor? iou = _t.UseMemorySelection ? torch.zeros(b, 1, dtype: ScalarType.Float32, device: device) : null;
        Tensor? emptyPtr = null;
        for (int i = 0; i < b; i++)
        {
            var slot = st.Objects[i];
            var o = slot.Temp[isCond].Get(frameIdx) ?? slot.Output.Cond.Get(frameIdx) ?? slot.Output.NonCond.Get(frameIdx);
            if (o is null)
            {
                if (runMemEncoder)
                {
                    emptyPtr ??= GetEmptyMaskPtr(st, frameIdx);
                    objPtr[i..(i + 1)] = emptyPtr;
                }
                continue;
            }
            var objMask = o.PredMasksVideoRes ?? o.PredMasks!;
            var target = masks[i..(i + 1)];
            if (objMask.shape[^2] == ch && objMask.shape[^1] == cw) target.copy_(objMask);
            else
            {
                bool downsampling = o.PredMasksVideoRes is not null;
                target.copy_(nn.functional.interpolate(objMask.to(ScalarType.Float32), [ch, cw], mode: InterpolationMode.Bilinear,
                                                       align_corners: false, antialias: downsampling));
            }
            objPtr[i..(i + 1)] = o.ObjPtr;
            scores[i..(i + 1)] = o.ObjectScoreLogits;
            if (iou is not null && o.IouScore is not null) iou[i..(i + 1)] = o.IouScore.reshape(1, 1);
        }
        var result = new TrackerOutput { ObjPtr = objPtr, ObjectScoreLogits = scores, IouScore = iou };
        if (atVideoRes) result.PredMasksVideoRes = masks;
        else result.PredMasks = masks;
        if (runMemEncoder)
        {
            var highRes = nn.functional.interpolate(masks.to(device), [_s, _s], mode: InterpolationMode.Bilinear, align_corners: false);
            highRes = Net.ApplyNonOverlappingConstraints(highRes);
            var (feats, pos) = RunMemoryEncoder(st, frameIdx, b, highRes, scores, isMaskFromPts: true);
            result.MaskmemFeatures = feats;
            result.MaskmemPosEnc = pos;
        }
        return result.Own();
    }

    /// <summary>_get_empty_mask_ptr: object pointer of an all-zero mask on the frame (SAM heads on mask_downsample of it).</summary>
    private Tensor GetEmptyMaskPtr(TrackerState st, int frameIdx)
    {
        var mask = torch.zeros(1, 1, _s, _s, dtype: ScalarType.Float32, device: st.Device);
        var feats = GetImageFeature(st, frameIdx, 1);
        using var step = TrackStep(frameIdx, true, feats, null, mask, new OutputDict(), st.NumFrames, false, runMemEncoder: false, null, true);
        return step.ObjPtr.alias();
    }

    // =============================================================== propagation

    /// <summary>propagate_in_video_preflight: consolidates the temporary outputs into the state and encodes their memory.</summary>
    public void PropagatePreflight(TrackerState st, bool runMemEncoder = true)
    {
        CheckState(st);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        st.TrackingHasStarted = true;
        int b = st.NumObjects;
        foreach (bool isCond in new[] { false, true })
        {
            var tempFrames = new SortedSet<int>();
            foreach (var s in st.Objects) foreach (int f in s.Temp[isCond].Keys) tempFrames.Add(f);
            (isCond ? st.ConsolidatedCond : st.ConsolidatedNonCond).UnionWith(tempFrames);
            foreach (int f in tempFrames)
            {
                var c = ConsolidateTempOutput(st, f, isCond, runMemEncoder, atVideoRes: false);
                SetOutput(st, st.Output[isCond], f, c);
                AddOutputPerObject(st, f, c, isCond);
                if (_t.ClearNonCondMemAroundInput && (_t.ClearNonCondMemForMultiObj || b <= 1)) ClearNonCondMemAroundInput(st, f);
            }
            foreach (var s in st.Objects) s.Temp[isCond].Clear();
        }
        foreach (int f in st.Output.Cond.Keys) st.Output.NonCond.Pop(f);
        foreach (var s in st.Objects) foreach (int f in s.Output.Cond.Keys) s.Output.NonCond.Pop(f);
        foreach (int f in st.ConsolidatedCond) st.ConsolidatedNonCond.Remove(f);

        var inputFrames = new HashSet<int>();
        foreach (var s in st.Objects)
        {
            inputFrames.UnionWith(s.PointInputs.Keys);
            inputFrames.UnionWith(s.MaskInputs.Keys);
        }
        var all = new HashSet<int>(st.ConsolidatedCond);
        all.UnionWith(st.ConsolidatedNonCond);
        if (!all.SetEquals(inputFrames))
            throw new Sam3StateException("tracker state is inconsistent: prompted frames differ from consolidated frames");
        st.FirstAnnFrameIdx ??= inputFrames.Count > 0 ? inputFrames.Min() : null;
        if (st.FirstAnnFrameIdx is not int fa || !st.Output.Cond.Contains(fa))
            st.FirstAnnFrameIdx = st.Output.Cond.Count > 0 ? st.Output.Cond.Keys.Min() : null;
        st.Sweep();
    }

    /// <summary>_get_processing_order (lazy: a live source has no known end).</summary>
    public IEnumerable<int> ProcessingOrder(TrackerState st, int? startFrameIdx, int? maxFrameNumToTrack, bool reverse)
    {
        int numFrames = st.NumFrames;
        int? start = _t.AlwaysStartFromFirstAnnFrame ? st.FirstAnnFrameIdx : startFrameIdx;
        if (start is null)
        {
            if (st.Output.Cond.Count == 0) throw new Sam3StateException("No points are provided; please add points first");
            start = st.Output.Cond.Keys.Min();
        }
        int s = start.Value;
        if (s < 0 || s >= numFrames) throw new ArgumentOutOfRangeException(nameof(startFrameIdx), s, $"start frame outside [0, {numFrames - 1}]");
        long max = maxFrameNumToTrack ?? numFrames;
        if (max < 0) throw new ArgumentOutOfRangeException(nameof(maxFrameNumToTrack), max, "the frame budget must not be negative");
        return Order(s, max, reverse, numFrames);

        static IEnumerable<int> Order(int s, long max, bool reverse, int numFrames)
        {
            if (reverse)
            {
                long end = Math.Max(s - max, 0);
                if (s > 0) for (long f = s; f >= end; f--) yield return (int)f;
                else yield return 0;
            }
            else
            {
                long end = Math.Min(s + max, (long)numFrames - 1);
                for (long f = s; f <= end; f++) yield return (int)f;
            }
        }
    }

    /// <summary>
    /// propagate_in_video: yields every frame of the processing order (stored outputs for prompted frames, tracking
    /// otherwise). Each result is owned by the caller. <paramref name="onFrameStart"/> is called before each frame's work.
    /// </summary>
    public IEnumerable<TrackerFrameResult> Propagate(TrackerState st, int? startFrameIdx, int? maxFrameNumToTrack, bool reverse,
                                                     bool preflight = true, Action<int>? onFrameStart = null, Action? onPreflight = null)
    {
        CheckState(st);
        if (preflight)
        {
            onPreflight?.Invoke();
            PropagatePreflight(st);
        }
        if (st.Output.Cond.Count == 0) throw new Sam3StateException("No points are provided; please add points first");
        var order = ProcessingOrder(st, startFrameIdx, maxFrameNumToTrack, reverse);
        var objIds = st.ObjIds.ToArray();
        int b = st.NumObjects;
        bool clearNonCond = _t.ClearNonCondMemAroundInput && (_t.ClearNonCondMemForMultiObj || b <= 1);
        foreach (int f in order)
        {
            onFrameStart?.Invoke(f);
            TrackerFrameResult result;
            using (var scope = NewDisposeScope())
            using (var noGrad = torch.no_grad())
            {
                CheckState(st);
                TrackerOutput current;
                Tensor predMasks;
                bool isCond;
                if (st.ConsolidatedCond.Contains(f))
                {
                    isCond = true;
                    current = st.Output.Cond.Get(f)!;
                    predMasks = current.PredMasks!;
                    if (clearNonCond) ClearNonCondMemAroundInput(st, f);
                }
                else if (st.ConsolidatedNonCond.Contains(f))
                {
                    isCond = false;
                    current = st.Output.NonCond.Get(f)!;
                    predMasks = current.PredMasks!;
                }
                else
                {
                    isCond = false;
                    (current, predMasks) = RunSingleFrameInference(st, st.Output, f, b, false, null, null, reverse, runMemEncoder: true);
                    SetOutput(st, st.Output.NonCond, f, current);
                    TrimNonCond(st, f);
                }
                AddOutputPerObject(st, f, current, isCond);
                st.FramesAlreadyTracked[f] = reverse;
                var lowRes = predMasks.to(st.Device).clone();
                var video = GetOrigVideoResOutput(st, lowRes);
                var scores = current.ObjectScoreLogits.to(ScalarType.Float32).clone(); // fp32 outputs under the bf16 policy too
                st.Sweep();
                result = new TrackerFrameResult(f, objIds, lowRes.DetachFromDisposeScope(), video.DetachFromDisposeScope(), scores.DetachFromDisposeScope());
            }
            yield return result;
        }
    }

    /// <summary>Bounded-memory option: forget the oldest non-conditioning outputs beyond <see cref="TrackerState.RetainNonCondFrames"/>.</summary>
    private static void TrimNonCond(TrackerState st, int frame)
    {
        if (st.RetainNonCondFrames is not int keep) return;
        st.NonCondRecency.Remove(frame);
        st.NonCondRecency.AddLast(frame);
        while (st.NonCondRecency.Count > keep)
        {
            int old = st.NonCondRecency.First!.Value;
            st.NonCondRecency.RemoveFirst();
            if (st.ConsolidatedNonCond.Contains(old)) continue;
            st.Output.NonCond.Pop(old);
            foreach (var s in st.Objects) s.Output.NonCond.Pop(old);
        }
    }

    /// <summary>_add_output_per_object: per-object slices (views) of a batched output.</summary>
    private static void AddOutputPerObject(TrackerState st, int frameIdx, TrackerOutput current, bool isCond)
    {
        for (int i = 0; i < st.Objects.Count; i++)
        {
            var o = new TrackerOutput
            {
                PredMasks = current.PredMasks?.narrow(0, i, 1),
                ObjPtr = current.ObjPtr.narrow(0, i, 1),
                ObjectScoreLogits = current.ObjectScoreLogits.narrow(0, i, 1),
                IouScore = current.IouScore?.narrow(0, i, 1),
                MaskmemFeatures = current.MaskmemFeatures?.narrow(0, i, 1),
                MaskmemPosEnc = current.MaskmemPosEnc?.narrow(0, i, 1),
            };
            SetOutput(st, st.Objects[i].Output[isCond], frameIdx, o);
        }
    }

    /// <summary>_clear_non_cond_mem_around_input (per-object dicts only, as upstream).</summary>
    private void ClearNonCondMemAroundInput(TrackerState st, int frameIdx)
    {
        int r = _t.MemoryTemporalStrideForEval;
        int begin = frameIdx - r * _numMaskmem, end = frameIdx + r * _numMaskmem;
        foreach (var s in st.Objects)
            for (int t = begin; t <= end; t++) s.Output.NonCond.Pop(t);
    }

    // =============================================================== clearing / removal

    /// <summary>clear_all_points_in_frame for one object (returns the updated video-resolution logits when asked).</summary>
    public Tensor? ClearAllPointsInFrame(TrackerState st, int frameIdx, int objId, bool needOutput = true)
    {
        CheckState(st);
        CheckFrame(st, frameIdx);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        int objIdx = ObjIdToIdx(st, objId);
        var slot = st.Objects[objIdx];
        slot.DropPoints(frameIdx);
        slot.DropMask(frameIdx);
        slot.Temp.Cond.Pop(frameIdx);
        slot.Temp.NonCond.Pop(frameIdx);
        bool hasInput = st.Objects.Any(s => s.PointInputs.ContainsKey(frameIdx) || s.MaskInputs.ContainsKey(frameIdx));
        if (!hasInput)
        {
            st.ConsolidatedCond.Remove(frameIdx);
            st.ConsolidatedNonCond.Remove(frameIdx);
            var o = st.Output.Cond.Pop(frameIdx);
            if (o is not null)
            {
                st.Output.NonCond.Set(frameIdx, o);
                st.FramesAlreadyTracked.Remove(frameIdx);
            }
            foreach (var s in st.Objects)
            {
                var so = s.Output.Cond.Pop(frameIdx);
                if (so is not null) s.Output.NonCond.Set(frameIdx, so);
            }
            if (st.Output.Cond.Count == 0) ResetTrackingResults(st);
        }
        Tensor? result = null;
        if (needOutput)
        {
            bool isCond = st.Objects.Any(s => s.Temp.Cond.Contains(frameIdx));
            var c = ConsolidateTempOutput(st, frameIdx, isCond, false, true);
            result = GetOrigVideoResOutput(st, c.PredMasksVideoRes!).MoveToOuterDisposeScope();
            c.Dispose();
        }
        st.Sweep();
        return result;
    }

    /// <summary>clear_all_points_in_video: removes every prompt, output and object.</summary>
    public void ClearAllPointsInVideo(TrackerState st)
    {
        CheckState(st);
        ResetTrackingResults(st);
        st.ObjIdToIdx.Clear();
        st.ObjIds.Clear();
        foreach (var s in st.Objects) s.ClearInputs();
        st.Objects.Clear();
        st.Sweep();
    }

    private static void ResetTrackingResults(TrackerState st)
    {
        foreach (var s in st.Objects)
        {
            s.ClearInputs();
            s.Output.Clear();
            s.Temp.Clear();
        }
        st.Output.Clear();
        st.ConsolidatedCond.Clear();
        st.ConsolidatedNonCond.Clear();
        st.TrackingHasStarted = false;
        st.FramesAlreadyTracked.Clear();
        st.FirstAnnFrameIdx = null;
        st.NonCondRecency.Clear();
    }

    /// <summary>
    /// remove_object. Unknown ids are ignored unless <paramref name="strict"/>. Removing the last object resets the
    /// state. Returns the remaining ids and, when asked, the updated video-resolution logits of the removed object's
    /// prompted frames (caller-owned).
    /// </summary>
    public (IReadOnlyList<int> ObjIds, List<(int Frame, Tensor VideoResLogits)> Updated) RemoveObject(TrackerState st, int objId, bool strict = false, bool needOutput = true)
    {
        CheckState(st);
        var updated = new List<(int, Tensor)>();
        if (!st.ObjIdToIdx.TryGetValue(objId, out int oldIdx))
        {
            if (!strict) return (st.ObjIds.ToArray(), updated);
            throw new Sam3PromptException($"Cannot remove object id {objId} as it doesn't exist. All existing object ids: [{string.Join(", ", st.ObjIds)}].");
        }
        if (st.ObjIdToIdx.Count == 1)
        {
            ClearAllPointsInVideo(st);
            return (st.ObjIds.ToArray(), updated);
        }
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var inputFrames = new SortedSet<int>(st.Objects[oldIdx].PointInputs.Keys);
        inputFrames.UnionWith(st.Objects[oldIdx].MaskInputs.Keys);
        foreach (int f in inputFrames) ClearAllPointsInFrame(st, f, objId, needOutput: false);

        var remain = Enumerable.Range(0, st.ObjIds.Count).Where(i => i != oldIdx).ToArray();
        var newIds = remain.Select(i => st.ObjIds[i]).ToList();
        var removedSlot = st.Objects[oldIdx];
        removedSlot.ClearInputs();
        st.Objects.RemoveAt(oldIdx);
        st.ObjIds.Clear();
        st.ObjIds.AddRange(newIds);
        st.ObjIdToIdx.Clear();
        for (int i = 0; i < newIds.Count; i++) st.ObjIdToIdx[newIds[i]] = i;

        var idx = torch.tensor(remain.Select(i => (long)i).ToArray());
        foreach (bool isCond in new[] { true, false })
        {
            foreach (int f in st.Output[isCond].Keys.ToList())
            {
                var o = st.Output[isCond].Get(f)!;
                Tensor Sel(Tensor t) => t.index_select(0, idx.to(t.device)).DetachFromDisposeScope();
                var replaced = new List<Tensor>();
                if (o.MaskmemFeatures is not null) { replaced.Add(o.MaskmemFeatures); o.MaskmemFeatures = Sel(o.MaskmemFeatures); }
                if (o.MaskmemPosEnc is not null)
                {
                    replaced.Add(o.MaskmemPosEnc);
                    using var sliced = Sel(o.MaskmemPosEnc);
                    o.MaskmemPosEnc = MaskmemPosEnc(st, sliced).DetachFromDisposeScope();
                }
                if (o.PredMasks is not null) { replaced.Add(o.PredMasks); o.PredMasks = Sel(o.PredMasks); }
                replaced.Add(o.ObjPtr); o.ObjPtr = Sel(o.ObjPtr);
                replaced.Add(o.ObjectScoreLogits); o.ObjectScoreLogits = Sel(o.ObjectScoreLogits);
                if (_t.UseMemorySelection && o.IouScore is not null)
                {
                    replaced.Add(o.IouScore);
                    o.IouScore = Sel(o.IouScore);
                    o.EffIouScore = Sam3TrackerBase.CalMemScore(o.ObjectScoreLogits, o.IouScore).to(ScalarType.Float32).item<float>();
                }
                foreach (var t in replaced) t.Dispose();
                AddOutputPerObject(st, f, o, isCond);
            }
        }
        if (needOutput)
        {
            foreach (int f in inputFrames)
            {
                bool isCond = st.Objects.Any(s => s.Temp.Cond.Contains(f));
                var c = ConsolidateTempOutput(st, f, isCond, false, true);
                updated.Add((f, GetOrigVideoResOutput(st, c.PredMasksVideoRes!).DetachFromDisposeScope()));
                c.Dispose();
            }
        }
        st.Sweep();
        return (st.ObjIds.ToArray(), updated);
    }

    // =============================================================== per-frame inference

    /// <summary>Current-frame features expanded to the batch: NCHW levels (0/1 projected by conv_s0/s1) and their PE.</summary>
    private sealed record Feats(Tensor[] Fpn, Tensor[] Pos)
    {
        public (Tensor, Tensor) HighRes => (Fpn[0], Fpn[1]);
        public Tensor Top => Fpn[^1];
        public Tensor TopPos => Pos[^1];
    }

    /// <summary>_get_image_feature: backbone on the frame (cached for the most recent frame), expanded to the batch size.</summary>
    private Feats GetImageFeature(TrackerState st, int frameIdx, int batch)
    {
        if (st.Cached is null || st.Cached.FrameIndex != frameIdx)
        {
            st.Cached?.Dispose();
            st.Cached = null;
            using var scope = NewDisposeScope();
            var image = st.Frames.Normalized(frameIdx, st.Device);
            using var bb = Backbone.ForwardImage(image);
            var sam2 = bb.Sam2 ?? throw new Sam3StateException("the backbone has no SAM2 neck");
            int n = sam2.BackboneFpn.Length, levels = _hc.TrackerNumFeatureLevels;
            if (n < levels) throw new Sam3StateException($"the SAM2 neck gives {n} levels, the tracker needs {levels}");
            var fpn = sam2.BackboneFpn.Skip(n - levels).Select(t => t.alias()).ToArray();
            var pos = sam2.VisionPosEnc.Skip(n - levels).Select(t => t.alias()).ToArray();
            fpn[0] = Net.sam_mask_decoder.conv_s0!.forward(Precision.PrecisionPolicy.ToWeightDtype(fpn[0], Net.sam_mask_decoder.conv_s0!.weight!));
            fpn[1] = Net.sam_mask_decoder.conv_s1!.forward(Precision.PrecisionPolicy.ToWeightDtype(fpn[1], Net.sam_mask_decoder.conv_s1!.weight!));
            foreach (var t in fpn.Concat(pos)) t.DetachFromDisposeScope();
            st.Cached = new FrameFeatures { FrameIndex = frameIdx, Fpn = fpn, Pos = pos };
        }
        var c = st.Cached;
        return new Feats(c.Fpn.Select(t => t.expand(batch, -1, -1, -1)).ToArray(), c.Pos.Select(t => t.expand(batch, -1, -1, -1)).ToArray());
    }

    /// <summary>Outputs of one track_step (fp32, not yet compacted).</summary>
    private sealed class StepOutput : IDisposable
    {
        public required Tensor LowRes, HighRes, ObjPtr, ObjectScoreLogits;
        public Tensor? IouScore, MaskmemFeatures, MaskmemPosEnc;
        public float? EffIouScore;
        public void Dispose() { }
    }

    /// <summary>_run_single_frame_inference: track_step + compaction (bf16 memory on the storage device).</summary>
    private (TrackerOutput Output, Tensor PredMasks) RunSingleFrameInference(TrackerState st, OutputDict outputDict, int frameIdx, int batch, bool isInitCond,
        PointInputs? pointInputs, Tensor? maskInputs, bool reverse, bool runMemEncoder, Tensor? prevLogits = null, bool usePrevMemFrame = true)
    {
        var feats = GetImageFeature(st, frameIdx, batch);
        var step = TrackStep(frameIdx, isInitCond, feats, pointInputs, maskInputs, outputDict, st.NumFrames, reverse, runMemEncoder, prevLogits, usePrevMemFrame);
        var o = new TrackerOutput
        {
            MaskmemFeatures = step.MaskmemFeatures?.to(ScalarType.BFloat16).to(st.StorageDevice),
            MaskmemPosEnc = step.MaskmemPosEnc is null ? null : MaskmemPosEnc(st, step.MaskmemPosEnc),
            PredMasks = step.LowRes.to(st.StorageDevice).alias(),
            ObjPtr = step.ObjPtr,
            ObjectScoreLogits = step.ObjectScoreLogits,
        };
        if (_t.UseMemorySelection)
        {
            o.IouScore = step.IouScore;
            o.EffIouScore = step.EffIouScore;
        }
        return (o.Own(), step.LowRes);
    }

    /// <summary>_get_maskmem_pos_enc: the state keeps one [1, ...] copy; outputs hold an expand of it.</summary>
    private static Tensor MaskmemPosEnc(TrackerState st, Tensor posEnc)
    {
        if (st.MaskmemPosEnc is null) st.MaskmemPosEnc = posEnc[0..1].clone().DetachFromDisposeScope();
        return st.MaskmemPosEnc.expand(posEnc.shape[0], -1, -1, -1);
    }

    /// <summary>track_step (inference): SAM heads on memory-conditioned features (or mask as output), then optionally the memory encoder.</summary>
    private StepOutput TrackStep(int frameIdx, bool isInitCond, Feats feats, PointInputs? pointInputs, Tensor? maskInputs, OutputDict outputDict,
                                 int numFrames, bool reverse, bool runMemEncoder, Tensor? prevLogits, bool usePrevMemFrame)
    {
        if (pointInputs is not null)
        {
            Probe?.Invoke("track_step.point_inputs.point_coords", pointInputs.Coords);
            Probe?.Invoke("track_step.point_inputs.point_labels", pointInputs.Labels);
        }
        if (maskInputs is not null) Probe?.Invoke("track_step.mask_inputs", maskInputs);
        if (prevLogits is not null) Probe?.Invoke("track_step.prev_sam_mask_logits", prevLogits);

        var highRes = feats.HighRes;
        SamOut sam;
        if (maskInputs is not null)
            sam = UseMaskAsOutput(feats.Top, highRes, maskInputs);
        else
        {
            var pix = PrepareMemoryConditionedFeatures(frameIdx, isInitCond, feats, outputDict, numFrames, reverse, usePrevMemFrame);
            Tensor? samMask = null;
            if (prevLogits is not null)
            {
                if (pointInputs is null) throw new InvalidOperationException("previous mask logits need point inputs");
                samMask = prevLogits;
            }
            int numPts = pointInputs is null ? 0 : (int)pointInputs.Labels.shape[1];
            bool multimask = Net.UseMultimask(isInitCond, numPts);
            sam = ForwardSamHeads(pix, pointInputs?.Coords, pointInputs?.Labels, samMask, highRes, multimask);
        }
        var step = new StepOutput { LowRes = sam.LowRes, HighRes = sam.HighRes, ObjPtr = sam.ObjPtr, ObjectScoreLogits = sam.ObjectScore };
        if (_t.UseMemorySelection)
        {
            var iou = sam.Ious.max(-1).values;
            step.IouScore = iou;
            step.EffIouScore = Sam3TrackerBase.CalMemScore(sam.ObjectScore, iou).to(ScalarType.Float32).item<float>() /* bf16 policy: computed in bf16 as under autocast */;
        }
        if (runMemEncoder && _numMaskmem > 0)
        {
            var (f, p) = EncodeNewMemory(feats.Top, sam.HighRes, sam.ObjectScore, isMaskFromPts: pointInputs is not null);
            step.MaskmemFeatures = f;
            step.MaskmemPosEnc = p;
        }
        return step;
    }

    private sealed record SamOut(Tensor LowResMulti, Tensor HighResMulti, Tensor Ious, Tensor LowRes, Tensor HighRes, Tensor ObjPtr, Tensor ObjectScore);

    /// <summary>_forward_sam_heads (probing the mask decoder outputs).</summary>
    private SamOut ForwardSamHeads(Tensor backboneFeatures, Tensor? pointCoords, Tensor? pointLabels, Tensor? maskInputs, (Tensor, Tensor) highRes, bool multimask)
    {
        long b = backboneFeatures.shape[0];
        var device = backboneFeatures.device;
        if (pointCoords is null)
        {
            pointCoords = torch.zeros(b, 1, 2, device: device);
            pointLabels = -torch.ones(b, 1, dtype: ScalarType.Int32, device: device);
        }
        Tensor? samMask = null;
        if (maskInputs is not null)
        {
            var (mh, mw) = Net.sam_prompt_encoder.mask_input_size;
            samMask = maskInputs.shape[^2] != mh || maskInputs.shape[^1] != mw
                ? nn.functional.interpolate(maskInputs.to(ScalarType.Float32), [mh, mw], mode: InterpolationMode.Bilinear, align_corners: false, antialias: true)
                : maskInputs;
        }
        var (sparse, dense) = Net.sam_prompt_encoder.forward(pointCoords, pointLabels, null, samMask);
        var imagePe = Net.sam_prompt_encoder.GetDensePe();
        var dec = Net.sam_mask_decoder.forward(backboneFeatures, imagePe, sparse, dense, multimask, repeatImage: false, highRes);
        Probe?.Invoke("sam.mask_decoder.0", dec.Masks);
        Probe?.Invoke("sam.mask_decoder.1", dec.IouPred);
        Probe?.Invoke("sam.mask_decoder.2", dec.SamTokensOut);
        Probe?.Invoke("sam.mask_decoder.3", dec.ObjectScoreLogits);
        var appearing = dec.ObjectScoreLogits.gt(0);
        var lowMulti = torch.where(appearing[.., .., TensorIndex.None, TensorIndex.None], dec.Masks, torch.tensor(_noObj, dtype: dec.Masks.dtype, device: device))
                            .to(ScalarType.Float32);
        var highMulti = nn.functional.interpolate(lowMulti, [_s, _s], mode: InterpolationMode.Bilinear, align_corners: false);
        var token = dec.SamTokensOut[.., 0];
        Tensor low, high;
        if (multimask)
        {
            var best = dec.IouPred.argmax(-1);
            var batch = torch.arange(b, device: device);
            low = lowMulti.index([batch, best]).unsqueeze(1);
            high = highMulti.index([batch, best]).unsqueeze(1);
            if (dec.SamTokensOut.shape[1] > 1) token = dec.SamTokensOut.index([batch, best]);
        }
        else
        {
            low = lowMulti;
            high = highMulti;
        }
        var ptr = Net.obj_ptr_proj.forward(token);
        var lambda = appearing.to(ScalarType.Float32);
        ptr = lambda * ptr;
        ptr = ptr + (1 - lambda) * Net.no_obj_ptr;
        return new SamOut(lowMulti, highMulti, dec.IouPred, low, high, ptr, dec.ObjectScoreLogits);
    }

    /// <summary>_use_mask_as_output.</summary>
    private SamOut UseMaskAsOutput(Tensor backboneFeatures, (Tensor, Tensor) highRes, Tensor maskInputs)
    {
        double scale = _hc.MaskAsOutputScale, bias = _hc.MaskAsOutputBias;
        var m = maskInputs.to(ScalarType.Float32);
        var high = m * scale + bias;
        int stride = Net.backbone_stride, ratio = _lowRes / Net.sam_image_embedding_size;
        var low = nn.functional.interpolate(high, [high.shape[^2] / stride * ratio, high.shape[^1] / stride * ratio],
                                            mode: InterpolationMode.Bilinear, align_corners: false, antialias: true);
        var ious = torch.ones(m.shape[0], 1, device: m.device);
        var sam = ForwardSamHeads(backboneFeatures, null, null, Net.mask_downsample.forward(Precision.PrecisionPolicy.ToWeightDtype(m, Net.mask_downsample.weight!)), highRes, false);
        var appearing = m.flatten(1).gt(0.0).any(1).unsqueeze(-1);
        var lambda = appearing.to(ScalarType.Float32);
        var score = scale * lambda + bias;
        var ptr = lambda * sam.ObjPtr;
        ptr = ptr + (1 - lambda) * Net.no_obj_ptr;
        return new SamOut(low, high, ious, low, high, ptr, score);
    }

    /// <summary>_encode_new_memory (probing the memory encoder output before the no-object embedding is added).</summary>
    private (Tensor Features, Tensor PosEnc) EncodeNewMemory(Tensor pixFeat, Tensor predMasksHighRes, Tensor objectScore, bool isMaskFromPts)
    {
        if (Net.non_overlap_masks_for_mem_enc) predMasksHighRes = Net.ApplyNonOverlappingConstraints(predMasksHighRes);
        var maskForMem = isMaskFromPts ? predMasksHighRes.gt(0).to(ScalarType.Float32) : predMasksHighRes.sigmoid();
        if (Net.sigmoid_scale_for_mem_enc != 1.0) maskForMem = maskForMem * Net.sigmoid_scale_for_mem_enc;
        if (Net.sigmoid_bias_for_mem_enc != 0.0) maskForMem = maskForMem + Net.sigmoid_bias_for_mem_enc;
        var mem = Net.maskmem_backbone.forward(pixFeat, maskForMem, skipMaskSigmoid: true);
        Probe?.Invoke("mem_enc.vision_features", mem.VisionFeatures);
        Probe?.Invoke("mem_enc.vision_pos_enc.0", mem.VisionPosEnc);
        var appearing = objectScore.gt(0).to(ScalarType.Float32);
        var feats = mem.VisionFeatures + (1 - appearing[.., .., TensorIndex.None, TensorIndex.None])
                    * Net.no_obj_embed_spatial[.., .., TensorIndex.None, TensorIndex.None].expand(mem.VisionFeatures.shape);
        return (feats, mem.VisionPosEnc);
    }

    /// <summary>_run_memory_encoder: memory of consolidated masks (bf16 on the storage device) and the shared pos enc.</summary>
    private (Tensor Features, Tensor PosEnc) RunMemoryEncoder(TrackerState st, int frameIdx, int batch, Tensor highResMasks, Tensor objectScore, bool isMaskFromPts)
    {
        var feats = GetImageFeature(st, frameIdx, batch);
        var (f, p) = EncodeNewMemory(feats.Top, highResMasks, objectScore, isMaskFromPts);
        return (f.to(ScalarType.BFloat16).to(st.StorageDevice), MaskmemPosEnc(st, p));
    }

    // =============================================================== memory selection and attention

    /// <summary>select_closest_cond_frames: (selected in upstream dict order, unselected).</summary>
    private List<(int T, TrackerOutput O)> SelectClosestCondFrames(int frameIdx, FrameOutputs cond, out Dictionary<int, TrackerOutput> unselected)
    {
        int max = _t.MaxCondFramesInAttn;
        unselected = new Dictionary<int, TrackerOutput>();
        if (max == -1 || cond.Count <= max) return cond.Keys.Select(k => (k, cond.Get(k)!)).ToList();
        if (max < 2) throw new Sam3ConfigException("max_cond_frames_in_attn must allow 2+ conditioning frames");
        var selected = new List<int>();
        var keys = cond.Keys;
        if (_t.KeepFirstCondFrame)
        {
            int? first = keys.Where(t => t < frameIdx).Select(t => (int?)t).DefaultIfEmpty(null).Min();
            first ??= keys.Where(t => t > frameIdx).Select(t => (int?)t).DefaultIfEmpty(null).Max();
            if (first is int fi) selected.Add(fi);
        }
        int? before = keys.Where(t => t < frameIdx).Select(t => (int?)t).DefaultIfEmpty(null).Max();
        if (before is int bi && !selected.Contains(bi)) selected.Add(bi);
        int? after = keys.Where(t => t >= frameIdx).Select(t => (int?)t).DefaultIfEmpty(null).Min();
        if (after is int ai && !selected.Contains(ai)) selected.Add(ai);
        int remain = max - selected.Count;
        // Python's sorted is stable: ties keep the dict (insertion) order
        selected.AddRange(keys.Where(t => !selected.Contains(t)).OrderBy(t => Math.Abs(t - frameIdx)).Take(Math.Max(0, remain)));
        foreach (int k in keys) if (!selected.Contains(k)) unselected[k] = cond.Get(k)!;
        return selected.Select(k => (k, cond.Get(k)!)).ToList();
    }

    /// <summary>frame_filter (memory selection, SAM2Long).</summary>
    private List<int> FrameFilter(OutputDict outputDict, bool reverse, int frameIdx, int numFrames, int r)
    {
        if ((frameIdx == 0 && !reverse) || (frameIdx == numFrames - 1 && reverse)) return new List<int>();
        int maxNum = Math.Min(numFrames, _t.MaxObjPtrsInEncoder);
        int start, end, step, mustInclude;
        if (!reverse) { start = frameIdx - 1; end = 0; step = -r; mustInclude = frameIdx - 1; }
        else { start = frameIdx + 1; end = numFrames; step = r; mustInclude = frameIdx + 1; }
        var valid = new List<int>();
        // upstream scans every index of range(start, end, step); indices without a stored output are skipped, so when
        // fewer outputs are stored than the range is long (long videos, retention window) scan the stored ones only
        long span = Math.Abs((long)end - start);
        IEnumerable<int> scan = outputDict.NonCond.Count < span
            ? (step > 0 ? outputDict.NonCond.Keys.Where(i => i >= start && i < end && (i - start) % step == 0).OrderBy(i => i)
                        : outputDict.NonCond.Keys.Where(i => i <= start && i > end && (start - i) % -step == 0).OrderByDescending(i => i))
            : Range(start, end, step);
        foreach (int i in scan)
        {
            var o = outputDict.NonCond.Get(i);
            if (o is null || o.EffIouScore is null) continue;
            if (o.EffIouScore.Value > _t.MfThreshold) valid.Insert(0, i);
            if (valid.Count >= maxNum - 1) break;
        }
        if (!valid.Contains(mustInclude)) valid.Add(mustInclude);
        return valid;
    }

    /// <summary>_prepare_memory_conditioned_features → [B, C, H, W].</summary>
    private Tensor PrepareMemoryConditionedFeatures(int frameIdx, bool isInitCond, Feats feats, OutputDict outputDict, int numFrames, bool reverse, bool usePrevMemFrame)
    {
        var top = feats.Top; // [B, C, H, W]
        long b = top.shape[0], h = top.shape[2], w = top.shape[3];
        var curFeat = top.flatten(2).permute(2, 0, 1);
        var curPos = feats.TopPos.flatten(2).permute(2, 0, 1);
        if (_numMaskmem == 0) return top;
        if (isInitCond || !usePrevMemFrame)
            return (curFeat + Net.no_mem_embed).permute(1, 2, 0).view(b, _hidden, h, w);

        if (outputDict.Cond.Count == 0) throw new Sam3StateException("memory attention needs at least one conditioning frame");
        int sign = reverse ? -1 : 1;
        var selected = SelectClosestCondFrames(frameIdx, outputDict.Cond, out var unselected);
        var tPosAndPrevs = selected.Select(s => ((frameIdx - s.T) * sign, (TrackerOutput?)s.O, true)).ToList();
        int r = _t.MemoryTemporalStrideForEval;
        List<int>? valid = _t.UseMemorySelection ? FrameFilter(outputDict, reverse, frameIdx, numFrames, r) : null;
        for (int tPos = 1; tPos < _numMaskmem; tPos++)
        {
            int tRel = _numMaskmem - tPos;
            int prevIdx;
            if (valid is not null)
            {
                if (tRel > valid.Count) continue;
                prevIdx = valid[^tRel];
            }
            else if (tRel == 1) prevIdx = reverse ? frameIdx + tRel : frameIdx - tRel;
            else if (!reverse) prevIdx = FloorDiv(frameIdx - 2, r) * r - (tRel - 2) * r;
            else prevIdx = -FloorDiv(-(frameIdx + 2), r) * r + (tRel - 2) * r;
            var o = outputDict.NonCond.Get(prevIdx) ?? unselected.GetValueOrDefault(prevIdx);
            tPosAndPrevs.Add((tPos, o, false));
        }
        var prompt = new List<Tensor>();
        var promptPos = new List<Tensor>();
        int spatial = 0;
        foreach (var (tPos, prev, isCondSel) in tPosAndPrevs)
        {
            if (prev?.MaskmemFeatures is null) continue;
            prompt.Add(prev.MaskmemFeatures.to(top.device).to(ScalarType.Float32).flatten(2).permute(2, 0, 1));
            var enc = prev.MaskmemPosEnc!.to(top.device).flatten(2).permute(2, 0, 1);
            int t = isCondSel ? 0 : tPos;
            promptPos.Add(enc + Net.maskmem_tpos_enc[_numMaskmem - t - 1]);
            spatial++;
        }
        int maxPtrs = Math.Min(numFrames, _t.MaxObjPtrsInEncoder);
        var posAndPtrs = new List<(int Pos, Tensor Ptr)>();
        foreach (var (t, o) in selected)
            if (reverse ? t >= frameIdx : t <= frameIdx) posAndPtrs.Add(((frameIdx - t) * sign, o.ObjPtr));
        for (int tDiff = 1; tDiff < maxPtrs; tDiff++)
        {
            int t;
            if (valid is null)
            {
                t = reverse ? frameIdx + tDiff : frameIdx - tDiff;
                if (t < 0 || t >= numFrames) break;
            }
            else
            {
                if (-tDiff <= -valid.Count) break;
                t = valid[^tDiff];
            }
            var o = outputDict.NonCond.Get(t) ?? unselected.GetValueOrDefault(t);
            if (o is not null) posAndPtrs.Add((tDiff, o.ObjPtr));
        }
        int numPtrTokens = 0;
        if (posAndPtrs.Count > 0)
        {
            var ptrs = torch.stack(posAndPtrs.Select(p => p.Ptr.to(top.device)).ToArray(), 0); // [P, B, C]
            var objPos = Net.GetTposEnc(posAndPtrs.Select(p => p.Pos).ToArray(), maxPtrs, top.device).unsqueeze(1).expand(-1, b, -1);
            if (_memDim < _hidden)
            {
                int split = _hidden / _memDim;
                ptrs = ptrs.reshape(-1, b, split, _memDim).permute(0, 2, 1, 3).flatten(0, 1);
                objPos = objPos.repeat_interleave(split, 0);
            }
            prompt.Add(ptrs);
            promptPos.Add(objPos);
            numPtrTokens = (int)ptrs.shape[0];
        }
        if (prompt.Count == 0) throw new Sam3StateException($"frame {frameIdx}: no memory to attend to");
        var promptT = torch.cat(prompt, 0);
        var promptPosT = torch.cat(promptPos, 0);
        Probe?.Invoke("mem_attn_in.prompt", promptT);
        Probe?.Invoke("mem_attn_in.prompt_pos", promptPosT);
        Probe?.Invoke("mem_attn_in.src.0", curFeat);
        Probe?.Invoke("mem_attn_in.src_pos.0", curPos);
        MemoryAttentionObserved?.Invoke(new MemoryAttentionInfo((int)promptT.shape[0], numPtrTokens, spatial));
        var outp = Net.transformer.encoder.forward(curFeat, promptT, curPos, promptPosT, numPtrTokens);
        Probe?.Invoke("mem_attn.memory", outp.Memory);
        if (outp.PosEmbed is not null) Probe?.Invoke("mem_attn.pos_embed", outp.PosEmbed);
        return outp.Memory.permute(1, 2, 0).reshape(b, _hidden, h, w);
    }

    private static IEnumerable<int> Range(int start, int end, int step)
    {
        for (int i = start; step > 0 ? i < end : i > end; i += step) yield return i;
    }

    private static int FloorDiv(int a, int b) => (int)Math.Floor((double)a / b);
}
