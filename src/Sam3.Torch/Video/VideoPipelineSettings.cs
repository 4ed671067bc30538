using Sam3.Torch.Config;

namespace Sam3.Torch.Video;

/// <summary>
/// Heuristics of the SAM3 video pipeline (upstream <c>Sam3VideoBase.__init__</c> arguments). The builder's values come
/// from the configuration's <c>video</c> section (<see cref="VideoConfig"/>); the remaining ones are the class defaults
/// the builder does not override. <see cref="WithoutTemporalDisambiguation"/> is the builder's ablation variant
/// (<c>apply_temporal_disambiguation=False</c>).
/// </summary>
internal sealed record VideoPipelineSettings
{
    public double ScoreThresholdDetection { get; init; } = 0.5;
    public double DetNmsThresh { get; init; } = 0.1;
    public double AssocIouThresh { get; init; } = 0.1;
    /// <summary>Class default (not a builder argument): a masklet counts as matched above this IoU.</summary>
    public double TrkAssocIouThresh { get; init; } = 0.5;
    public double NewDetThresh { get; init; } = 0.7;
    public int HotstartDelay { get; init; } = 15;
    public int HotstartUnmatchThresh { get; init; } = 8;
    public int HotstartDupThresh { get; init; } = 8;
    public bool SuppressUnmatchedOnlyWithinHotstart { get; init; } = true;
    public int InitTrkKeepAlive { get; init; } = 30;
    public int MaxTrkKeepAlive { get; init; } = 30;
    public int MinTrkKeepAlive { get; init; } = -1;
    public double SuppressOverlappingBasedOnRecentOcclusionThreshold { get; init; } = 0.7;
    public bool DecreaseTrkKeepAliveForEmptyMasklets { get; init; } = false;
    /// <summary>Class default: Hungarian one-to-one matching of masklets (needs an assignment solver; false upstream).</summary>
    public bool O2oMatchingMaskletsEnable { get; init; } = false;
    public bool SuppressDetCloseToBoundary { get; init; } = false;
    /// <summary>Margin (fraction of the image) of <c>_suppress_detections_close_to_boundary</c>.</summary>
    public double DetBoundaryMargin { get; init; } = 0.025;
    public int FillHoleArea { get; init; } = 16;
    /// <summary>Maximum number of tracked objects (≤ 0: no limit, upstream 10000).</summary>
    public int MaxNumObjects { get; init; } = -1;
    public int ReconditionEveryNthFrame { get; init; } = 16;
    public bool MaskletConfirmationEnable { get; init; } = false;
    public int MaskletConfirmationConsecutiveDetThresh { get; init; } = 3;
    /// <summary>Class default 0 (off): recondition when the detection/tracker box IoU is below this.</summary>
    public double ReconstructionBboxIouThresh { get; init; } = 0.0;
    public double ReconstructionBboxDetScore { get; init; } = 0.0;

    // constants inside upstream methods
    /// <summary><c>_associate_det_trk</c>: HIGH_CONF_THRESH / HIGH_IOU_THRESH for the reconditioning candidates.</summary>
    public double HighConfThresh { get; init; } = 0.8;
    public double HighIouThresh { get; init; } = 0.8;
    /// <summary><c>_recondition_masklets</c>: minimum tracker object-score logit (compared as a logit, upstream quirk).</summary>
    public double ReconditionMinObjectScore { get; init; } = 0.8;
    /// <summary><c>_suppress_shrinked_masks</c>: a mask whose area shrinks below this ratio under the non-overlap constraint is suppressed.</summary>
    public double ShrinkThreshold { get; init; } = 0.3;
    /// <summary>Logit given to suppressed masks (NO_OBJ_LOGIT) and shrunk masks.</summary>
    public double SuppressedMaskLogit { get; init; } = -10.0;
    /// <summary>Object-score proxy of the memory encoder in <c>_tracker_update_memories</c> (±this by mask area).</summary>
    public double MemoryObjectScoreProxy { get; init; } = 10.0;
    /// <summary>Subtracted from the logits of detections removed by NMS.</summary>
    public double NmsSuppressedLogitOffset { get; init; } = 1e4;
    /// <summary>Subtracted from the probabilities when new detections are not allowed.</summary>
    public double DisallowedDetProbOffset { get; init; } = 1e8;
    /// <summary>Score recorded for objects removed by the hot-start heuristics.</summary>
    public double RemovedObjectScore { get; init; } = -1e4;

    public static VideoPipelineSettings FromConfig(VideoConfig v) => new()
    {
        ScoreThresholdDetection = v.ScoreThresholdDetection,
        AssocIouThresh = v.AssocIouThresh,
        DetNmsThresh = v.DetNmsThresh,
        NewDetThresh = v.NewDetThresh,
        HotstartDelay = v.HotstartDelay,
        HotstartUnmatchThresh = v.HotstartUnmatchThresh,
        HotstartDupThresh = v.HotstartDupThresh,
        SuppressUnmatchedOnlyWithinHotstart = v.SuppressUnmatchedOnlyWithinHotstart,
        MinTrkKeepAlive = v.MinTrkKeepAlive,
        MaxTrkKeepAlive = v.MaxTrkKeepAlive,
        InitTrkKeepAlive = v.InitTrkKeepAlive,
        SuppressOverlappingBasedOnRecentOcclusionThreshold = v.SuppressOverlappingBasedOnRecentOcclusionThreshold,
        SuppressDetCloseToBoundary = v.SuppressDetCloseToBoundary,
        FillHoleArea = v.FillHoleArea,
        ReconditionEveryNthFrame = v.ReconditionEveryNthFrame,
        MaskletConfirmationEnable = v.MaskletConfirmationEnable,
        DecreaseTrkKeepAliveForEmptyMasklets = v.DecreaseTrkKeepAliveForEmptyMasklets,
    };

    /// <summary>The builder's <c>apply_temporal_disambiguation=False</c> variant: no hot-start, no reconditioning.</summary>
    public VideoPipelineSettings WithoutTemporalDisambiguation() => this with
    {
        HotstartDelay = 0,
        HotstartUnmatchThresh = 0,
        HotstartDupThresh = 0,
        ReconditionEveryNthFrame = 0,
    };

    public void Validate()
    {
        if (HotstartDelay > 0 && (HotstartUnmatchThresh > HotstartDelay || HotstartDupThresh > HotstartDelay))
            throw new Sam3ConfigException($"hotstart_unmatch_thresh ({HotstartUnmatchThresh}) and hotstart_dup_thresh ({HotstartDupThresh}) must not exceed hotstart_delay ({HotstartDelay})");
        if (O2oMatchingMaskletsEnable) throw new Sam3ConfigException("o2o_matching_masklets_enable (Hungarian matching) is not implemented");
    }
}
