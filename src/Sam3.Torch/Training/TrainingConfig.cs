namespace Sam3.Torch.Training;

// One typed configuration for fine-tuning the SAM3 detector. Defaults are the values of the official fine-tuning config
// sam3/train/configs/roboflow_v100/roboflow_v100_full_ft_100_images.yaml in its segmentation variant (the commented
// "Loss to be used for training in case of segmentation" block with Masks and SemanticSegCriterion), scratch.* and
// trainer.optim.*; the matcher is model_builder._create_sam3_model(eval_mode=False)'s BinaryHungarianMatcherV2.
// Names follow the upstream constructor arguments.

/// <summary>sam3.train.matcher.BinaryHungarianMatcherV2 (the one-to-one matcher, in the model and in the loss).</summary>
internal sealed record HungarianMatcherConfig
{
    public double CostClass { get; init; } = 2.0;
    public double CostBbox { get; init; } = 5.0;
    public double CostGiou { get; init; } = 2.0;
    /// <summary>Focal classification cost (<c>focal</c>); false = <c>-sigmoid(logit)</c>.</summary>
    public bool Focal { get; init; } = true;
    public double Alpha { get; init; } = 0.25;
    public double Gamma { get; init; } = 2.0;
    /// <summary><c>stable</c>: focal cost on <c>sigmoid(logit)·(GIoU+1)/2</c> instead of the plain probability.</summary>
    public bool Stable { get; init; } = false;
    /// <summary>Queries without targets (negatives) are skipped.</summary>
    public bool RemoveSamplesWith0Gt { get; init; } = true;
}

/// <summary>sam3.train.matcher.BinaryOneToManyMatcher (DAC one-to-many queries).</summary>
internal sealed record OneToManyMatcherConfig
{
    /// <summary>C = alpha·sigmoid(logit) + (1-alpha)·IoU.</summary>
    public double Alpha { get; init; } = 0.3;
    /// <summary>A pair matches only when C &gt; threshold.</summary>
    public double Threshold { get; init; } = 0.4;
    /// <summary>A pair matches only when C &gt; quantile(C over queries, 1 - topk/Q).</summary>
    public int Topk { get; init; } = 4;
}

/// <summary>sam3.train.loss.loss_fns.Boxes.</summary>
internal sealed record BoxesLossConfig
{
    public double LossBbox { get; init; } = 5.0;
    public double LossGiou { get; init; } = 2.0;
    /// <summary>Applied to aux outputs too (<c>compute_aux</c>).</summary>
    public bool ComputeAux { get; init; } = true;
}

/// <summary>sam3.train.loss.loss_fns.IABCEMdetr (IoU-aware BCE with the presence loss).</summary>
internal sealed record IabceLossConfig
{
    public double LossCe { get; init; } = 20.0;
    public double PresenceLoss { get; init; } = 20.0;
    public double PosWeight { get; init; } = 10.0;
    /// <summary>Soft positive target <c>p^alpha·IoU^(1-alpha)</c>.</summary>
    public double Alpha { get; init; } = 0.25;
    /// <summary>Negatives weighted by <c>p^gamma</c>.</summary>
    public double Gamma { get; init; } = 2.0;
    public bool WeakLoss { get; init; } = false;
    public bool UsePresence { get; init; } = true;
    public bool PosFocal { get; init; } = false;
    /// <summary>
    /// <c>pad_n_queries</c>: with Q &lt; pad_n_queries the CE sum is divided by pad_n_queries·B instead of Q·B (config 200 =
    /// the full model's query count). Null = no padding (mean over B·Q).
    /// </summary>
    public int? PadNQueries { get; init; } = 200;
    public double PadScalePos { get; init; } = 1.0;
    public double PresenceAlpha { get; init; } = 0.5;
    public double PresenceGamma { get; init; } = 0.0;
    public bool ComputeAux { get; init; } = true;
}

/// <summary>sam3.train.loss.loss_fns.Masks (focal + dice on upsampled mask logits, final output only).</summary>
internal sealed record MasksLossConfig
{
    public double LossMask { get; init; } = 200.0;
    public double LossDice { get; init; } = 10.0;
    public double FocalAlpha { get; init; } = 0.25;
    public double FocalGamma { get; init; } = 2.0;
    public bool ComputeAux { get; init; } = false;
}

/// <summary>sam3.train.loss.loss_fns.SemanticSegCriterion.</summary>
internal sealed record SemanticSegLossConfig
{
    public double LossSemanticSeg { get; init; } = 20.0;
    public double LossSemanticPresence { get; init; } = 1.0;
    public double LossSemanticDice { get; init; } = 30.0;
    public bool Focal { get; init; } = true;
    public double FocalAlpha { get; init; } = 0.6;
    public double FocalGamma { get; init; } = 2.0;
    /// <summary>True: targets downsampled to the logits' size; false: logits upsampled to the targets' size.</summary>
    public bool Downsample { get; init; } = false;
    /// <summary>Average over queries with a non-empty target only.</summary>
    public bool PresenceHead { get; init; } = true;
    /// <summary>BCE on the semantic head's presence logit (false: the decoder's presence loss does it).</summary>
    public bool PresenceLoss { get; init; } = false;
}

