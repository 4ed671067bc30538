using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Processing;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Video;

/// <summary>Per-frame statistics (upstream <c>frame_stats</c>).</summary>
internal readonly record struct VideoFrameStats(int NumObjTracked, int NumObjDropped);

/// <summary>
/// One post-processed frame (upstream <c>_postprocess_output</c>): object ids, detection probabilities, normalised xywh
/// boxes [O,4] and binary masks [O,H,W] at video resolution. Caller-owned.
/// </summary>
internal sealed class VideoFrameOutput : IDisposable
{
    public required int FrameIndex { get; init; }
    public required long[] ObjIds { get; init; }
    public required float[] Probs { get; init; }
    public required Tensor BoxesXywh { get; init; }
    public required Tensor Masks { get; init; }
    public VideoFrameStats? Stats { get; init; }

    public void Dispose()
    {
        BoxesXywh.Dispose();
        Masks.Dispose();
    }
}

/// <summary>Raw per-frame output of <c>_run_single_frame_inference</c> (video-resolution masks [1,H,W] per object, owned).</summary>
internal sealed class RawFrameOutput : IDisposable
{
    public required SortedDictionary<int, Tensor> ObjIdToMask { get; init; }
    public required Dictionary<int, float> ObjIdToScore { get; init; }
    public required Dictionary<int, float> ObjIdToTrackerScore { get; init; }
    public HashSet<int> RemovedObjIds { get; init; } = new();
    public HashSet<int> SuppressedObjIds { get; init; } = new();
    public List<int> UnconfirmedObjIds { get; init; } = new();
    public VideoFrameStats? Stats { get; init; }

    public void Dispose()
    {
        foreach (var t in ObjIdToMask.Values) t.Dispose();
        ObjIdToMask.Clear();
    }
}

/// <summary>Detector outputs of one frame kept in the look-ahead buffer (upstream <c>multigpu_buffer</c>, one GPU).</summary>
internal sealed class DetectorFrame : IDisposable
{
    /// <summary>[Q] joint logits of the (single) prompt, NMS-suppressed ones lowered by 1e4.</summary>
    public required Tensor PredLogits { get; init; }
    public required Tensor PredBoxesXyxy { get; init; }
    /// <summary>[Q, h, w] mask logits.</summary>
    public required Tensor PredMasks { get; init; }
    /// <summary>SAM2-neck features as the tracker sees them.</summary>
    public required FrameFeatures Tracker { get; init; }

    public void Dispose()
    {
        PredLogits.Dispose();
        PredBoxesXyxy.Dispose();
        PredMasks.Dispose();
        Tracker.Dispose();
    }
}

/// <summary>Masklet metadata (upstream <c>tracker_metadata</c> + <c>rank0_metadata</c>, one GPU).</summary>
internal sealed class MaskletMetadata
{
    public List<int> ObjIds { get; set; } = new();
    public int MaxObjId { get; set; } = -1;
    public Dictionary<int, float> ObjIdToScore { get; } = new();
    public Dictionary<int, Dictionary<int, float>> TrackerScoreFrameWise { get; } = new();
    public Dictionary<int, long> ObjIdToLastOccluded { get; set; } = new();
    public Dictionary<int, int> ObjFirstFrameIdx { get; } = new();
    public Dictionary<int, List<int>> UnmatchedFrameInds { get; } = new();
    public Dictionary<int, int> TrkKeepAlive { get; } = new();
    public List<((int First, int Obj) Key, List<int> Frames)> OverlapPairToFrameInds { get; } = new();
    public HashSet<int> RemovedObjIds { get; } = new();
    public Dictionary<int, HashSet<int>> SuppressedObjIds { get; } = new();
    /// <summary>Masklet confirmation (only with <see cref="VideoPipelineSettings.MaskletConfirmationEnable"/>): status 1 = confirmed.</summary>
    public List<int> ConfirmationStatus { get; set; } = new();
    public List<int> ConsecutiveDetNum { get; set; } = new();

