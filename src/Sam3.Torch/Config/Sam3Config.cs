using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace Sam3.Torch.Config;

// One typed configuration for every hyperparameter of SAM3, in the schema of shared/parity/*/config.json
// (field names = the builder argument names of sam3/model_builder.py). Property defaults are the full model's
// values, so `new VitConfig()` is the released ViT; Sam3Config.Tiny is the random-init test model.

/// <summary>ViT trunk (sam3/model/vitdet.py ViT).</summary>
public sealed record VitConfig
{
    public int ImgSize { get; init; } = 1008;
    public int PatchSize { get; init; } = 14;
    public int EmbedDim { get; init; } = 1024;
    public int Depth { get; init; } = 32;
    public int NumHeads { get; init; } = 16;
    public double MlpRatio { get; init; } = 4.625;
    public int PretrainImgSize { get; init; } = 336;
    public bool PretrainUseClsToken { get; init; } = true;
    public bool RetainClsToken { get; init; } = false;
    public int WindowSize { get; init; } = 24;
    public int[] GlobalAttBlocks { get; init; } = [7, 15, 23, 31];
    public int[] RelPosBlocks { get; init; } = [];
    public bool UseRope { get; init; } = true;
    public bool UseInterpRope { get; init; } = true;
    public double RopeTheta { get; init; } = 10000.0;
    /// <summary>RoPE reference grid; null means (window_size, window_size) as upstream.</summary>
    public int[]? RopePtSize { get; init; }
    public bool UseAbsPos { get; init; } = true;
    public bool TileAbsPos { get; init; } = true;
    public bool LnPre { get; init; } = true;
    public bool LnPost { get; init; } = false;
    public bool BiasPatchEmbed { get; init; } = false;
    public bool QkvBias { get; init; } = true;
    public double DropPathRate { get; init; } = 0.1;

    [JsonIgnore] public int TokensPerSide => ImgSize / PatchSize;
    [JsonIgnore] public int PretrainTokensPerSide => PretrainImgSize / PatchSize;
    [JsonIgnore] public int MlpHiddenDim => (int)(EmbedDim * MlpRatio);
    [JsonIgnore] public int HeadDim => EmbedDim / NumHeads;
    /// <summary>Side of the RoPE reference grid (rope_pt_size or the window size).</summary>
    [JsonIgnore] public int RopePtSide => RopePtSize is { Length: > 0 } r ? r[0] : WindowSize;
    public bool IsGlobalBlock(int i) => Array.IndexOf(GlobalAttBlocks, i) >= 0;
}

/// <summary>Dual ViTDet neck (Sam3DualViTDetNeck).</summary>
public sealed record NeckConfig
{
    public int DModel { get; init; } = 256;
    public double[] ScaleFactors { get; init; } = [4.0, 2.0, 1.0, 0.5];
    public bool AddSam2Neck { get; init; } = true;
    /// <summary>Number of lowest-resolution levels dropped by SAM3VLBackbone.</summary>
    public int Scalp { get; init; } = 1;
}

/// <summary>PositionEmbeddingSine of the vision neck.</summary>
public sealed record PositionEncodingConfig
{
    public int NumPosFeats { get; init; } = 256;
    public double Temperature { get; init; } = 10000;
    public bool Normalize { get; init; } = true;
    /// <summary>null = 2π as upstream.</summary>
    public double? Scale { get; init; }
}

/// <summary>Text encoder (VETextEncoder + TextTransformer).</summary>
public sealed record TextConfig
{
    public int ContextLength { get; init; } = 32;
    public int VocabSize { get; init; } = 49408;
    public int Width { get; init; } = 1024;
    public int Heads { get; init; } = 16;
    public int Layers { get; init; } = 24;
    public double MlpRatio { get; init; } = 4.0;
    public int DModel { get; init; } = 256;
    public bool UseLnPost { get; init; } = true;
    public bool CausalMask { get; init; } = true;
    /// <summary>Width of the (unused) <c>text_projection</c> parameter: TextTransformer's default output_dim (not a builder argument).</summary>
    [JsonIgnore] public int OutputDim { get; init; } = 512;
    [JsonIgnore] public int MlpHiddenDim => (int)(Width * MlpRatio);
}

