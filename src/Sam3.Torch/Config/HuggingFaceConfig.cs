using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Sam3.Torch.Config;

/// <summary>Which numerics to take where a transformers <c>config.json</c> differs from the original implementation.</summary>
internal enum HfNumerics
{
    /// <summary>The original SAM3 values (default): the checkpoint's weights were trained with them.</summary>
    Original,
    /// <summary>The values of the transformers config (e.g. ViT LayerNorm eps 1e-6), reproducing transformers' outputs.</summary>
    HuggingFace,
}

/// <summary>A configuration read from a transformers <c>config.json</c>, and the values that differ from the original.</summary>
/// <param name="Differences">One line per value where the file differs from the original numerics, saying which one is used.</param>
internal sealed record HfConfigResult(Sam3Config Config, IReadOnlyList<string> Differences);

/// <summary>
/// Reads the transformers <c>config.json</c> of the hub model (<c>model_type: sam3_video</c>: nested
/// <c>detector_config</c> (<c>sam3</c>) and <c>tracker_config</c> (<c>sam3_tracker_video</c>), see
/// <c>shared/pyref/README-hf.md</c>) into a <see cref="Sam3Config"/>. Sizes come from the file; fields transformers
/// does not have keep the original defaults (the tracker's mask-downsampler input size, which upstream is 16·N, is
/// derived as such). Unknown fields are ignored; a missing size field is a <see cref="Sam3ConfigException"/> naming its path.
/// <para>
/// Numerics: transformers' defaults put the ViT LayerNorm epsilon at 1e-6 (its ViT really uses it) where the original
/// vitdet uses 1e-5. By default (<see cref="HfNumerics.Original"/>) the original value is kept and the difference is
/// reported in <see cref="HfConfigResult.Differences"/>; <see cref="HfNumerics.HuggingFace"/> takes the file's value. The
/// <c>layer_norm_eps</c> fields of the DETR/geometry/mask-decoder sub-configs are not compared: transformers builds those
/// LayerNorms without them (eps 1e-5, as the original).
/// </para>
/// </summary>
internal static class HuggingFaceConfig
{
    /// <summary>Reads a transformers config.json file.</summary>
    public static HfConfigResult Load(string path, HfNumerics numerics = HfNumerics.Original, string? processorConfigPath = null)
    {
        if (!File.Exists(path)) throw new Sam3ConfigException($"configuration file not found: {path}");
        string? processor = processorConfigPath is not null && File.Exists(processorConfigPath) ? File.ReadAllText(processorConfigPath) : null;
        try
        {
            return FromJson(File.ReadAllText(path), numerics, processor);
        }
        catch (Sam3ConfigException e)
        {
            throw new Sam3ConfigException($"{path}: {e.Message}", e);
        }
    }