    public Dictionary<int, float> TrackerScores(int frame)
    {
        if (!TrackerScoreFrameWise.TryGetValue(frame, out var d)) TrackerScoreFrameWise[frame] = d = new();
        return d;
    }

    public HashSet<int> Suppressed(int frame)
    {
        if (!SuppressedObjIds.TryGetValue(frame, out var s)) SuppressedObjIds[frame] = s = new();
        return s;
    }

    public List<int> OverlapFrames(int first, int obj)
    {
        foreach (var (k, f) in OverlapPairToFrameInds) if (k == (first, obj)) return f;
        var list = new List<int>();
        OverlapPairToFrameInds.Add(((first, obj), list));
        return list;
    }

    public int KeepAlive(int obj) => TrkKeepAlive.TryGetValue(obj, out int v) ? v : 0;
}

/// <summary>The session state of the video predictor (upstream <c>inference_state</c> of <c>Sam3VideoInference</c>).</summary>
internal sealed class VideoInferenceState : IDisposable
{
    public required VideoPredictorFrames Frames { get; init; }
    public int NumFrames => Frames.Count;
    public int OrigHeight => Frames.VideoHeight;
    public int OrigWidth => Frames.VideoWidth;
    public bool IsImageOnly { get; init; }
    public string? TextPrompt { get; set; }
    /// <summary>find_text_batch[0]: the text prompt or the placeholder; [1] = "visual".</summary>
    public string TextSlot0 { get; set; } = Sam3VideoEngine.TextPlaceholder;
    /// <summary>find_inputs[t].text_ids (0 = text, 1 = visual).</summary>
    public int TextId { get; set; }
    public FrameMap<bool> HasOutputs { get; } = new();
    public FrameMap<Prompt?> PerFrameGeometricPrompt { get; } = new();
    public FrameMap<bool> HasVisualPrompt { get; } = new();
    /// <summary>Frames pushed one at a time (<see cref="PushFrameSource"/>): the detector looks ahead only at frames already pushed.</summary>
    public bool IsFrameAvailable(int frame) => Frames.Source is not PushFrameSource push || push.IsAvailable(frame);
    public List<TrackerState> TrackerStates { get; } = new();
    public MaskletMetadata? Metadata { get; set; }
    // feature_cache
    public (string, string)? TextKey { get; set; }
    public TextEncoderOutputOwned? Text { get; set; }
    public SortedDictionary<int, DetectorFrame> DetBuffer { get; } = new();
    public Dictionary<int, FrameFeatures> TrackerFeatures { get; } = new();
    public (int? MaxFrames, int? StartFrame)? TrackingBounds { get; set; }
    /// <summary>cached_frame_outputs: frame → object → mask [1,H,W] bool (own handles).</summary>
    public Dictionary<int, SortedDictionary<int, Tensor>> CachedFrameOutputs { get; } = new();
    public List<(string Type, int? Frame, List<int>? ObjIds)> ActionHistory { get; } = new();
    public bool IsDisposed { get; private set; }

    public void ClearFeatureCache()
    {
        Text?.Dispose();
        Text = null;
        TextKey = null;
        foreach (var d in DetBuffer.Values) d.Dispose();
        DetBuffer.Clear();
        foreach (var f in TrackerFeatures.Values) f.Dispose();
        TrackerFeatures.Clear();
        TrackingBounds = null;
    }

    public void ClearCachedOutputs()
    {
        foreach (var d in CachedFrameOutputs.Values) foreach (var t in d.Values) t.Dispose();
        CachedFrameOutputs.Clear();
    }

    /// <summary>Forgets the visual prompts, disposing their tensors (they were detached from their scope when stored).</summary>
    public void ClearGeometricPrompts()
    {
        foreach (int f in PerFrameGeometricPrompt.Frames) PerFrameGeometricPrompt[f]?.DisposeTensors();
        PerFrameGeometricPrompt.Clear();
    }

    public void ClearTrackerStates()
    {
        foreach (var s in TrackerStates) s.Dispose();
        TrackerStates.Clear();
    }

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        ClearTrackerStates();
        ClearFeatureCache();
        ClearCachedOutputs();
        ClearGeometricPrompts();
        Frames.Dispose();
    }
}

