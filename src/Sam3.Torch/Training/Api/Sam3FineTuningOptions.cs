using System.Globalization;
using Sam3.Torch.Config;

namespace Sam3.Torch.Training;

/// <summary>Which part of the detector <see cref="Sam3FineTuning"/> keeps frozen (not trained).</summary>
public enum Sam3FreezePreset
{
    /// <summary>Every parameter of the detector trains.</summary>
    None,
    /// <summary>The vision backbone (ViT trunk and its FPN necks) is frozen.</summary>
    VisionEncoder,
    /// <summary>The text encoder is frozen.</summary>
    TextEncoder,
    /// <summary>Both backbones (vision and text) are frozen; the fusion encoder, decoder and heads train.</summary>
    AllBackbones,
    /// <summary>Only the prediction heads train (scoring, segmentation head, the decoder's box and presence heads).</summary>
    AllButHeads,
}

/// <summary>Which projections a <see cref="Sam3LoraPart"/> adapts.</summary>
public enum Sam3LoraTarget
{
    /// <summary>Attention projections: q/k/v/out of every attention and the ViT's fused qkv and output projections.</summary>
    Attention,
    /// <summary>MLP projections: the ViT's <c>mlp.fc1/fc2</c> and the transformer layers' <c>linear1/linear2</c>.</summary>
    Mlp,
}

/// <summary>LoRA adapters of one kind of projection: rank and scale (the adapter's update is scaled by <see cref="Alpha"/>/<see cref="Rank"/>).</summary>
public sealed record Sam3LoraPart
{
    /// <summary>The projections adapted.</summary>
    public Sam3LoraTarget Target { get; init; } = Sam3LoraTarget.Attention;

    /// <summary>Rank of each adapter (≥ 1; default 8).</summary>
    public int Rank { get; init; } = 8;

    /// <summary>Scale numerator (&gt; 0; default 16).</summary>
    public double Alpha { get; init; } = 16;
}

/// <summary>
/// Options of <see cref="Sam3FineTuning.Run"/>: what to train on, what to train, and for how long. Every value is checked
/// by <see cref="Validate"/> (called by <see cref="Sam3FineTuning.Run"/>) before anything is loaded; a bad value is an
/// <see cref="ArgumentException"/> whose <see cref="ArgumentException.ParamName"/> is the property's name.
/// </summary>
/// <example>
/// <code>
/// var result = Sam3FineTuning.Run(new Sam3FineTuningOptions
/// {
///     CheckpointPath = "sam3/", DataDirectory = "my-roboflow-export/", OutputDirectory = "runs/1",
///     Freeze = Sam3FreezePreset.AllBackbones, Epochs = 5,
/// });
/// Console.WriteLine($"{result.ModelPath}: box AP {result.Baseline?.Box.AP:F3} → {result.FineTuned?.Box.AP:F3}");
/// </code>
/// </example>
public sealed record Sam3FineTuningOptions
{
    /// <summary>The model to start from: a checkpoint file or a folder holding one (as <see cref="Sam3Model.Load"/>).</summary>
    public required string CheckpointPath { get; init; }

    /// <summary>
    /// A COCO folder in the Roboflow layout: <c>train/_annotations.coco.json</c> with its images (category names are
    /// the text queries), and optionally <c>valid/</c> or <c>test/</c> for the before/after evaluation.
    /// </summary>
    public required string DataDirectory { get; init; }

    /// <summary>
    /// Where the run writes: <c>checkpoint/</c> (weights, optimizer and trainer state, after every epoch and when
    /// stopped), <c>losses.csv</c>, <c>tensorboard/</c>, <c>model.safetensors</c> (the result, in the released layout),
    /// <c>lora.safetensors</c> with LoRA, <c>baseline.json</c> and <c>summary.json</c> with evaluation.
    /// </summary>
    public required string OutputDirectory { get; init; }

    /// <summary>The architecture; null as <see cref="Sam3ModelOptions.Config"/> (config.json beside the checkpoint, its metadata, else the released model).</summary>
    public Sam3Config? Config { get; init; }

