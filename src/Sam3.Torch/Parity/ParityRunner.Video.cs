using System.Text.Json;
using System.Text.RegularExpressions;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Video;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

public sealed partial class ParityRunner
{
    private Sam3Image? _videoModel;

    /// <summary>The checkpoint loaded as the video model's detector (joint scores) with the tracker heads.</summary>
    private Sam3Image VideoModel => _videoModel ??= Sam3ModelLoader.LoadImageModel(Path.Combine(ModelDirectory, "model.safetensors"), Config,
        new Sam3LoadOptions { Grounding = GroundingOptions.VideoDetector });

    /// <summary>Pipeline settings of a video scenario: the configuration's video section overridden by the scenario's recorded values.</summary>
    private VideoPipelineSettings VideoSettings(JsonElement? recorded)
    {
        var s = VideoPipelineSettings.FromConfig(Config.Video);
        if (recorded is not { } r) return s;
        double D(string n, double d) => r.TryGetProperty(n, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : d;
        int I(string n, int d) => r.TryGetProperty(n, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetInt32() : d;
        bool B(string n, bool d) => r.TryGetProperty(n, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : d;
        return s with
        {
            ScoreThresholdDetection = D("score_threshold_detection", s.ScoreThresholdDetection),
            AssocIouThresh = D("assoc_iou_thresh", s.AssocIouThresh),
            DetNmsThresh = D("det_nms_thresh", s.DetNmsThresh),
            NewDetThresh = D("new_det_thresh", s.NewDetThresh),
            HotstartDelay = I("hotstart_delay", s.HotstartDelay),
            HotstartUnmatchThresh = I("hotstart_unmatch_thresh", s.HotstartUnmatchThresh),
            HotstartDupThresh = I("hotstart_dup_thresh", s.HotstartDupThresh),
            SuppressUnmatchedOnlyWithinHotstart = B("suppress_unmatched_only_within_hotstart", s.SuppressUnmatchedOnlyWithinHotstart),
            MinTrkKeepAlive = I("min_trk_keep_alive", s.MinTrkKeepAlive),
            MaxTrkKeepAlive = I("max_trk_keep_alive", s.MaxTrkKeepAlive),
            InitTrkKeepAlive = I("init_trk_keep_alive", s.InitTrkKeepAlive),
            SuppressOverlappingBasedOnRecentOcclusionThreshold = D("suppress_overlapping_based_on_recent_occlusion_threshold", s.SuppressOverlappingBasedOnRecentOcclusionThreshold),
            SuppressDetCloseToBoundary = B("suppress_det_close_to_boundary", s.SuppressDetCloseToBoundary),
            FillHoleArea = I("fill_hole_area", s.FillHoleArea),
            ReconditionEveryNthFrame = I("recondition_every_nth_frame", s.ReconditionEveryNthFrame),
            MaskletConfirmationEnable = B("masklet_confirmation_enable", s.MaskletConfirmationEnable),
            DecreaseTrkKeepAliveForEmptyMasklets = B("decrease_trk_keep_alive_for_empty_masklets", s.DecreaseTrkKeepAliveForEmptyMasklets),
        };
    }

    private static void OfferVideoOutput(Context ctx, string prefix, VideoFrameOutput o, Tolerance tol)
    {
        using var scope = NewDisposeScope();
        ctx.Offer(prefix + "out_obj_ids", torch.tensor(o.ObjIds));
        ctx.Offer(prefix + "out_probs", torch.tensor(o.Probs));
        ctx.Offer(prefix + "out_boxes_xywh", o.BoxesXywh);
        ctx.OfferMask(prefix + "out_binary_masks", o.Masks, tol);
    }

    /// <summary>
    /// Scenario f (<c>video_predictor_text</c>): start_session on the frame folder, add_prompt(text) on a frame, then a
    /// forward propagation, through <see cref="Sam3VideoEngine"/>. The prompt, frame, direction and pipeline settings
    /// come from the scenario JSON; detector outputs are compared per run (names by the frame yielded next, as
    /// recorded), outputs per frame, and the number of tracked objects per frame against <c>frame_stats</c>.
    /// </summary>
    private void RunVideoPredictorText(Context ctx)
    {
        var fx = ctx.Fixture!;
        var p = fx.Parameters;
        string api = p.GetProperty("api").GetString() ?? "";
        var text = Regex.Match(api, @"text='([^']*)'");
        if (!text.Success) throw new Sam3Exception("scenario f: no text prompt in parameters.api");
        int frame = ApiInt(api, "frame_index") ?? 0;
        string direction = Regex.Match(api, @"propagation_direction='(\w+)'") is { Success: true } dm ? dm.Groups[1].Value : "both";
        if (direction != "forward") throw new NotSupportedException($"scenario f with propagation direction '{direction}'");
        var settings = VideoSettings(p.TryGetProperty("video_model_settings", out var vs) ? vs : null);
        var engine = new Sam3VideoEngine(VideoModel, Tokenizer, settings);
        string prefix = "add_prompt.";
        engine.DetectorProbe = (_, n, t) => ctx.Offer(prefix + n, t);
        var stats = p.TryGetProperty("frame_stats", out var fs) ? fs.EnumerateArray().ToList() : [];
        int statIdx = 0;
        void CheckStats(string stage, VideoFrameOutput o)
        {
            if (statIdx >= stats.Count || o.Stats is not { } st) return;
            var e = stats[statIdx++];
            ctx.Detections.Add(($"{stage} frame {o.FrameIndex}: num_obj_tracked", e.GetProperty("num_obj_tracked").GetInt32(), st.NumObjTracked));
        }
        using var state = engine.InitState(new FolderFrameSource(FramesFolder(fx, p.GetProperty("frames").GetString()!)));
        using (var o = engine.AddPrompt(state, frame, text: text.Groups[1].Value))
        {
            OfferVideoOutput(ctx, "add_prompt.", o, Tolerance);
            CheckStats("add_prompt", o);
        }
        var (order, _) = engine.ProcessingOrder(state, null, null, false);
        int next = 0;
        prefix = $"frame{order[next]}.";
        int yielded = 0;
        foreach (var o in engine.PropagateFull(state, null, null, reverse: false))
        {
            using (o)
            {
                OfferVideoOutput(ctx, $"frame{o.FrameIndex}.", o, Tolerance);
                CheckStats("propagate", o);
                yielded++;
                if (++next < order.Count) prefix = $"frame{order[next]}.";
            }
        }
        ctx.Detections.Add(("propagate: frames yielded", order.Count, yielded));
    }

    private void RunVideoPredictor(Context ctx, string kind)
    {
        if (kind == "video_predictor_text") RunVideoPredictorText(ctx);
        else RunVideoPredictorInteractive(ctx);
    }

    private void RunVideoPredictorInteractive(Context ctx) =>
        throw new NotSupportedException("scenario f2 (video_predictor_interactive) is not implemented by this runner yet");

    private void DisposeVideoModel()
    {
        _videoModel?.Dispose();
        _videoModel = null;
    }
}