/// <summary>Fusion encoder (TransformerEncoderFusion).</summary>
public sealed record EncoderConfig
{
    public int NumLayers { get; init; } = 6;
    public int DModel { get; init; } = 256;
    public int NumHeads { get; init; } = 8;
    public int DimFeedforward { get; init; } = 2048;
    public string Activation { get; init; } = "relu";
    public bool PreNorm { get; init; } = true;
    public bool PosEncAtAttn { get; init; } = true;
    public bool PosEncAtCrossAttnKeys { get; init; } = false;
    public bool PosEncAtCrossAttnQueries { get; init; } = false;
    public int NumFeatureLevels { get; init; } = 1;
    public bool AddPooledTextToImgFeat { get; init; } = false;
    public bool PoolTextWithMask { get; init; } = true;
    /// <summary>Dropout of the layer (attention and FFN); builder value, active only in training.</summary>
    [JsonIgnore] public double Dropout { get; init; } = 0.1;
}

/// <summary>DETR-style decoder (TransformerDecoder).</summary>
public sealed record DecoderConfig
{
    public int NumLayers { get; init; } = 6;
    public int DModel { get; init; } = 256;
    public int NumHeads { get; init; } = 8;
    public int DimFeedforward { get; init; } = 2048;
    public string Activation { get; init; } = "relu";
    public int NumQueries { get; init; } = 200;
    public bool BoxRefine { get; init; } = true;
    public bool Dac { get; init; } = true;
    [JsonPropertyName("boxRPB")] public string BoxRPB { get; init; } = "log";
    public bool PresenceToken { get; init; } = true;
    public bool UseTextCrossAttention { get; init; } = true;
    public bool DacUseSelfattLn { get; init; } = true;
    public int Resolution { get; init; } = 1008;
    public int Stride { get; init; } = 14;
    public bool ReturnIntermediate { get; init; } = true;
}

/// <summary>DotProductScoring.</summary>
public sealed record DotProdScoringConfig
{
    public int DModel { get; init; } = 256;
    public int DProj { get; init; } = 256;
    public int PromptMlpHiddenDim { get; init; } = 2048;
    public int PromptMlpNumLayers { get; init; } = 2;
    public bool PromptMlpResidual { get; init; } = true;
    public string PromptMlpOutNorm { get; init; } = "LayerNorm";
}

/// <summary>UniversalSegmentationHead + PixelDecoder.</summary>
public sealed record SegmentationHeadConfig
{
    public int HiddenDim { get; init; } = 256;
    public int UpsamplingStages { get; init; } = 3;
    public string InterpolationMode { get; init; } = "nearest";
    public int CrossAttendPromptHeads { get; init; } = 8;
    public bool PresenceHead { get; init; } = false;
    public bool AuxMasks { get; init; } = false;
}

/// <summary>CXBlock hyperparameters.</summary>
public sealed record CxBlockConfig
{
    public int Dim { get; init; } = 256;
    public int KernelSize { get; init; } = 7;
    public int Padding { get; init; } = 3;
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? LayerScaleInitValue { get; init; }
}

/// <summary>SequenceGeometryEncoder.</summary>
public sealed record GeometryEncoderConfig
{
    public int DModel { get; init; } = 256;
    public int NumLayers { get; init; } = 3;
    public int NumHeads { get; init; } = 8;
    public int DimFeedforward { get; init; } = 2048;
    public string Activation { get; init; } = "relu";
    public int PosNumPosFeats { get; init; } = 256;
    public CxBlockConfig CxBlock { get; init; } = new();
    public bool EncodeBoxesAsPoints { get; init; } = false;
    public bool PointsDirectProject { get; init; } = true;
    public bool PointsPool { get; init; } = true;
    public bool PointsPosEnc { get; init; } = true;
    public bool BoxesDirectProject { get; init; } = true;
    public bool BoxesPool { get; init; } = true;
    public bool BoxesPosEnc { get; init; } = true;
    public bool AddCls { get; init; } = true;
    public bool AddPostEncodeProj { get; init; } = true;
    public int RoiSize { get; init; } = 7;
    // Switches of the geometry encoder's TransformerEncoderLayer (fixed in model_builder._create_geometry_encoder,
    // not exported to config.json).
    [JsonIgnore] public bool PreNorm { get; init; } = true;
    [JsonIgnore] public bool PosEncAtAttn { get; init; } = false;
    [JsonIgnore] public bool PosEncAtCrossAttnKeys { get; init; } = true;
    [JsonIgnore] public bool PosEncAtCrossAttnQueries { get; init; } = false;
    /// <summary>Dropout of the encode layers; builder value, active only in training.</summary>
    [JsonIgnore] public double Dropout { get; init; } = 0.1;
}

