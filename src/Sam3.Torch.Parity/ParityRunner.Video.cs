using Sam3.Torch.Loading;
using System.Text.Json;
using System.Text.RegularExpressions;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Video;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

internal sealed partial class ParityRunner
{
    private Sam3ImageModel? _videoModel;

    /// <summary>The checkpoint loaded as the video model's detector (joint scores) with the tracker heads.</summary>
    private Sam3ImageModel VideoModel => _videoModel ??= WithPolicy(Sam3ModelLoader.LoadImageModel(Path.Combine(ModelDirectory, "model.safetensors"), Config,
        new Sam3LoadOptions { Grounding = GroundingOptions.VideoDetector }));

    /// <summary>Pipeline settings of a video scenario: the configuration's video section overridden by the scenario's recorded values.</summary>
    /// <summary>
    /// The f2 fixture's settings: temporal disambiguation on/off, the video model's settings at the end of the run (with
    /// the recorded trk_assoc_iou_thresh), the det_nms_thresh of the text part and the one the script set for the box part.
    /// </summary>
    private (bool Temporal, VideoPipelineSettings Base, double TextNms, double BoxNms) InteractiveVideoSettings(JsonElement p)
    {
        var set = p.GetProperty("settings");
        bool temporal = !set.TryGetProperty("apply_temporal_disambiguation", out var td) || td.GetBoolean();
        var atEnd = p.TryGetProperty("video_model_settings_at_end", out var ve) ? ve : (JsonElement?)null;
        var baseSettings = VideoSettings(atEnd);
        if (atEnd is { } e0 && e0.TryGetProperty("trk_assoc_iou_thresh", out var ta)) baseSettings = baseSettings with { TrkAssocIouThresh = ta.GetDouble() };
        double textNms = set.TryGetProperty("det_nms_thresh", out var tn) && tn.ValueKind == JsonValueKind.Number ? tn.GetDouble() : baseSettings.DetNmsThresh;
        double boxNms = p.TryGetProperty("settings_changed", out var sc) && sc.TryGetProperty("det_nms_thresh", out var dn) && dn.TryGetProperty("used_for_box_part", out var bn)
            ? bn.GetDouble() : baseSettings.DetNmsThresh;
        return (temporal, baseSettings, textNms, boxNms);
    }

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
        else if (VideoRequestForm) RunVideoPredictorRequests(ctx);
        else RunVideoPredictorInteractive(ctx);
    }

    /// <summary>
    /// Scenario f2 (<c>video_predictor_interactive</c>): the recorded request sequence (<c>parameters.calls</c>) of the
    /// session API on the ablation model (<c>apply_temporal_disambiguation=False</c>) with the recorded det_nms_thresh per
    /// part. Every detector run and response is compared under <c>&lt;call&gt;.frame&lt;k&gt;.</c>; the non-overlap inputs
    /// are compared, and the out_binary_masks of frames with several objects are compared as the non-overlap step applied
    /// to the recorded inputs (the tiny tracker's scores tie within 1e-6, README-video-extra.md). Object ids per yielded
    /// frame, yielded frame orders, propagation types and tracker-state compositions are checked as counts.
    /// </summary>
    private void RunVideoPredictorInteractive(Context ctx)
    {
        var fx = ctx.Fixture!;
        var p = fx.Parameters;
        var (temporal, baseSettings, textNms, boxNms) = InteractiveVideoSettings(p);
        var engine = new Sam3VideoEngine(VideoModel, Tokenizer, baseSettings with { DetNmsThresh = textNms }, applyTemporalDisambiguation: temporal);
        string call = "";
        engine.DetectorProbe = (f, n, t) => ctx.Offer($"{call}.frame{f}.{n}", t);
        var nonOverlapIn = new Dictionary<int, (Tensor Masks, Tensor Scores)>();
        engine.OutputProbe = (f, n, t) =>
        {
            if (n == "nonoverlap_in.masks") ctx.OfferMask($"{call}.frame{f}.{n}", t, Tolerance);
            else ctx.Offer($"{call}.frame{f}.{n}", t);
        };

        void OfferOutput(VideoFrameOutput o)
        {
            using var scope = NewDisposeScope();
            string pre = $"{call}.frame{o.FrameIndex}.";
            ctx.Offer(pre + "out_obj_ids", torch.tensor(o.ObjIds));
            ctx.Offer(pre + "out_probs", torch.tensor(o.Probs));
            ctx.Offer(pre + "out_boxes_xywh", o.BoxesXywh);
            string inKey = pre + "nonoverlap_in.masks_packbits";
            if (fx.Has(inKey) && fx.Has(pre + "nonoverlap_in.scores") && fx.Has(pre + "out_binary_masks_packbits"))
            {
                // the constraint applied to the recorded inputs (ill-conditioned scores, see the summary)
                var refIn = Context.UnpackBits(fx.Get(inKey), o.Masks.shape[^1]);
                var applied = engine.ApplyObjectWiseNonOverlap(refIn, fx.Get(pre + "nonoverlap_in.scores"));
                ctx.OfferMask(pre + "out_binary_masks", applied, Tolerance);
            }
            else ctx.OfferMask(pre + "out_binary_masks", o.Masks, Tolerance);
        }

        void CheckIds(string where, JsonElement response, VideoFrameOutput o)
        {
            if (!response.TryGetProperty("out_obj_ids", out var ids)) return;
            var want = ids.EnumerateArray().Select(x => x.GetInt64()).ToList();
            if (!want.SequenceEqual(o.ObjIds))
                throw new Sam3Exception($"{where} frame {o.FrameIndex}: object ids [{string.Join(",", o.ObjIds)}], reference [{string.Join(",", want)}]");
        }

        VideoInferenceState? state = null;
        try
        {
            foreach (var c in p.GetProperty("calls").EnumerateArray())
            {
                call = c.GetProperty("call").GetString()!;
                var req = c.GetProperty("request");
                string type = req.GetProperty("type").GetString()!;
                switch (type)
                {
                    case "start_session":
                        state?.Dispose();
                        state = engine.InitState(new FolderFrameSource(FramesFolder(fx, p.GetProperty("frames").GetString()!)));
                        break;
                    case "add_prompt":
                    {
                        int frame = req.GetProperty("frame_index").GetInt32();
                        VideoFrameOutput o;
                        if (req.TryGetProperty("points", out var pts) && pts.ValueKind == JsonValueKind.Array)
                        {
                            var points = pts.EnumerateArray().Select(Floats).Select(a => (a[0], a[1])).ToList();
                            var labels = req.GetProperty("point_labels").EnumerateArray().Select(x => x.GetInt32()).ToList();
                            o = engine.AddTrackerNewPoints(state!, frame, req.GetProperty("obj_id").GetInt32(), points, labels);
                        }
                        else
                        {
                            string? text = req.TryGetProperty("text", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
                            List<(float, float, float, float)>? boxes = null;
                            List<bool>? boxLabels = null;
                            if (req.TryGetProperty("bounding_boxes", out var bb) && bb.ValueKind == JsonValueKind.Array)
                            {
                                boxes = bb.EnumerateArray().Select(Floats).Select(a => (a[0], a[1], a[2], a[3])).ToList();
                                boxLabels = req.GetProperty("bounding_box_labels").EnumerateArray().Select(x => x.GetInt32() != 0).ToList();
                            }
                            o = engine.AddPrompt(state!, frame, text, boxes, boxLabels);
                        }
                        using (o)
                        {
                            OfferOutput(o);
                            if (c.TryGetProperty("response", out var resp)) CheckIds(call, resp, o);
                        }
                        break;
                    }
                    case "propagate_in_video":
                    {
                        string dir = req.TryGetProperty("propagation_direction", out var d) ? d.GetString()! : "both";
                        int? start = req.TryGetProperty("start_frame_index", out var sf) && sf.ValueKind == JsonValueKind.Number ? sf.GetInt32() : null;
                        int? max = req.TryGetProperty("max_frame_num_to_track", out var mf) && mf.ValueKind == JsonValueKind.Number ? mf.GetInt32() : null;
                        var yielded = new List<int>();
                        var perFrame = c.TryGetProperty("per_frame", out var pf) ? pf.EnumerateArray().ToList() : [];
                        foreach (bool reverse in dir switch { "forward" => new[] { false }, "backward" => new[] { true }, _ => new[] { false, true } })
                        {
                            foreach (var o in engine.Propagate(state!, start, max, reverse))
                            {
                                using (o)
                                {
                                    OfferOutput(o);
                                    if (yielded.Count < perFrame.Count) CheckIds(call, perFrame[yielded.Count], o);
                                    yielded.Add(o.FrameIndex);
                                }
                            }
                        }
                        if (c.TryGetProperty("yielded_frames", out var yf))
                        {
                            var want = yf.EnumerateArray().Select(x => x.GetInt32()).ToList();
                            if (!want.SequenceEqual(yielded))
                                throw new Sam3Exception($"{call}: yielded frames [{string.Join(",", yielded)}], reference [{string.Join(",", want)}]");
                        }
                        break;
                    }
                    case "remove_object":
                        engine.RemoveObject(state!, req.GetProperty("obj_id").GetInt32(), isUserAction: true);
                        break;
                    case "reset_session":
                        engine.ResetState(state!);
                        engine.Settings = engine.Settings with { DetNmsThresh = boxNms };
                        break;
                    case "close_session":
                        state?.Dispose();
                        state = null;
                        break;
                    default:
                        throw new NotSupportedException($"f2 request type '{type}' is not implemented by this runner");
                }
                if (state is not null && c.TryGetProperty("tracker_states_obj_ids", out var tso))
                {
                    var want = string.Join("|", tso.EnumerateArray().Select(a => string.Join(",", a.EnumerateArray().Select(x => x.GetInt32()))));
                    var ours = string.Join("|", state.TrackerStates.Select(st => string.Join(",", st.ObjIds)));
                    if (want != ours) throw new Sam3Exception($"{call}: tracker states [{ours}], reference [{want}]");
                }
                if (state is not null && c.TryGetProperty("action_history", out var ah))
                    ctx.Detections.Add(($"{call}: action history length", ah.GetArrayLength(), state.ActionHistory.Count));
            }
        }
        finally
        {
            state?.Dispose();
        }
    }

    private void DisposeVideoModel()
    {
        _videoModel?.Dispose();
        _videoModel = null;
    }

    private sealed partial class Context
    {
        /// <summary>Unpacks a recorded <c>*_packbits</c> mask to <paramref name="width"/> columns.</summary>
        internal static Tensor UnpackBits(Tensor packed, long width) => Unpack(packed, width);
    }
}