/// <summary>How losses are normalised by the number of target boxes (Sam3LossWrapper <c>normalization</c>).</summary>
internal enum LossNormalization { Global, Local, None }

/// <summary>sam3.train.loss.sam3_loss.Sam3LossWrapper and the loss functions it runs.</summary>
internal sealed record LossConfig
{
    /// <summary>Multiplies every entry of the one-to-many outputs' loss dicts (metrics included, as upstream).</summary>
    public double O2mWeight { get; init; } = 2.0;
    /// <summary>False: the aux outputs' o2m predictions are matched with the Hungarian matcher.</summary>
    public bool UseO2mMatcherOnO2mAux { get; init; } = false;
    /// <summary>core_loss × sqrt(number of find queries).</summary>
    public bool ScaleByFindBatchSize { get; init; } = true;
    public LossNormalization Normalization { get; init; } = LossNormalization.Global;
    public bool NormalizeByValidObjectNum { get; init; } = false;
    public BoxesLossConfig Boxes { get; init; } = new();
    public IabceLossConfig Iabce { get; init; } = new();
    /// <summary>Null = box-only training (the yaml's enabled block).</summary>
    public MasksLossConfig? Masks { get; init; } = new();
    /// <summary>Null = no semantic segmentation loss.</summary>
    public SemanticSegLossConfig? SemanticSeg { get; init; } = new();
}

/// <summary>Learning rates and weight decay of construct_optimizer's parameter groups (trainer.optim.options).</summary>
internal sealed record OptimizerConfig
{
    /// <summary><c>scratch.lr_scale</c>: every base lr below is multiplied by it.</summary>
    public double LrScale { get; init; } = 0.1;
    /// <summary>Transformer, heads and everything not in a backbone (default group).</summary>
    public double LrTransformerBase { get; init; } = 8e-4;
    /// <summary><c>backbone.vision_backbone.*</c>.</summary>
    public double LrVisionBackboneBase { get; init; } = 2.5e-4;
    /// <summary><c>backbone.language_backbone.*</c>.</summary>
    public double LrLanguageBackboneBase { get; init; } = 5e-5;
    public string VisionBackbonePattern { get; init; } = "backbone.vision_backbone.*";
    public string LanguageBackbonePattern { get; init; } = "backbone.language_backbone.*";
    /// <summary>Layer-wise lr decay of the ViT trunk (layer_decay_param_modifier).</summary>
    public double LayerDecay { get; init; } = 0.9;
    public double? LayerDecayMin { get; init; } = null;
    public string LayerDecayApplyTo { get; init; } = "backbone.vision_backbone.trunk";
    /// <summary>Layer-decay overrides (pattern → fixed scale), first match wins.</summary>
    public IReadOnlyList<(string Pattern, double Value)> LayerDecayOverrides { get; init; } = [("*pos_embed*", 1.0)];
    public double WeightDecay { get; init; } = 0.1;
    /// <summary>Parameters matching these patterns get weight decay 0.</summary>
    public IReadOnlyList<string> NoWeightDecayPatterns { get; init; } = ["*bias*"];
    /// <summary>Parameters owned directly by a torch.nn.LayerNorm module get weight decay 0.</summary>
    public bool NoWeightDecayForLayerNorm { get; init; } = true;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
}

/// <summary>sam3.train.optim.schedulers.InverseSquareRootParamScheduler.</summary>
internal sealed record ScheduleConfig
{
    public int Timescale { get; init; } = 20;
    public int WarmupSteps { get; init; } = 20;
    public int CooldownSteps { get; init; } = 20;
}

/// <summary>sam3.train.optim.optimizer.GradientClipper (clip_grad_norm_ over every parameter with a gradient).</summary>
internal sealed record GradientClipConfig
{
    /// <summary>Null = no clipping.</summary>
    public double? MaxNorm { get; init; } = 0.1;
    public double NormType { get; init; } = 2.0;
}

/// <summary>Everything of a fine-tuning step: matchers, losses, optimizer, schedule and clipping.</summary>
internal sealed record TrainingConfig
{
    public HungarianMatcherConfig Matcher { get; init; } = new();
    public OneToManyMatcherConfig O2mMatcher { get; init; } = new();
    public LossConfig Loss { get; init; } = new();
    public OptimizerConfig Optimizer { get; init; } = new();
    public ScheduleConfig Schedule { get; init; } = new();
    public GradientClipConfig GradientClip { get; init; } = new();

    /// <summary>The fine-tuning config's values (roboflow_v100_full_ft_100_images.yaml, segmentation variant).</summary>
    public static TrainingConfig Default { get; } = new();
}