/// <summary>Memory attention of the tracker (TransformerEncoderCrossAttention).</summary>
public sealed record MemoryAttentionConfig
{
    public int NumLayers { get; init; } = 4;
    public int DModel { get; init; } = 256;
    public int DimFeedforward { get; init; } = 2048;
    public int NumHeads { get; init; } = 1;
    public double RopeTheta { get; init; } = 10000.0;
    public int[] FeatSizes { get; init; } = [72, 72];
    public int KvInDim { get; init; } = 64;
    public string Activation { get; init; } = "relu";
    public bool PreNorm { get; init; } = true;
    public bool PosEncAtInput { get; init; } = true;
    public bool PosEncAtAttn { get; init; } = false;
    public bool PosEncAtCrossAttnKeys { get; init; } = true;
    public bool PosEncAtCrossAttnQueries { get; init; } = false;
}

/// <summary>SimpleMaskDownSampler.</summary>
public sealed record MaskDownsamplerConfig
{
    public int EmbedDim { get; init; } = 256;
    public int KernelSize { get; init; } = 3;
    public int Stride { get; init; } = 2;
    public int Padding { get; init; } = 1;
    public int TotalStride { get; init; } = 16;
    public int[] InterpolSize { get; init; } = [1152, 1152];
}

/// <summary>SimpleMaskEncoder (memory encoder).</summary>
public sealed record MemoryEncoderConfig
{
    public int OutDim { get; init; } = 64;
    public int InDim { get; init; } = 256;
    public int PosNumPosFeats { get; init; } = 64;
    public MaskDownsamplerConfig MaskDownsampler { get; init; } = new();
    public int FuserNumLayers { get; init; } = 2;
    public CxBlockConfig CxBlock { get; init; } = new() { LayerScaleInitValue = 1e-6 };
}

/// <summary>SAM-head switches of the tracker.</summary>
public sealed record TrackerSamConfig
{
    public bool MultimaskOutputInSam { get; init; } = true;
    public bool MultimaskOutputForTracking { get; init; } = true;
    public int MultimaskMinPtNum { get; init; } = 0;
    public int MultimaskMaxPtNum { get; init; } = 1;
    public bool DynamicMultimaskViaStability { get; init; } = true;
    public double DynamicMultimaskStabilityDelta { get; init; } = 0.05;
    public double DynamicMultimaskStabilityThresh { get; init; } = 0.98;
}

/// <summary>Sam3TrackerPredictor.</summary>
public sealed record TrackerConfig
{
    public int ImageSize { get; init; } = 1008;
    public int BackboneStride { get; init; } = 14;
    public int NumMaskmem { get; init; } = 7;
    public int HiddenDim { get; init; } = 256;
    public int MemDim { get; init; } = 64;
    public int MaxCondFramesInAttn { get; init; } = 4;
    public int MaxObjPtrsInEncoder { get; init; } = 16;
    public MemoryAttentionConfig MemoryAttention { get; init; } = new();
    public MemoryEncoderConfig MemoryEncoder { get; init; } = new();
    public TrackerSamConfig Sam { get; init; } = new();
    public bool ForwardBackbonePerFrameForEval { get; init; } = true;
    public bool TrimPastNonCondMemForEval { get; init; } = false;
    public bool AlwaysStartFromFirstAnnFrame { get; init; } = false;
    public bool NonOverlapMasksForMemEnc { get; init; } = false;
    public bool NonOverlapMasksForOutput { get; init; } = false;
    public bool ClearNonCondMemAroundInput { get; init; } = true;
    public int FillHoleArea { get; init; } = 0;
    /// <summary>SAM2Long memory selection (video builder: true; false with apply_temporal_disambiguation=False).</summary>
    [JsonIgnore] public bool UseMemorySelection { get; init; } = true;
    /// <summary>Memory selection: a non-conditioning frame is usable when its eff_iou_score exceeds this.</summary>
    [JsonIgnore] public double MfThreshold { get; init; } = 0.01;
    [JsonIgnore] public bool KeepFirstCondFrame { get; init; } = false;
    [JsonIgnore] public int MemoryTemporalStrideForEval { get; init; } = 1;
    /// <summary>Points kept for the prompt encoder (first half + last half; ≤ 0 = all).</summary>
    [JsonIgnore] public int MaxPointNumInPromptEnc { get; init; } = 16;
    [JsonIgnore] public bool ClearNonCondMemForMultiObj { get; init; } = false;
    [JsonIgnore] public int ImageEmbeddingSize => ImageSize / BackboneStride;
    [JsonIgnore] public int LowResMaskSize => 4 * ImageEmbeddingSize;
}