    /// <summary>True when the JSON is a transformers SAM3 config (<c>model_type</c> sam3_video or sam3).</summary>
    public static bool IsHfConfigJson(string json)
    {
        try
        {
            return JsonNode.Parse(json) is JsonObject o && o["model_type"]?.GetValueKind() == JsonValueKind.String
                   && (string?)o["model_type"] is "sam3_video" or "sam3";
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>Parses a transformers config.json (and optionally processor_config.json for the normalisation).</summary>
    public static HfConfigResult FromJson(string json, HfNumerics numerics = HfNumerics.Original, string? processorConfigJson = null)
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(json) as JsonObject ?? throw new Sam3ConfigException("config.json is not a JSON object");
        }
        catch (JsonException e)
        {
            throw new Sam3ConfigException($"invalid config.json: {e.Message}", e);
        }
        string modelType = Str(root, "model_type", "");
        if (modelType == "sam3")
            throw new Sam3ConfigException("model_type 'sam3' is transformers' image-only Sam3Model (keys without the detector_model. prefix), " +
                                          "which this library does not read; use the hub files of facebook/sam3 (model_type 'sam3_video') or the original sam3.pt");
        if (modelType != "sam3_video")
            throw new Sam3ConfigException($"model_type '{modelType}' is not a SAM3 transformers configuration (expected 'sam3_video')");

        var diffs = new List<string>();
        var det = Obj(root, "detector_config");
        var vision = Obj(det, "vision_config", "detector_config");
        var vit = Obj(vision, "backbone_config", "detector_config.vision_config");
        var text = Obj(det, "text_config", "detector_config");
        var geo = Obj(det, "geometry_encoder_config", "detector_config");
        var enc = Obj(det, "detr_encoder_config", "detector_config");
        var dec = Obj(det, "detr_decoder_config", "detector_config");
        var seg = Obj(det, "mask_decoder_config", "detector_config");
        var trk = Obj(root, "tracker_config");
        var prompt = Obj(trk, "prompt_encoder_config", "tracker_config");
        var samDec = Obj(trk, "mask_decoder_config", "tracker_config");
        const string V = "detector_config.vision_config.backbone_config", TX = "detector_config.text_config",
                     GE = "detector_config.geometry_encoder_config", EN = "detector_config.detr_encoder_config",
                     DE = "detector_config.detr_decoder_config", MD = "detector_config.mask_decoder_config",
                     TR = "tracker_config", PE = "tracker_config.prompt_encoder_config", SD = "tracker_config.mask_decoder_config";

        var original = Sam3Config.Full;
        var hard = original.HardcodedInClasses;

        // ---- ViT
        int embed = Int(vit, "hidden_size", V), inter = Int(vit, "intermediate_size", V);
        double mlpRatio = (double)inter / embed;
        if ((int)(embed * mlpRatio) != inter) throw new Sam3ConfigException($"{V}.intermediate_size {inter} is not reproducible as hidden_size × ratio");
        RequireGelu(vit, V);
        int imageSize = Int(vit, "image_size", V), patch = Int(vit, "patch_size", V);
        var vitCfg = original.Vit with
        {
            ImgSize = imageSize, PatchSize = patch, EmbedDim = embed, Depth = Int(vit, "num_hidden_layers", V),
            NumHeads = Int(vit, "num_attention_heads", V), MlpRatio = mlpRatio, PretrainImgSize = Int(vit, "pretrain_image_size", V),
            WindowSize = Int(vit, "window_size", V), GlobalAttBlocks = Ints(vit, "global_attn_indexes", V),
            RopeTheta = Dbl(vit, "rope_theta", V, original.Vit.RopeTheta), QkvBias = Bool(vit, "qkv_bias", original.Vit.QkvBias),
        };
        double vitEps = hard.VitLayerNormEps;
        if (vit["layer_norm_eps"] is not null)
        {
            double fileEps = Dbl(vit, "layer_norm_eps", V);
            if (fileEps != hard.VitLayerNormEps)
            {
                if (numerics == HfNumerics.HuggingFace) vitEps = fileEps;
                string which = numerics == HfNumerics.Original
                    ? " (original numerics; choose the transformers value with HfNumerics.HuggingFace)" : " (transformers numerics, as requested)";
                diffs.Add(string.Create(CultureInfo.InvariantCulture,
                    $"{V}.layer_norm_eps is {fileEps:G} (transformers default); the original ViT uses {hard.VitLayerNormEps:G}: using {vitEps:G}{which}"));
            }
        }

        // ---- neck + position encoding
        int dNeck = Int(vision, "fpn_hidden_size", "detector_config.vision_config");
        var neck = original.Neck with { DModel = dNeck, ScaleFactors = Dbls(vision, "scale_factors", "detector_config.vision_config"), AddSam2Neck = true };

        // ---- text
        int width = Int(text, "hidden_size", TX);
        RequireGelu(text, TX);
        int d = Int(enc, "hidden_size", EN);
        var textCfg = original.Text with
        {
            Width = width, Heads = Int(text, "num_attention_heads", TX), Layers = Int(text, "num_hidden_layers", TX),
            ContextLength = Int(text, "max_position_embeddings", TX), VocabSize = Int(text, "vocab_size", TX),
            MlpRatio = (double)Int(text, "intermediate_size", TX) / width, DModel = d,
            OutputDim = IntOr(text, "projection_dim", TX, original.Text.OutputDim),
        };
        double textEps = hard.TextLayerNormEps;
        if (text["layer_norm_eps"] is not null && Dbl(text, "layer_norm_eps", TX) is var te && te != hard.TextLayerNormEps)
        {
            if (numerics == HfNumerics.HuggingFace) textEps = te;
            diffs.Add(string.Create(CultureInfo.InvariantCulture, $"{TX}.layer_norm_eps is {te:G}; the original text encoder uses {hard.TextLayerNormEps:G}: using {textEps:G}"));
        }

        // ---- fusion encoder, decoder, scoring, segmentation head, geometry encoder
        var encCfg = original.Encoder with
        {
            NumLayers = Int(enc, "num_layers", EN), DModel = d, NumHeads = Int(enc, "num_attention_heads", EN),
            DimFeedforward = Int(enc, "intermediate_size", EN), Activation = Str(enc, "hidden_act", original.Encoder.Activation),
            Dropout = Dbl(enc, "dropout", EN, original.Encoder.Dropout),
        };
        int dDec = Int(dec, "hidden_size", DE);
        var decCfg = original.Decoder with
        {
            NumLayers = Int(dec, "num_layers", DE), DModel = dDec, NumHeads = Int(dec, "num_attention_heads", DE),
            DimFeedforward = Int(dec, "intermediate_size", DE), Activation = Str(dec, "hidden_act", original.Decoder.Activation),
            NumQueries = Int(dec, "num_queries", DE), BoxRPB = Str(dec, "box_rpb_mode", original.Decoder.BoxRPB),
            PresenceToken = Bool(dec, "use_presence_token", original.Decoder.PresenceToken), Resolution = imageSize, Stride = patch,
        };
        var scoring = original.DotProdScoring with { DModel = dDec, DProj = dDec, PromptMlpHiddenDim = Int(dec, "intermediate_size", DE) };
        var segCfg = original.SegmentationHead with
        {
            HiddenDim = Int(seg, "hidden_size", MD), UpsamplingStages = Int(seg, "num_upsampling_stages", MD),
            CrossAttendPromptHeads = Int(seg, "num_attention_heads", MD),
        };
        int dGeo = Int(geo, "hidden_size", GE);
        int roi = IntOr(geo, "roi_size", GE, hard.GeometryRoiSize);
        var geoCfg = original.GeometryEncoder with
        {
            DModel = dGeo, NumLayers = Int(geo, "num_layers", GE), NumHeads = Int(geo, "num_attention_heads", GE),
            DimFeedforward = Int(geo, "intermediate_size", GE), Activation = Str(geo, "hidden_act", original.GeometryEncoder.Activation),
            PosNumPosFeats = dGeo, CxBlock = original.GeometryEncoder.CxBlock with { Dim = dGeo }, RoiSize = roi,
            Dropout = Dbl(geo, "dropout", GE, original.GeometryEncoder.Dropout),
        };

        // ---- tracker
        int memDim = Int(trk, "memory_encoder_output_channels", TR);
        int n = imageSize / patch;
        var t0 = original.Tracker;
        var maskDown = t0.MemoryEncoder.MaskDownsampler with
        {
            EmbedDim = Int(trk, "mask_downsampler_embed_dim", TR), KernelSize = IntOr(trk, "mask_downsampler_kernel_size", TR, t0.MemoryEncoder.MaskDownsampler.KernelSize),
            Stride = IntOr(trk, "mask_downsampler_stride", TR, t0.MemoryEncoder.MaskDownsampler.Stride),
            Padding = IntOr(trk, "mask_downsampler_padding", TR, t0.MemoryEncoder.MaskDownsampler.Padding),
            TotalStride = IntOr(trk, "mask_downsampler_total_stride", TR, t0.MemoryEncoder.MaskDownsampler.TotalStride),
            // no config field: upstream's interpol_size is 16·N (1152 = 16·72 for the released model)
            InterpolSize = [16 * n, 16 * n],
        };
        double? layerScale = trk["memory_fuser_layer_scale_init_value"] is null ? t0.MemoryEncoder.CxBlock.LayerScaleInitValue
                                                                                : Dbl(trk, "memory_fuser_layer_scale_init_value", TR);
        var memEnc = t0.MemoryEncoder with
        {
            OutDim = memDim, InDim = Int(trk, "memory_encoder_hidden_size", TR), PosNumPosFeats = memDim, MaskDownsampler = maskDown,
            FuserNumLayers = IntOr(trk, "memory_fuser_num_layers", TR, t0.MemoryEncoder.FuserNumLayers),
            CxBlock = t0.MemoryEncoder.CxBlock with
            {
                Dim = Int(trk, "memory_fuser_embed_dim", TR), KernelSize = IntOr(trk, "memory_fuser_kernel_size", TR, t0.MemoryEncoder.CxBlock.KernelSize),
                Padding = IntOr(trk, "memory_fuser_padding", TR, t0.MemoryEncoder.CxBlock.Padding), LayerScaleInitValue = layerScale,
            },
        };
        double ropeTheta = trk["memory_attention_rope_theta"] is not null ? Dbl(trk, "memory_attention_rope_theta", TR)
            : trk["rope_parameters"] is JsonObject rp && rp["rope_theta"] is not null ? Dbl(rp, "rope_theta", TR + ".rope_parameters")
            : t0.MemoryAttention.RopeTheta;
        var memAttn = t0.MemoryAttention with
        {
            NumLayers = Int(trk, "memory_attention_num_layers", TR), DModel = Int(trk, "memory_attention_hidden_size", TR),
            DimFeedforward = Int(trk, "memory_attention_feed_forward_hidden_size", TR),
            NumHeads = IntOr(trk, "memory_attention_num_attention_heads", TR, t0.MemoryAttention.NumHeads), RopeTheta = ropeTheta,
            FeatSizes = trk["memory_attention_rope_feat_sizes"] is not null ? Ints(trk, "memory_attention_rope_feat_sizes", TR) : [n, n],
            // transformers hard-codes 64 here; the original sizes it from the memory width (equal for the released model)
            KvInDim = memDim,
            Activation = Str(trk, "memory_attention_feed_forward_hidden_act", t0.MemoryAttention.Activation),
        };
        var sam = t0.Sam with
        {
            MultimaskOutputInSam = Bool(trk, "multimask_output_in_sam", t0.Sam.MultimaskOutputInSam),
            MultimaskOutputForTracking = Bool(trk, "multimask_output_for_tracking", t0.Sam.MultimaskOutputForTracking),
            MultimaskMinPtNum = IntOr(trk, "multimask_min_pt_num", TR, t0.Sam.MultimaskMinPtNum),
            MultimaskMaxPtNum = IntOr(trk, "multimask_max_pt_num", TR, t0.Sam.MultimaskMaxPtNum),
            DynamicMultimaskViaStability = Bool(samDec, "dynamic_multimask_via_stability", t0.Sam.DynamicMultimaskViaStability),
            DynamicMultimaskStabilityDelta = Dbl(samDec, "dynamic_multimask_stability_delta", SD, t0.Sam.DynamicMultimaskStabilityDelta),
            DynamicMultimaskStabilityThresh = Dbl(samDec, "dynamic_multimask_stability_thresh", SD, t0.Sam.DynamicMultimaskStabilityThresh),
        };
        var trackerCfg = t0 with
        {
            ImageSize = IntOr(trk, "image_size", TR, imageSize), BackboneStride = IntOr(prompt, "patch_size", PE, patch),
            NumMaskmem = IntOr(trk, "num_maskmem", TR, t0.NumMaskmem), HiddenDim = Int(samDec, "hidden_size", SD), MemDim = memDim,
            MaxCondFramesInAttn = IntOr(trk, "max_cond_frame_num", TR, t0.MaxCondFramesInAttn),
            MaxObjPtrsInEncoder = IntOr(trk, "max_object_pointers_in_encoder", TR, t0.MaxObjPtrsInEncoder),
            MemoryAttention = memAttn, MemoryEncoder = memEnc, Sam = sam,
        };
        double samEps = hard.SamLayerNorm2dEps;
        if (prompt["layer_norm_eps"] is not null && Dbl(prompt, "layer_norm_eps", PE) is var pe && pe != hard.SamLayerNorm2dEps)
        {
            if (numerics == HfNumerics.HuggingFace) samEps = pe;
            diffs.Add(string.Create(CultureInfo.InvariantCulture, $"{PE}.layer_norm_eps is {pe:G}; the original SAM heads use {hard.SamLayerNorm2dEps:G}: using {samEps:G}"));
        }
        var hardCfg = hard with
        {
            VitLayerNormEps = vitEps, TextLayerNormEps = textEps, SamLayerNorm2dEps = samEps, GeometryRoiSize = roi,
            PromptEncoderMaskInChans = IntOr(prompt, "mask_input_channels", PE, hard.PromptEncoderMaskInChans),
            NumMultimaskOutputs = IntOr(samDec, "num_multimask_outputs", SD, hard.NumMultimaskOutputs),
            TwoWayDepth = IntOr(samDec, "num_hidden_layers", SD, hard.TwoWayDepth),
            TwoWayMlpDim = IntOr(samDec, "mlp_dim", SD, hard.TwoWayMlpDim),
            TwoWayNumHeads = IntOr(samDec, "num_attention_heads", SD, hard.TwoWayNumHeads),
            TwoWayAttentionDownsampleRate = IntOr(samDec, "attention_downsample_rate", SD, hard.TwoWayAttentionDownsampleRate),
            IouHeadDepth = IntOr(samDec, "iou_head_depth", SD, hard.IouHeadDepth),
            IouHeadHiddenDim = IntOr(samDec, "iou_head_hidden_dim", SD, hard.IouHeadHiddenDim),
            SigmoidScaleForMemEnc = Dbl(trk, "sigmoid_scale_for_mem_enc", TR, hard.SigmoidScaleForMemEnc),
            SigmoidBiasForMemEnc = Dbl(trk, "sigmoid_bias_for_mem_enc", TR, hard.SigmoidBiasForMemEnc),
        };

        // ---- video heuristics (top level)
        var v0 = original.Video;
        var video = v0 with
        {
            ScoreThresholdDetection = Dbl(root, "score_threshold_detection", "", v0.ScoreThresholdDetection),
            AssocIouThresh = Dbl(root, "assoc_iou_thresh", "", v0.AssocIouThresh),
            DetNmsThresh = Dbl(root, "det_nms_thresh", "", v0.DetNmsThresh),
            NewDetThresh = Dbl(root, "new_det_thresh", "", v0.NewDetThresh),
            HotstartDelay = IntOr(root, "hotstart_delay", "", v0.HotstartDelay),
            HotstartUnmatchThresh = IntOr(root, "hotstart_unmatch_thresh", "", v0.HotstartUnmatchThresh),
            HotstartDupThresh = IntOr(root, "hotstart_dup_thresh", "", v0.HotstartDupThresh),
            SuppressUnmatchedOnlyWithinHotstart = Bool(root, "suppress_unmatched_only_within_hotstart", v0.SuppressUnmatchedOnlyWithinHotstart),
            MinTrkKeepAlive = IntOr(root, "min_trk_keep_alive", "", v0.MinTrkKeepAlive),
            MaxTrkKeepAlive = IntOr(root, "max_trk_keep_alive", "", v0.MaxTrkKeepAlive),
            InitTrkKeepAlive = IntOr(root, "init_trk_keep_alive", "", v0.InitTrkKeepAlive),
            SuppressOverlappingBasedOnRecentOcclusionThreshold = Dbl(root, "suppress_overlapping_based_on_recent_occlusion_threshold", "",
                v0.SuppressOverlappingBasedOnRecentOcclusionThreshold),
            FillHoleArea = IntOr(root, "fill_hole_area", "", v0.FillHoleArea),
            ReconditionEveryNthFrame = IntOr(root, "recondition_every_nth_frame", "", v0.ReconditionEveryNthFrame),
            DecreaseTrkKeepAliveForEmptyMasklets = Bool(root, "decrease_trk_keep_alive_for_empty_masklets", v0.DecreaseTrkKeepAliveForEmptyMasklets),
        };

        double[] mean = original.ImageMean, std = original.ImageStd;
        if (processorConfigJson is not null && JsonNode.Parse(processorConfigJson) is JsonObject proc)
        {
            var ip = proc["image_processor"] as JsonObject ?? proc;
            if (ip["image_mean"] is JsonArray) mean = Dbls(ip, "image_mean", "processor_config.image_processor");
            if (ip["image_std"] is JsonArray) std = Dbls(ip, "image_std", "processor_config.image_processor");
        }

        var cfg = original with
        {
            Name = "sam3-hf", ImageSize = imageSize, ImageMean = mean, ImageStd = std, Vit = vitCfg, Neck = neck,
            PositionEncoding = original.PositionEncoding with { NumPosFeats = dNeck }, Text = textCfg, Encoder = encCfg,
            Decoder = decCfg, DotProdScoring = scoring, SegmentationHead = segCfg, GeometryEncoder = geoCfg, Tracker = trackerCfg,
            Video = video, HardcodedInClasses = hardCfg, Extra = null,
        };
        if (cfg.SameArchitecture(Sam3Config.Full)) cfg = cfg with { Name = Sam3Config.Full.Name };
        return new HfConfigResult(cfg, diffs);
    }

