using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Video;

/// <summary>
/// The tracker entry points the SAM3 video pipeline (<see cref="Sam3VideoEngine"/>) needs beyond the SAM2-style API:
/// features supplied by the detector's backbone (upstream's shared <c>feature_cache</c>), one-frame propagation without
/// memory encoding, and memory encoding of externally post-processed masks (<c>_tracker_update_memories</c>).
/// </summary>
internal sealed partial class TrackerPredictor
{
    /// <summary>
    /// Makes <paramref name="features"/> the state's cached features of their frame (upstream: the tracker state's
    /// <c>cached_features</c> is the video model's <c>feature_cache</c>). The state holds its own handles to the tensors.
    /// </summary>
    public void UseFrameFeatures(TrackerState st, FrameFeatures features)
    {
        CheckState(st);
        ArgumentNullException.ThrowIfNull(features);
        st.Cached?.Dispose();
        st.Cached = new FrameFeatures
        {
            FrameIndex = features.FrameIndex,
            Fpn = features.Fpn.Select(t => t.alias().DetachFromDisposeScope()).ToArray(),
            Pos = features.Pos.Select(t => t.alias().DetachFromDisposeScope()).ToArray(),
        };
    }

    /// <summary>
    /// Frame features as the video detector hands them to the tracker (<c>run_backbone_and_detection</c>): the SAM2 neck
    /// levels (rounded to bfloat16 by the multi-GPU gather path, upstream quirk), levels 0/1 projected by conv_s0/conv_s1.
    /// The result owns its tensors.
    /// </summary>
    public FrameFeatures FeaturesFromSam2Neck(int frameIdx, IReadOnlyList<Tensor> sam2Fpn, IReadOnlyList<Tensor> sam2Pos, bool roundToBFloat16 = true)
    {
        using var scope = NewDisposeScope();
        int n = sam2Fpn.Count, levels = _hc.TrackerNumFeatureLevels;
        if (n < levels) throw new Sam3StateException($"the SAM2 neck gives {n} levels, the tracker needs {levels}");
        // bf16 policy: the gather path's bf16 tensors are kept as they are (as under autocast, where the tracker gets
        // them in bf16); fp32 models keep the rounded values in fp32
        bool policy = Net.sam_mask_decoder.conv_s0!.weight!.dtype == ScalarType.BFloat16;
        var fpn = sam2Fpn.Skip(n - levels).Select(t => !roundToBFloat16 ? t.alias()
                                                       : policy ? t.to(ScalarType.BFloat16) : t.to(ScalarType.BFloat16).to(ScalarType.Float32)).ToArray();
        var pos = sam2Pos.Skip(sam2Pos.Count - levels).Select(t => t.alias()).ToArray();
        fpn[0] = Net.sam_mask_decoder.conv_s0!.forward(Precision.PrecisionPolicy.ToWeightDtype(fpn[0], Net.sam_mask_decoder.conv_s0!.weight!));
        fpn[1] = Net.sam_mask_decoder.conv_s1!.forward(Precision.PrecisionPolicy.ToWeightDtype(fpn[1], Net.sam_mask_decoder.conv_s1!.weight!));
        foreach (var t in fpn.Concat(pos)) t.DetachFromDisposeScope();
        return new FrameFeatures { FrameIndex = frameIdx, Fpn = fpn, Pos = pos };
    }

    /// <summary>
    /// <c>propagate_in_video(st, start_frame_idx=f, max_frame_num_to_track=0, reverse, run_mem_encoder)</c> without preflight:
    /// the stored output for a prompted frame, tracking otherwise. Returns caller-owned low-res logits [O,1,4N,4N] and
    /// object-score logits [O,1].
    /// </summary>
    public (IReadOnlyList<int> ObjIds, Tensor LowRes, Tensor Scores) PropagateOneFrame(TrackerState st, int frameIdx, bool reverse, bool runMemEncoder)
    {
        CheckState(st);
        CheckFrame(st, frameIdx);
        if (st.Output.Cond.Count == 0) throw new Sam3StateException("No points are provided; please add points first");
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        int b = st.NumObjects;
        bool clearNonCond = _t.ClearNonCondMemAroundInput && (_t.ClearNonCondMemForMultiObj || b <= 1);
        var order = ProcessingOrder(st, frameIdx, 0, reverse).ToList();
        if (order.Count != 1 || order[0] != frameIdx)
            throw new Sam3StateException($"one-frame propagation from frame {frameIdx} would process [{string.Join(",", order)}]");
        TrackerOutput current;
        Tensor predMasks;
        bool isCond;
        if (st.ConsolidatedCond.Contains(frameIdx))
        {
            isCond = true;
            current = st.Output.Cond.Get(frameIdx)!;
            predMasks = current.PredMasks!;
            if (clearNonCond) ClearNonCondMemAroundInput(st, frameIdx);
        }
        else if (st.ConsolidatedNonCond.Contains(frameIdx))
        {
            isCond = false;
            current = st.Output.NonCond.Get(frameIdx)!;
            predMasks = current.PredMasks!;
        }
        else
        {
            isCond = false;
            (current, predMasks) = RunSingleFrameInference(st, st.Output, frameIdx, b, false, null, null, reverse, runMemEncoder);
            SetOutput(st, st.Output.NonCond, frameIdx, current);
            TrimNonCond(st, frameIdx);
        }
        AddOutputPerObject(st, frameIdx, current, isCond);
        st.FramesAlreadyTracked[frameIdx] = reverse;
        var lowRes = predMasks.to(st.Device).clone().DetachFromDisposeScope();
        var scores = current.ObjectScoreLogits.to(ScalarType.Float32).clone().DetachFromDisposeScope(); // obj_scores.float() (sam3_video_base.py:433)
        var ids = st.ObjIds.ToArray();
        st.Sweep();
        return (ids, lowRes, scores);
    }

    /// <summary>
    /// The per-state part of <c>Sam3VideoBase._tracker_update_memories</c>: encodes the memory of frame
    /// <paramref name="frameIdx"/> from <paramref name="highResMasks"/> [O,1,h,w] (already post-processed by the caller) and
    /// <paramref name="objectScoreLogits"/> [O,1] (not binarised: <c>is_mask_from_pts=False</c>), and stores it in the
    /// frame's conditioning and/or non-conditioning output and the per-object slices.
    /// </summary>
    public void UpdateMemories(TrackerState st, int frameIdx, Tensor highResMasks, Tensor objectScoreLogits)
    {
        CheckState(st);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        int b = st.NumObjects;
        if (highResMasks.shape[0] != b) throw new ArgumentException($"{highResMasks.shape[0]} masks for a state of {b} objects", nameof(highResMasks));
        var (feats, pos) = RunMemoryEncoder(st, frameIdx, b, highResMasks, objectScoreLogits, isMaskFromPts: false);
        foreach (bool isCond in new[] { true, false })
        {
            var o = st.Output[isCond].Get(frameIdx);
            if (o is null) continue;
            o.MaskmemFeatures?.Dispose();
            o.MaskmemPosEnc?.Dispose();
            o.MaskmemFeatures = feats.alias().DetachFromDisposeScope();
            o.MaskmemPosEnc = pos.alias().DetachFromDisposeScope();
            AddOutputPerObject(st, frameIdx, o, isCond);
        }
        st.Sweep();
    }
}