    /// <summary>Tokenizer vocabulary; null: looked for beside the checkpoint (as <see cref="Sam3ModelOptions.TokenizerPath"/>).</summary>
    public string? TokenizerPath { get; init; }

    /// <summary>Frozen part of the detector (default: nothing frozen). Must be <see cref="Sam3FreezePreset.None"/> with <see cref="Lora"/>.</summary>
    public Sam3FreezePreset Freeze { get; init; } = Sam3FreezePreset.None;

    /// <summary>
    /// Further frozen parameters: module prefixes (<c>transformer.encoder</c>) or globs over the dotted parameter name
    /// (<c>*.norm*</c>). Each must match a parameter of the detector. Null or empty: none.
    /// </summary>
    public IReadOnlyList<string>? FrozenModules { get; init; }

    /// <summary>
    /// LoRA adapters to train instead of the base weights (which stay frozen and unchanged); null: no LoRA. At most one
    /// part per <see cref="Sam3LoraTarget"/>. The adapters are written to <c>lora.safetensors</c> and merged into the
    /// written model.
    /// </summary>
    public IReadOnlyList<Sam3LoraPart>? Lora { get; init; }

    /// <summary>Epochs over the training split (≥ 1; default 1).</summary>
    public int Epochs { get; init; } = 1;

    /// <summary>
    /// Stop after this many optimizer steps in this call (saving a resumable checkpoint, as a cancellation does); null
    /// (default): run to the end of the schedule. The schedule itself is always <see cref="Epochs"/> long.
    /// </summary>
    public int? MaxSteps { get; init; }

    /// <summary>Multiplies upstream's per-part learning rates (its <c>scratch.lr_scale</c>; &gt; 0, default 0.1).</summary>
    public double LearningRateScale { get; init; } = 0.1;

    /// <summary>Linear warm-up of the learning rate, in optimizer steps (≥ 0; default 20 as upstream).</summary>
    public int WarmupSteps { get; init; } = 20;

    /// <summary>Linear cool-down at the end of the schedule, in optimizer steps (≥ 0; default 20 as upstream).</summary>
    public int CooldownSteps { get; init; } = 20;

    /// <summary>Images per micro-batch (≥ 1; default 1).</summary>
    public int BatchSize { get; init; } = 1;

    /// <summary>Micro-batches per optimizer step (gradient accumulation; ≥ 1, default 1).</summary>
    public int AccumulationSteps { get; init; } = 1;

    /// <summary>Seed of the data order, the random transforms and dropout (≥ 0; default 0). Same seed, same run.</summary>
    public int Seed { get; init; }

    /// <summary>
    /// Continue from <c>OutputDirectory/checkpoint</c> when one is there (default). False: a checkpoint there is an error
    /// (<see cref="Sam3StateException"/>) instead of being continued.
    /// </summary>
    public bool Resume { get; init; } = true;

    /// <summary>
    /// Evaluate the source model (the zero-shot baseline, kept in <c>baseline.json</c>) and the result on the
    /// validation split (default true; skipped when the data has no such split and <see cref="EvaluationSplit"/> is null).
    /// </summary>
    public bool Evaluate { get; init; } = true;

    /// <summary>The split evaluated; null (default): <c>valid</c>, else <c>test</c>. A named split must exist.</summary>
    public string? EvaluationSplit { get; init; }

    /// <summary>Write TensorBoard event files to <c>OutputDirectory/tensorboard</c> (default true).</summary>
    public bool TensorBoard { get; init; } = true;