/// <summary>Text features of the find_text_batch (owned).</summary>
internal sealed class TextEncoderOutputOwned(Tensor languageFeatures, Tensor languageMask) : IDisposable
{
    public Tensor LanguageFeatures { get; } = languageFeatures;
    public Tensor LanguageMask { get; } = languageMask;

    public void Dispose()
    {
        LanguageFeatures.Dispose();
        LanguageMask.Dispose();
    }
}

/// <summary>
/// The SAM3 video pipeline (upstream <c>Sam3VideoBase</c> + <c>Sam3VideoInference</c>, one device): detection on every
/// frame with the video detector's joint scores and mask NMS, association of detections with the tracked masklets by
/// mask IoU, new-track threshold, hot-start delay with its unmatch/duplicate removal and keep-alive counters, periodic
/// reconditioning of masklets on confident detections, occlusion-based suppression, memory encoding with the pairwise
/// area-shrinkage suppression, hole filling, and the output post-processing (object-wise non-overlap). Every step follows
/// the reference call by call at fp32 (shared/docs/sam3-architecture.md §3.4); quirks are named where they are
/// reproduced. Not thread-safe per state; the engine itself holds no per-session data.
/// </summary>
internal sealed partial class Sam3VideoEngine
{
    public const string TextPlaceholder = "<text placeholder>";
    public const string VisualText = "visual";
    public const int TextIdForText = 0, TextIdForVisual = 1;