    // ------------------------------------------------------------------ JSON helpers (path-naming errors)

    private static JsonObject Obj(JsonObject parent, string name, string? at = null) =>
        parent[name] as JsonObject ?? throw new Sam3ConfigException($"missing object '{(at is null ? "" : at + ".")}{name}'");

    private static JsonNode Need(JsonObject o, string name, string at) =>
        o[name] ?? throw new Sam3ConfigException($"missing field '{(at.Length == 0 ? "" : at + ".")}{name}'");

    private static int Int(JsonObject o, string name, string at)
    {
        var node = Need(o, name, at);
        try { return node.GetValue<int>(); }
        catch (Exception e) when (e is FormatException or InvalidOperationException)
        {
            if (node.GetValueKind() == JsonValueKind.Number && double.TryParse(node.ToJsonString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var dv) && dv == Math.Floor(dv))
                return checked((int)dv);
            throw new Sam3ConfigException($"'{at}.{name}' is {node.ToJsonString()}, expected an integer");
        }
    }

    private static int IntOr(JsonObject o, string name, string at, int fallback) => o[name] is null ? fallback : Int(o, name, at);

    private static double Dbl(JsonObject o, string name, string at)
    {
        var node = Need(o, name, at);
        if (node.GetValueKind() != JsonValueKind.Number) throw new Sam3ConfigException($"'{at}.{name}' is {node.ToJsonString()}, expected a number");
        return double.Parse(node.ToJsonString(), NumberStyles.Float, CultureInfo.InvariantCulture);
    }

