using Sam3.Torch.Config;

namespace Sam3.Torch.Video;

/// <summary>
/// Heuristics of the SAM3 video pipeline (upstream <c>Sam3VideoBase.__init__</c> arguments). The builder's values come
/// from the configuration's <c>video</c> section (<see cref="VideoConfig"/>, which alone holds their defaults; a settings
/// object can only be made from one); the remaining ones are the class defaults the builder does not override (not in
/// config.json). <see cref="WithoutTemporalDisambiguation"/> is the builder's ablation variant
/// (<c>apply_temporal_disambiguation=False</c>).
/// </summary>
internal sealed record VideoPipelineSettings
{
    public double ScoreThresholdDetection { get; init; }
    public double DetNmsThresh { get; init; }
    public double AssocIouThresh { get; init; }
    /// <summary>Class default (not a builder argument): a masklet counts as matched above this IoU.</summary>
    public double TrkAssocIouThresh { get; init; } = 0.5;
    public double NewDetThresh { get; init; }
    public int HotstartDelay { get; init; }
    public int HotstartUnmatchThresh { get; init; }
    public int HotstartDupThresh { get; init; }
    public bool SuppressUnmatchedOnlyWithinHotstart { get; init; }
    public int InitTrkKeepAlive { get; init; }
    public int MaxTrkKeepAlive { get; init; }
    public int MinTrkKeepAlive { get; init; }
    public double SuppressOverlappingBasedOnRecentOcclusionThreshold { get; init; }
    public bool DecreaseTrkKeepAliveForEmptyMasklets { get; init; }
    /// <summary>Class default: Hungarian one-to-one matching of masklets (needs an assignment solver; false upstream).</summary>
    public bool O2oMatchingMaskletsEnable { get; init; } = false;
    public bool SuppressDetCloseToBoundary { get; init; }
    /// <summary>Margin (fraction of the image) of <c>_suppress_detections_close_to_boundary</c>.</summary>
    public double DetBoundaryMargin { get; init; } = 0.025;
    public int FillHoleArea { get; init; }
    /// <summary>Maximum number of tracked objects (≤ 0: no limit, upstream 10000).</summary>
    public int MaxNumObjects { get; init; } = -1;
    public int ReconditionEveryNthFrame { get; init; }
    public bool MaskletConfirmationEnable { get; init; }
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

    /// <summary>The builder's values: every field of the configuration's <c>video</c> section (the only place their defaults live).</summary>
    public VideoPipelineSettings(VideoConfig v)
    {
        ArgumentNullException.ThrowIfNull(v);
        ScoreThresholdDetection = v.ScoreThresholdDetection;
        AssocIouThresh = v.AssocIouThresh;
        DetNmsThresh = v.DetNmsThresh;
        NewDetThresh = v.NewDetThresh;
        HotstartDelay = v.HotstartDelay;
        HotstartUnmatchThresh = v.HotstartUnmatchThresh;
        HotstartDupThresh = v.HotstartDupThresh;
        SuppressUnmatchedOnlyWithinHotstart = v.SuppressUnmatchedOnlyWithinHotstart;
        MinTrkKeepAlive = v.MinTrkKeepAlive;
        MaxTrkKeepAlive = v.MaxTrkKeepAlive;
        InitTrkKeepAlive = v.InitTrkKeepAlive;
        SuppressOverlappingBasedOnRecentOcclusionThreshold = v.SuppressOverlappingBasedOnRecentOcclusionThreshold;
        SuppressDetCloseToBoundary = v.SuppressDetCloseToBoundary;
        FillHoleArea = v.FillHoleArea;
        ReconditionEveryNthFrame = v.ReconditionEveryNthFrame;
        MaskletConfirmationEnable = v.MaskletConfirmationEnable;
        DecreaseTrkKeepAliveForEmptyMasklets = v.DecreaseTrkKeepAliveForEmptyMasklets;
    }

    public static VideoPipelineSettings FromConfig(VideoConfig v) => new(v);

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