    public Sam3ImageModel Detector { get; }
    public TrackerPredictor Tracker { get; }
    public ClipBpeTokenizer Tokenizer { get; }
    public Sam3Config Config { get; }
    public VideoPipelineSettings Settings
    {
        get => _settings;
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            value.Validate();
            _settings = value;
        }
    }
    private VideoPipelineSettings _settings = null!;

    /// <summary>Receives (frame, name, tensor) for detector runs ("det.grounding.pred_logits", "det.geo.out.0", ...).</summary>
    public Action<int, string, Tensor>? DetectorProbe { get; set; }
    /// <summary>Receives (frame, name, tensor) from the output post-processing ("nonoverlap_in.masks", "nonoverlap_in.scores").</summary>
    public Action<int, string, Tensor>? OutputProbe { get; set; }

    private readonly int _inputMaskSize;
    private readonly int[] _interpolSize;

    /// <param name="detector">An image model built with <see cref="Modeling.Heads.GroundingOptions.VideoDetector"/> and the tracker heads.</param>
    /// <param name="tokenizer">The CLIP BPE tokenizer.</param>
    /// <param name="settings">Pipeline heuristics (default: the configuration's video section, or its ablation variant).</param>
    /// <param name="applyTemporalDisambiguation">False = the builder's ablation variant: no hot-start, no reconditioning,
    /// no tracker memory selection.</param>
    public Sam3VideoEngine(Sam3ImageModel detector, ClipBpeTokenizer tokenizer, VideoPipelineSettings? settings = null, bool applyTemporalDisambiguation = true)
    {
        Detector = detector ?? throw new ArgumentNullException(nameof(detector));
        Tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        if (!detector.Grounding.Options.SuperviseJointBoxScores)
            throw new Sam3ConfigException("the video pipeline needs the video detector's joint scores (load the model with GroundingOptions.VideoDetector)");
        var cfg = detector.Config;
        if (!applyTemporalDisambiguation) cfg = cfg with { Tracker = cfg.Tracker with { UseMemorySelection = false } };
        Tracker = new TrackerPredictor(detector.Tracker ?? throw new Sam3StateException("the model was loaded without the tracker heads"), detector.backbone, cfg);
        Config = cfg;
        var defaults = VideoPipelineSettings.FromConfig(Config.Video);
        Settings = settings ?? (applyTemporalDisambiguation ? defaults : defaults.WithoutTemporalDisambiguation());
        _inputMaskSize = Tracker.Net.input_mask_size;
        _interpolSize = Config.Tracker.MemoryEncoder.MaskDownsampler.InterpolSize;
    }

    private Device ModelDevice => Tracker.Net.no_mem_embed.device;

    // =============================================================== session state

    /// <summary>init_state over a frame source (the state owns it).</summary>
    /// <param name="source">The video (the state owns it).</param>
    /// <param name="isImageOnly">A single image treated as a video (no object limit applies).</param>
    /// <param name="loader">Frame preprocessing; default: upstream's choice for the source (cv2 quirk for video files).</param>
    public VideoInferenceState InitState(IFrameSource source, bool isImageOnly = false, VideoFrameLoader? loader = null)
    {
        var frames = new VideoPredictorFrames(source, Config.ImageSize, Config.ImageMean, Config.ImageStd, loader: loader);
        return new VideoInferenceState
        {
            Frames = frames,
            IsImageOnly = isImageOnly,
        };
    }

    /// <summary>reset_state: back to right after init_state (frames kept).</summary>
    public void ResetState(VideoInferenceState s)
    {
        CheckState(s);
        s.TextSlot0 = TextPlaceholder;
        s.TextPrompt = null;
        s.TextId = 0;
        s.HasOutputs.Clear();
        s.ClearGeometricPrompts();
        s.HasVisualPrompt.Clear();
        s.ClearTrackerStates();
        s.Metadata = null;
        s.ClearFeatureCache();
        s.ClearCachedOutputs();
        s.ActionHistory.Clear();
    }

    private static void CheckState(VideoInferenceState s)
    {
        ArgumentNullException.ThrowIfNull(s);
        if (s.IsDisposed) throw new Sam3StateException("the video session has been closed");
    }

    // =============================================================== prompts

    /// <summary>
    /// add_prompt with text and/or boxes (<c>Sam3VideoInference.add_prompt</c>): a semantic prompt starts over (reset_state),
    /// then runs the pipeline on <paramref name="frameIdx"/> only. Boxes are normalised xywh; the first box on a frame
    /// without outputs is the visual prompt (exactly one box then).
    /// </summary>
    public VideoFrameOutput AddPrompt(VideoInferenceState s, int frameIdx, string? text = null, IReadOnlyList<(float X, float Y, float W, float H)>? boxesXywh = null,
                                      IReadOnlyList<bool>? boxLabels = null)
    {
        CheckState(s);
        if (text is null && boxesXywh is null) throw new Sam3PromptException("at least one type of prompt (text, boxes) must be provided");
        if ((uint)frameIdx >= (uint)s.NumFrames) throw new ArgumentOutOfRangeException(nameof(frameIdx), frameIdx, $"frame index outside [0, {s.NumFrames - 1}]");
        if ((boxesXywh is null) != (boxLabels is null)) throw new Sam3PromptException("boxes need labels (one per box)");
        ResetState(s);
        if (text is not null && text != VisualText)
        {
            s.TextPrompt = text;
            s.TextSlot0 = text;
            s.TextId = TextIdForText;
        }
        else
        {
            s.TextPrompt = null;
            s.TextSlot0 = TextPlaceholder;
            s.TextId = TextIdForVisual;
        }
        if (boxesXywh is not null)
        {
            if (boxesXywh.Count == 0 || boxLabels!.Count != boxesXywh.Count) throw new Sam3PromptException($"{boxesXywh.Count} boxes with {boxLabels!.Count} labels");
            foreach (var b in boxesXywh)
            {
                float cx = b.X + b.W / 2f, cy = b.Y + b.H / 2f;
                if (b.X < 0 || b.Y < 0 || b.W < 0 || b.H < 0 || b.X > 1 || b.Y > 1 || b.W > 1 || b.H > 1 || cx > 1 || cy > 1)
                    throw new Sam3PromptException($"box ({b.X}, {b.Y}, {b.W}, {b.H}) must be normalised xywh inside [0, 1]");
            }
            // _get_visual_prompt: a frame without outputs takes its first box as the visual prompt
            bool isNewVisual = !s.HasVisualPrompt[frameIdx] && !s.HasOutputs[frameIdx];
            if (isNewVisual)
            {
                if (boxesXywh.Count != 1) throw new Sam3PromptException($"a visual prompt (box as the initial prompt) takes exactly one box, got {boxesXywh.Count}");
                var b = boxesXywh[0];
                // box_xywh_to_cxcywh in float32
                using var scope = NewDisposeScope();
                var xywh = torch.tensor(new[] { b.X, b.Y, b.W, b.H }, new long[] { 1, 4 });
                var cxcywh = BoxOps.XywhToCxcywh(xywh);
                var prompt = new Prompt(boxEmbeddings: cxcywh[TensorIndex.None, 0..1, ..].to(ModelDevice).DetachFromDisposeScope(),
                                        boxLabels: torch.tensor(new long[] { boxLabels[0] ? 1 : 0 }, new long[] { 1, 1 }).to(ModelDevice).DetachFromDisposeScope());
                // the prompt outlives this scope (it is used on every run of the detector on this frame)
                foreach (var t in new[] { prompt.BoxEmbeddings, prompt.BoxMask, prompt.BoxLabels, prompt.PointEmbeddings, prompt.PointMask, prompt.PointLabels })
                    t.DetachFromDisposeScope();
                s.PerFrameGeometricPrompt[frameIdx] = prompt;
                s.HasVisualPrompt[frameIdx] = true;
            }
            // upstream: further boxes (geometric refinement) are stripped and not used by this code path
        }
        using var raw = RunSingleFrameInference(s, frameIdx, reverse: false);
        return PostprocessOutput(s, frameIdx, raw, null, null, null);
    }

    // =============================================================== propagation

    /// <summary>_get_processing_order of the video model.</summary>
    public (List<int> Order, int EndFrame) ProcessingOrder(VideoInferenceState s, int? startFrameIdx, int? maxFrameNumToTrack, bool reverse)
    {
        if (s.HasOutputs.Count == 0 && startFrameIdx is null)
            throw new Sam3StateException("No prompts are received on any frames. Please add prompt on at least one frame before propagation.");
        int start = startFrameIdx ?? s.HasOutputs.First();
        if (start < 0 || start >= s.NumFrames) throw new ArgumentOutOfRangeException(nameof(startFrameIdx), start, $"start frame outside [0, {s.NumFrames - 1}]");
        int max = maxFrameNumToTrack ?? s.NumFrames;
        var order = new List<int>();
        int end;
        if (reverse)
        {
            end = Math.Max(start - max, 0);
            for (int f = start - 1; f > end - 1; f--) order.Add(f);
        }
        else
        {
            end = Math.Min(start + max, s.NumFrames - 1);
            for (int f = start; f <= end; f++) order.Add(f);
        }
        return (order, end);
    }

    /// <summary>
    /// propagate_in_video of <c>Sam3VideoInference</c> (full detection + tracking): outputs are held back for
    /// hot-start delay frames (the whole range when shorter) so that objects removed by the hot-start heuristics are never
    /// shown. Each yielded output is caller-owned. <paramref name="onFrameStart"/> is called before each frame's work.
    /// </summary>
    public IEnumerable<VideoFrameOutput> PropagateFull(VideoInferenceState s, int? startFrameIdx, int? maxFrameNumToTrack, bool reverse,
                                                       Action<int>? onFrameStart = null, CancellationToken cancellationToken = default)
    {
        CheckState(s);
        var (order, end) = ProcessingOrder(s, startFrameIdx, maxFrameNumToTrack, reverse);
        s.TrackingBounds = (maxFrameNumToTrack, startFrameIdx);
        using var buffer = new HotstartOutputBuffer(this, s, reverse);
        foreach (int f in order)
        {
            cancellationToken.ThrowIfCancellationRequested();
            onFrameStart?.Invoke(f);
            buffer.Add(f, RunSingleFrameInference(s, f, reverse), isEnd: f == end);
            while (buffer.TryEmit(out var post)) yield return post;
        }
    }

    /// <summary>_cache_frame_outputs: the frame's masks minus suppressed/removed/unconfirmed objects (own handles).</summary>
    internal static void CacheFrameOutputs(VideoInferenceState s, int frame, SortedDictionary<int, Tensor> objIdToMask, IEnumerable<int>? suppressed = null,
                                          IEnumerable<int>? removed = null, IEnumerable<int>? unconfirmed = null)
    {
        var exclude = new HashSet<int>();
        if (suppressed is not null) exclude.UnionWith(suppressed);
        if (removed is not null) exclude.UnionWith(removed);
        if (unconfirmed is not null) exclude.UnionWith(unconfirmed);
        var d = new SortedDictionary<int, Tensor>();
        foreach (var (id, m) in objIdToMask)
            if (!exclude.Contains(id)) d[id] = m.alias().DetachFromDisposeScope();
        if (s.CachedFrameOutputs.Remove(frame, out var old)) foreach (var t in old.Values) t.Dispose();
        s.CachedFrameOutputs[frame] = d;
    }

    /// <summary>_run_single_frame_inference of the video model: the pipeline on one frame, state updated.</summary>
    public RawFrameOutput RunSingleFrameInference(VideoInferenceState s, int frameIdx, bool reverse)
    {
        bool hasText = s.TextPrompt is not null;
        var geo = s.PerFrameGeometricPrompt[frameIdx];
        var (objIdToMask, stats) = DetTrackOneFrame(s, frameIdx, reverse, geo, allowNewDetections: hasText || geo is not null);
        s.HasOutputs[frameIdx] = true;
        CacheFrameOutputs(s, frameIdx, objIdToMask);
        var md = s.Metadata!;
        return new RawFrameOutput
        {
            ObjIdToMask = objIdToMask,
            ObjIdToScore = new Dictionary<int, float>(md.ObjIdToScore),
            ObjIdToTrackerScore = new Dictionary<int, float>(md.TrackerScores(frameIdx)),
            RemovedObjIds = new HashSet<int>(md.RemovedObjIds),
            SuppressedObjIds = new HashSet<int>(md.Suppressed(frameIdx)),
            UnconfirmedObjIds = Settings.MaskletConfirmationEnable
                ? md.ObjIds.Where((_, i) => md.ConfirmationStatus[i] == 0).ToList() : new List<int>(),
            Stats = stats,
        };
    }

    // =============================================================== output post-processing

    /// <summary>
    /// _postprocess_output: objects sorted by id, empty and hidden (suppressed, hot-start removed, unconfirmed) ones
    /// dropped, boxes from the masks (normalised xywh), then the object-wise non-overlap constraint ranked by the tracker
    /// scores (0 for objects without one) when several objects remain.
    /// </summary>
    public VideoFrameOutput PostprocessOutput(VideoInferenceState s, int frameIdx, RawFrameOutput raw, IEnumerable<int>? removed, IEnumerable<int>? suppressed,
                                              IEnumerable<int>? unconfirmed)
    {
        using var scope = NewDisposeScope();
        int h = s.OrigHeight, w = s.OrigWidth;
        var ids = raw.ObjIdToMask.Keys.ToList();
        if (ids.Count == 0)
            return new VideoFrameOutput
            {
                FrameIndex = frameIdx, ObjIds = [], Probs = [],
                BoxesXywh = torch.zeros(0, 4).DetachFromDisposeScope(),
                Masks = torch.zeros(0, h, w, dtype: ScalarType.Bool).DetachFromDisposeScope(),
                Stats = raw.Stats,
            };
        var hide = new HashSet<int>();
        if (suppressed is not null) hide.UnionWith(suppressed);
        if (removed is not null) hide.UnionWith(removed);
        if (unconfirmed is not null) hide.UnionWith(unconfirmed);
        var masks = torch.cat(ids.Select(i => raw.ObjIdToMask[i]).ToArray(), 0).to(torch.CPU);
        var nonEmpty = masks.flatten(1).any(1).data<bool>().ToArray();
        var keep = Enumerable.Range(0, ids.Count).Where(i => nonEmpty[i] && !hide.Contains(ids[i])).ToArray();
        var keptIds = keep.Select(i => (long)ids[i]).ToArray();
        var probs = keep.Select(i => raw.ObjIdToScore[ids[i]]).ToArray();
        var trackerProbs = keep.Select(i => raw.ObjIdToTrackerScore.TryGetValue(ids[i], out var v) ? v : 0f).ToArray();
        masks = masks.index_select(0, torch.tensor(keep.Select(i => (long)i).ToArray()));
        var boxes = MasksToBoxes(masks);
        var xywh = BoxOps.XyxyToXywh(boxes);
        xywh = xywh / torch.tensor(new float[] { w, h, w, h });
        if (masks.shape[0] > 1)
        {
            var scores = torch.tensor(trackerProbs).unsqueeze(1);
            OutputProbe?.Invoke(frameIdx, "nonoverlap_in.masks", masks);
            OutputProbe?.Invoke(frameIdx, "nonoverlap_in.scores", scores);
            masks = ApplyObjectWiseNonOverlap(masks, scores);
        }
        return new VideoFrameOutput
        {
            FrameIndex = frameIdx,
            ObjIds = keptIds,
            Probs = probs,
            BoxesXywh = xywh.DetachFromDisposeScope(),
            Masks = masks.DetachFromDisposeScope(),
            Stats = raw.Stats,
        };
    }

    /// <summary>
    /// _apply_object_wise_non_overlapping_constraints with background 0 on binary masks [O,H,W] and scores [O,1]: each
    /// pixel goes to the object with the highest score among those covering it (first on ties), and only when that
    /// score is positive.
    /// </summary>
    public Tensor ApplyObjectWiseNonOverlap(Tensor masks, Tensor scores)
    {
        using var scope = NewDisposeScope();
        var m = masks.unsqueeze(1);
        var single = torch.where(m, scores.to(ScalarType.Float32)[.., .., TensorIndex.None, TensorIndex.None], torch.tensor(0f));
        var pixel = Tracker.Net.ApplyNonOverlappingConstraints(single);
        return pixel.gt(0).squeeze(1).MoveToOuterDisposeScope();
    }

    /// <summary>torchvision masks_to_boxes: [O,H,W] bool → xyxy (inclusive max) float32; zeros for empty masks.</summary>
    public static Tensor MasksToBoxes(Tensor masks)
    {
        using var scope = NewDisposeScope();
        long n = masks.shape[0];
        if (n == 0) return torch.zeros(0, 4).MoveToOuterDisposeScope();
        var rows = masks.any(2); // [O,H]
        var cols = masks.any(1); // [O,W]
        var hIdx = torch.arange(masks.shape[1], dtype: ScalarType.Float32);
        var wIdx = torch.arange(masks.shape[2], dtype: ScalarType.Float32);
        float big = 1e9f;
        var x0 = torch.where(cols, wIdx, torch.tensor(big)).amin(1);
        var x1 = torch.where(cols, wIdx, torch.tensor(-big)).amax(1);
        var y0 = torch.where(rows, hIdx, torch.tensor(big)).amin(1);
        var y1 = torch.where(rows, hIdx, torch.tensor(-big)).amax(1);
        var empty = cols.any(1).logical_not();
        var b = torch.stack([x0, y0, x1, y1], 1);
        b = torch.where(empty.unsqueeze(1), torch.tensor(0f), b);
        return b.MoveToOuterDisposeScope();
    }

    /// <summary>mask_iou of binary masks [N,h,w] × [M,h,w] → [N,M] (intersection / max(union, 1)).</summary>
    public static Tensor MaskIou(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        var af = a.flatten(1).to(ScalarType.Float32);
        var bf = b.flatten(1).to(ScalarType.Float32);
        var inter = af.matmul(bf.t());
        var areaA = af.sum(1, keepdim: true);
        var areaB = bf.sum(1).unsqueeze(0);
        var union = areaA + areaB - inter;
        return (inter / union.clamp(min: 1)).MoveToOuterDisposeScope();
    }
}