/// <summary>Video-pipeline heuristics (Sam3VideoInference).</summary>
public sealed record VideoConfig
{
    public double ScoreThresholdDetection { get; init; } = 0.5;
    public double AssocIouThresh { get; init; } = 0.1;
    public double DetNmsThresh { get; init; } = 0.1;
    public double NewDetThresh { get; init; } = 0.7;
    public int HotstartDelay { get; init; } = 15;
    public int HotstartUnmatchThresh { get; init; } = 8;
    public int HotstartDupThresh { get; init; } = 8;
    public bool SuppressUnmatchedOnlyWithinHotstart { get; init; } = true;
    public int MinTrkKeepAlive { get; init; } = -1;
    public int MaxTrkKeepAlive { get; init; } = 30;
    public int InitTrkKeepAlive { get; init; } = 30;
    public double SuppressOverlappingBasedOnRecentOcclusionThreshold { get; init; } = 0.7;
    public bool SuppressDetCloseToBoundary { get; init; } = false;
    public int FillHoleArea { get; init; } = 16;
    public int ReconditionEveryNthFrame { get; init; } = 16;
    public bool MaskletConfirmationEnable { get; init; } = false;
    public bool DecreaseTrkKeepAliveForEmptyMasklets { get; init; } = false;
}

/// <summary>
/// Values fixed inside the SAM3 classes (identical for every size upstream), kept in the config so modules
/// take no numbers of their own. JSON names are the keys of config.json's <c>hardcoded_in_classes</c>.
/// </summary>
public sealed record HardcodedConfig
{
    [JsonPropertyName("tracker.sam_prompt_encoder.mask_in_chans")] public int PromptEncoderMaskInChans { get; init; } = 16;
    [JsonPropertyName("tracker.sam_mask_decoder.num_multimask_outputs")] public int NumMultimaskOutputs { get; init; } = 3;
    [JsonPropertyName("tracker.sam_mask_decoder.transformer.depth")] public int TwoWayDepth { get; init; } = 2;
    [JsonPropertyName("tracker.sam_mask_decoder.transformer.mlp_dim")] public int TwoWayMlpDim { get; init; } = 2048;
    [JsonPropertyName("tracker.sam_mask_decoder.transformer.num_heads")] public int TwoWayNumHeads { get; init; } = 8;
    [JsonPropertyName("tracker.sam_mask_decoder.transformer.attention_downsample_rate")] public int TwoWayAttentionDownsampleRate { get; init; } = 2;
    [JsonPropertyName("tracker.sam_mask_decoder.iou_head_depth")] public int IouHeadDepth { get; init; } = 3;
    [JsonPropertyName("tracker.sam_mask_decoder.iou_head_hidden_dim")] public int IouHeadHiddenDim { get; init; } = 256;
    [JsonPropertyName("tracker.sam_mask_decoder.use_high_res_features")] public bool UseHighResFeatures { get; init; } = true;
    [JsonPropertyName("tracker.sam_mask_decoder.iou_prediction_use_sigmoid")] public bool IouPredictionUseSigmoid { get; init; } = true;
    [JsonPropertyName("tracker.sam_mask_decoder.pred_obj_scores")] public bool PredObjScores { get; init; } = true;
    [JsonPropertyName("tracker.sam_mask_decoder.pred_obj_scores_mlp")] public bool PredObjScoresMlp { get; init; } = true;
    [JsonPropertyName("tracker.sam_mask_decoder.use_multimask_token_for_obj_ptr")] public bool UseMultimaskTokenForObjPtr { get; init; } = true;
    [JsonPropertyName("tracker.obj_ptr_proj_mlp_layers")] public int ObjPtrProjMlpLayers { get; init; } = 3;
    [JsonPropertyName("tracker.mask_downsample(conv k4 s4, 1->1 ch)")] public bool TrackerMaskDownsample { get; init; } = true;
    [JsonPropertyName("tracker.sigmoid_scale_for_mem_enc")] public double SigmoidScaleForMemEnc { get; init; } = 20.0;
    [JsonPropertyName("tracker.sigmoid_bias_for_mem_enc")] public double SigmoidBiasForMemEnc { get; init; } = -10.0;
    [JsonPropertyName("tracker.num_feature_levels")] public int TrackerNumFeatureLevels { get; init; } = 3;
    [JsonPropertyName("tracker.no_obj_score")] public double NoObjScore { get; init; } = -1024.0;
    [JsonPropertyName("sam1_predictor.mask_threshold")] public double Sam1MaskThreshold { get; init; } = 0.0;
    [JsonPropertyName("sam1_predictor.max_hole_area")] public double Sam1MaxHoleArea { get; init; } = 256.0;
    [JsonPropertyName("sam1_predictor.max_sprinkle_area")] public double Sam1MaxSprinkleArea { get; init; } = 0.0;
    [JsonPropertyName("sam1_predictor._bb_feat_sizes (hard-coded [(288,288),(144,144),(72,72)] = [(4N,4N),(2N,2N),(N,N)], N=image_size/patch)")]
    public bool Sam1BbFeatSizesFromN { get; init; } = true;
    [JsonPropertyName("decoder.bbox_embed")] public string DecoderBboxEmbed { get; init; } = "MLP(d,d,4,3)";
    [JsonPropertyName("decoder.ref_point_head")] public string DecoderRefPointHead { get; init; } = "MLP(2d,d,d,2)";
    [JsonPropertyName("decoder.presence_token_head")] public string DecoderPresenceTokenHead { get; init; } = "MLP(d,d,1,3)";
    [JsonPropertyName("decoder.boxRPB_embed_x/y")] public string DecoderBoxRpbEmbed { get; init; } = "MLP(2,d,num_heads,2)";
    [JsonPropertyName("decoder.clamp_presence_logit_max_val")] public double ClampPresenceLogitMaxVal { get; init; } = 10.0;
    /// <summary>Upstream quirk: the decoder's presence clamp is a discarded non-in-place op (false = reproduce it).</summary>
    [JsonPropertyName("decoder.clamp_presence_logits_is_effective")] public bool ClampPresenceLogitsIsEffective { get; init; } = false;
    [JsonPropertyName("dot_prod_scoring.clamp_max_val")] public double DotProdClampMaxVal { get; init; } = 12.0;
    [JsonPropertyName("image_model.pred_logits_joint_clamp")] public double PredLogitsJointClamp { get; init; } = 10.0;
    [JsonPropertyName("segmentation_head.pixel_decoder.groupnorm_groups")] public int PixelDecoderGroupNormGroups { get; init; } = 8;
    [JsonPropertyName("segmentation_head.mask_predictor.mask_embed")] public string MaskEmbed { get; init; } = "MLP(d,d,d,3)";
    [JsonPropertyName("geometry_encoder.roi_size")] public int GeometryRoiSize { get; init; } = 7;
    [JsonPropertyName("vit.layer_norm_eps")] public double VitLayerNormEps { get; init; } = 1e-5;
    [JsonPropertyName("vit.act")] public string VitAct { get; init; } = "GELU (exact, erf)";
    [JsonPropertyName("text.act")] public string TextAct { get; init; } = "GELU (exact, erf)";
    [JsonPropertyName("text.layer_norm_eps")] public double TextLayerNormEps { get; init; } = 1e-5;
    [JsonPropertyName("layer_norm2d_eps(memory CXBlock / mask downsampler)")] public double MemoryLayerNorm2dEps { get; init; } = 1e-6;
    [JsonPropertyName("sam_layer_norm2d_eps(mask decoder / prompt encoder)")] public double SamLayerNorm2dEps { get; init; } = 1e-6;
    [JsonPropertyName("tokenizer.clean")] public string TokenizerClean { get; init; } = "lower";