    private static double Dbl(JsonObject o, string name, string at, double fallback) => o[name] is null ? fallback : Dbl(o, name, at);

    private static bool Bool(JsonObject o, string name, bool fallback) =>
        o[name] is { } n && n.GetValueKind() is JsonValueKind.True or JsonValueKind.False ? n.GetValue<bool>() : fallback;

    private static string Str(JsonObject o, string name, string fallback) =>
        o[name] is { } n && n.GetValueKind() == JsonValueKind.String ? n.GetValue<string>() : fallback;

    private static int[] Ints(JsonObject o, string name, string at) =>
        Need(o, name, at) is JsonArray a ? a.Select(x => x is null ? throw new Sam3ConfigException($"'{at}.{name}' holds null") : x.GetValue<int>()).ToArray()
            : throw new Sam3ConfigException($"'{at}.{name}' is not an array");

    private static double[] Dbls(JsonObject o, string name, string at) =>
        Need(o, name, at) is JsonArray a
            ? a.Select(x => x is null ? throw new Sam3ConfigException($"'{at}.{name}' holds null")
                                      : double.Parse(x.ToJsonString(), NumberStyles.Float, CultureInfo.InvariantCulture)).ToArray()
            : throw new Sam3ConfigException($"'{at}.{name}' is not an array");

    private static void RequireGelu(JsonObject o, string at)
    {
        string act = Str(o, "hidden_act", "gelu");
        if (act != "gelu")
            throw new Sam3ConfigException($"'{at}.hidden_act' is '{act}'; SAM3 uses the exact GELU ('gelu'), the only activation this library implements there");
    }
}