    /// <summary>Checks every value; the exception's <see cref="ArgumentException.ParamName"/> names the offending property.</summary>
    /// <exception cref="ArgumentException">A value is missing, out of range or contradicts another.</exception>
    public void Validate()
    {
        static string S(double v) => v.ToString(CultureInfo.InvariantCulture);
        if (string.IsNullOrWhiteSpace(CheckpointPath)) throw new ArgumentException("CheckpointPath must name a checkpoint file or folder", nameof(CheckpointPath));
        if (string.IsNullOrWhiteSpace(DataDirectory)) throw new ArgumentException("DataDirectory must name a COCO folder", nameof(DataDirectory));
        if (string.IsNullOrWhiteSpace(OutputDirectory)) throw new ArgumentException("OutputDirectory must name a folder", nameof(OutputDirectory));
        if (!Enum.IsDefined(Freeze)) throw new ArgumentOutOfRangeException(nameof(Freeze), Freeze, $"Freeze {Freeze} is not a Sam3FreezePreset");
        if (Epochs < 1) throw new ArgumentOutOfRangeException(nameof(Epochs), Epochs, $"Epochs must be at least 1, got {Epochs}");
        if (MaxSteps is < 1) throw new ArgumentOutOfRangeException(nameof(MaxSteps), MaxSteps, $"MaxSteps must be at least 1 (or null), got {MaxSteps}");
        if (!(LearningRateScale > 0) || !double.IsFinite(LearningRateScale))
            throw new ArgumentOutOfRangeException(nameof(LearningRateScale), LearningRateScale, $"LearningRateScale must be a positive number, got {S(LearningRateScale)}");
        if (WarmupSteps < 0) throw new ArgumentOutOfRangeException(nameof(WarmupSteps), WarmupSteps, $"WarmupSteps must not be negative, got {WarmupSteps}");
        if (CooldownSteps < 0) throw new ArgumentOutOfRangeException(nameof(CooldownSteps), CooldownSteps, $"CooldownSteps must not be negative, got {CooldownSteps}");
        if (BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, $"BatchSize must be at least 1, got {BatchSize}");
        if (AccumulationSteps < 1)
            throw new ArgumentOutOfRangeException(nameof(AccumulationSteps), AccumulationSteps, $"AccumulationSteps must be at least 1, got {AccumulationSteps}");
        if (Seed < 0) throw new ArgumentOutOfRangeException(nameof(Seed), Seed, $"Seed must not be negative, got {Seed}");
        if (EvaluationSplit is { } split && (string.IsNullOrWhiteSpace(split) || split.IndexOfAny(['/', '\\']) >= 0 || split is "." or ".."))
            throw new ArgumentException($"EvaluationSplit must be a split folder's name (valid, test, ...), got '{split}'", nameof(EvaluationSplit));
        foreach (var pattern in FrozenModules ?? [])
            if (string.IsNullOrWhiteSpace(pattern)) throw new ArgumentException("FrozenModules holds an empty pattern", nameof(FrozenModules));
        if (Lora is { } lora)
        {
            if (lora.Count == 0) throw new ArgumentException("Lora must hold at least one part (or be null for no LoRA)", nameof(Lora));
            foreach (var part in lora)
            {
                if (part is null) throw new ArgumentException("Lora holds a null part", nameof(Lora));
                if (!Enum.IsDefined(part.Target)) throw new ArgumentException($"Lora target {part.Target} is not a Sam3LoraTarget", nameof(Lora));
                if (part.Rank < 1) throw new ArgumentException($"Lora rank must be at least 1, got {part.Rank} for {part.Target}", nameof(Lora));
                if (!(part.Alpha > 0) || !double.IsFinite(part.Alpha))
                    throw new ArgumentException($"Lora alpha must be a positive number, got {S(part.Alpha)} for {part.Target}", nameof(Lora));
            }
            if (lora.GroupBy(p => p.Target).FirstOrDefault(g => g.Count() > 1) is { } twice)
                throw new ArgumentException($"Lora names {twice.Key} twice", nameof(Lora));
            if (Freeze != Sam3FreezePreset.None)
                throw new ArgumentException($"Freeze {Freeze} does not apply with Lora: LoRA trains the adapters alone (the base weights are frozen)", nameof(Freeze));
            if (FrozenModules is { Count: > 0 })
                throw new ArgumentException("FrozenModules does not apply with Lora: LoRA trains the adapters alone (the base weights are frozen)", nameof(FrozenModules));
        }
    }
}