    /// <summary>nn.LayerNorm default eps (fusion encoder, decoder, geometry, dot-product scoring, seg head).</summary>
    [JsonIgnore] public double LayerNormEps { get; init; } = 1e-5;
    /// <summary>nn.GroupNorm default eps.</summary>
    [JsonIgnore] public double GroupNormEps { get; init; } = 1e-5;
    /// <summary>inverse_sigmoid eps (model_misc.inverse_sigmoid).</summary>
    [JsonIgnore] public double InverseSigmoidEps { get; init; } = 1e-3;
    /// <summary>boxRPB "log" scale: deltas ×8 before sign·log2(|d|+1)/log2(8).</summary>
    [JsonIgnore] public double BoxRpbLogScale { get; init; } = 8.0;
    /// <summary>Dropout of the decoder layers and their attentions (model_builder passes 0.1; active only when training).</summary>
    [JsonIgnore] public double DecoderDropout { get; init; } = 0.1;
    /// <summary>Dropout inside DotProductScoring's prompt MLP (model_builder passes 0.1; active only when training).</summary>
    [JsonIgnore] public double DotProdPromptMlpDropout { get; init; } = 0.1;
    /// <summary>Dropout of the segmentation head's cross_attend_prompt attention (model_builder passes 0).</summary>
    [JsonIgnore] public double SegCrossAttendPromptDropout { get; init; } = 0.0;
    /// <summary>MaskDecoder object-score logit used when pred_obj_scores is off ("present": sigmoid(10) ≈ 1).</summary>
    [JsonIgnore] public double NoObjScoreDefaultLogit { get; init; } = 10.0;
    /// <summary>Memory attention input: <c>src + scale·src_pos</c> before layer 0 (TransformerEncoderCrossAttention).</summary>
    [JsonIgnore] public double MemoryAttentionInputPosScale { get; init; } = 0.1;
    /// <summary>Temperature of the tracker's temporal object-pointer encoding (get_1d_sine_pe).</summary>
    [JsonIgnore] public double ObjPtrTposTemperature { get; init; } = 10000.0;
    /// <summary>Tracker <c>_use_mask_as_output</c>: mask → logits as <c>m·scale + bias</c> (±10).</summary>
    [JsonIgnore] public double MaskAsOutputScale { get; init; } = 20.0;
    [JsonIgnore] public double MaskAsOutputBias { get; init; } = -10.0;
    /// <summary>Kernel = stride of the tracker's <c>mask_downsample</c> conv (input-mask size / low-res mask size).</summary>
    [JsonIgnore] public int TrackerMaskDownsampleStride { get; init; } = 4;
    /// <summary>SAM1 post-processing: filled holes become threshold + offset, removed sprinkles threshold − offset.</summary>
    [JsonIgnore] public double Sam1FillLogitOffset { get; init; } = 10.0;
    /// <summary>SAM1 predictor: returned low-res logits are clamped to ±this (they may be fed back as mask_input).</summary>
    [JsonIgnore] public double Sam1LowResLogitClamp { get; init; } = 32.0;
    /// <summary>Video fill_holes_in_mask_scores: filled holes become +value, removed sprinkles −value.</summary>
    [JsonIgnore] public double VideoFillHoleLogit { get; init; } = 0.1;
    /// <summary>Tracker non-overlap constraint: scores of non-winning objects are clamped to at most this logit.</summary>
    [JsonIgnore] public double NonOverlapSuppressLogit { get; init; } = -10.0;
}

/// <summary>Sizes derived from the other sections (config.json's <c>derived</c>); written for reference, recomputed on read.</summary>
public sealed record DerivedConfig
{
    [JsonPropertyName("tokens_per_side(N)")] public int TokensPerSide { get; init; }
    [JsonPropertyName("pretrain_tokens_per_side")] public int PretrainTokensPerSide { get; init; }
    [JsonPropertyName("global_rope_scale_pos")] public double GlobalRopeScalePos { get; init; }
    [JsonPropertyName("neck_sizes")] public int[] NeckSizes { get; init; } = [];
    [JsonPropertyName("neck_sizes_after_scalp")] public int[] NeckSizesAfterScalp { get; init; } = [];
    [JsonPropertyName("sam1_bb_feat_sizes")] public int[][] Sam1BbFeatSizes { get; init; } = [];
    [JsonPropertyName("tracker.sam_image_embedding_size")] public int TrackerSamImageEmbeddingSize { get; init; }
    [JsonPropertyName("tracker.low_res_mask_size")] public int TrackerLowResMaskSize { get; init; }
    [JsonPropertyName("tracker.input_mask_size")] public int TrackerInputMaskSize { get; init; }
    [JsonPropertyName("mlp_hidden_dim(vit)")] public int VitMlpHiddenDim { get; init; }
}

/// <summary>The whole SAM3 configuration. <see cref="Full"/> is the released model, <see cref="Tiny"/> the test model.</summary>
public sealed record Sam3Config
{
    public string Name { get; init; } = "sam3-full";
    public int ImageSize { get; init; } = 1008;
    public double[] ImageMean { get; init; } = [0.5, 0.5, 0.5];
    public double[] ImageStd { get; init; } = [0.5, 0.5, 0.5];
    public VitConfig Vit { get; init; } = new();
    public NeckConfig Neck { get; init; } = new();
    public PositionEncodingConfig PositionEncoding { get; init; } = new();
    public TextConfig Text { get; init; } = new();
    public EncoderConfig Encoder { get; init; } = new();
    public DecoderConfig Decoder { get; init; } = new();
    public DotProdScoringConfig DotProdScoring { get; init; } = new();
    public SegmentationHeadConfig SegmentationHead { get; init; } = new();
    public GeometryEncoderConfig GeometryEncoder { get; init; } = new();
    public TrackerConfig Tracker { get; init; } = new();
    public VideoConfig Video { get; init; } = new();
    public HardcodedConfig HardcodedInClasses { get; init; } = new();

    /// <summary>Derived sizes, always computed from the sections above.</summary>
    public DerivedConfig Derived
    {
        get
        {
            int n = Vit.TokensPerSide;
            var neck = Neck.ScaleFactors.Select(s => (int)(n * s)).ToArray();
            return new DerivedConfig
            {
                TokensPerSide = n,
                PretrainTokensPerSide = Vit.PretrainTokensPerSide,
                GlobalRopeScalePos = (double)Vit.RopePtSide / n,
                NeckSizes = neck,
                NeckSizesAfterScalp = neck.Take(neck.Length - Neck.Scalp).ToArray(),
                Sam1BbFeatSizes = [[4 * n, 4 * n], [2 * n, 2 * n], [n, n]],
                TrackerSamImageEmbeddingSize = Tracker.ImageEmbeddingSize,
                TrackerLowResMaskSize = Tracker.LowResMaskSize,
                TrackerInputMaskSize = Tracker.MemoryEncoder.MaskDownsampler.InterpolSize[0],
                VitMlpHiddenDim = Vit.MlpHiddenDim,
            };
        }
        init { /* recomputed; accepted on read for schema compatibility */ }
    }

    /// <summary>Sections of config.json this port does not interpret (init, parameter counts, ...), kept for round trips.</summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? Extra { get; init; }

    /// <summary>N = image_size / patch_size.</summary>
    [JsonIgnore] public int TokensPerSide => Vit.TokensPerSide;
    [JsonIgnore] public int DModel => Neck.DModel;

    /// <summary>The released SAM3 model (shared/parity/full/config.json).</summary>
    public static Sam3Config Full { get; } = new();

    /// <summary>The small random-init model of the parity fixtures (shared/parity/tiny/config.json, structural part).</summary>
    public static Sam3Config Tiny { get; } = new()
    {
        Name = "sam3-tiny-random",
        ImageSize = 336,
        Vit = new VitConfig { ImgSize = 336, EmbedDim = 64, Depth = 4, NumHeads = 4, PretrainImgSize = 112, WindowSize = 8, GlobalAttBlocks = [1, 3] },
        Neck = new NeckConfig { DModel = 32 },
        PositionEncoding = new PositionEncodingConfig { NumPosFeats = 32 },
        Text = new TextConfig { Width = 32, Heads = 2, Layers = 2, DModel = 32 },
        Encoder = new EncoderConfig { NumLayers = 2, DModel = 32, NumHeads = 4, DimFeedforward = 64 },
        Decoder = new DecoderConfig { NumLayers = 3, DModel = 32, NumHeads = 4, DimFeedforward = 64, NumQueries = 16, Resolution = 336 },
        DotProdScoring = new DotProdScoringConfig { DModel = 32, DProj = 32, PromptMlpHiddenDim = 64 },
        SegmentationHead = new SegmentationHeadConfig { HiddenDim = 32, CrossAttendPromptHeads = 4 },
        GeometryEncoder = new GeometryEncoderConfig { DModel = 32, NumLayers = 2, NumHeads = 4, DimFeedforward = 64, PosNumPosFeats = 32, CxBlock = new CxBlockConfig { Dim = 32 } },
        Tracker = new TrackerConfig
        {
            ImageSize = 336, HiddenDim = 32, MemDim = 16,
            MemoryAttention = new MemoryAttentionConfig { NumLayers = 2, DModel = 32, DimFeedforward = 64, FeatSizes = [24, 24], KvInDim = 16 },
            MemoryEncoder = new MemoryEncoderConfig
            {
                OutDim = 16, InDim = 32, PosNumPosFeats = 16,
                MaskDownsampler = new MaskDownsamplerConfig { EmbedDim = 32, InterpolSize = [384, 384] },
                CxBlock = new CxBlockConfig { Dim = 32, LayerScaleInitValue = 1e-6 },
            },
        },
    };

    public static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Skip,
    };

    /// <summary>Reads a config.json of the parity schema. Unknown top-level sections are kept in <see cref="Extra"/>.</summary>
    public static Sam3Config FromJson(string json)
    {
        try
        {
            var config = JsonSerializer.Deserialize<Sam3Config>(json, JsonOptions) ?? throw new Sam3ConfigException("configuration JSON is null");
            ConfigValidation.Check(config); // a negative size fails here, naming the field, not in LibTorch
            return config;
        }
        catch (JsonException e)
        {
            throw new Sam3ConfigException($"invalid configuration JSON: {e.Message}", e);
        }
    }

    /// <summary>Reads a config file (schema of shared/parity/*/config.json).</summary>
    public static Sam3Config Load(string path)
    {
        if (!File.Exists(path)) throw new Sam3ConfigException($"configuration file not found: {path}");
        try
        {
            return FromJson(File.ReadAllText(path));
        }
        catch (Sam3ConfigException e) when (!e.Message.StartsWith(path, StringComparison.Ordinal))
        {
            throw new Sam3ConfigException($"{path}: {e.Message}", e);
        }
    }

    /// <summary>"full", "tiny", or the path of a config.json.</summary>
    public static Sam3Config Resolve(string nameOrPath) => nameOrPath.ToLowerInvariant() switch
    {
        "full" => Full,
        "tiny" => Tiny,
        _ => Load(nameOrPath),
    };

    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    public void Save(string path) => File.WriteAllText(path, ToJson());

    /// <summary>
    /// Structural equality (every hyperparameter, ignoring <see cref="Name"/> and <see cref="Extra"/>), via the JSON form so
    /// arrays compare by value.
    /// </summary>
    public bool SameArchitecture(Sam3Config other)
    {
        static JsonNode? Strip(Sam3Config c)
        {
            var node = JsonNode.Parse(JsonSerializer.Serialize(c with { Name = "", Extra = null }, JsonOptions));
            return node;
        }
        return JsonNode.DeepEquals(Strip(this), Strip(other));
    }
}
