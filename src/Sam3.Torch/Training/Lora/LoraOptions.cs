namespace Sam3.Torch.Training.Lora;

/// <summary>
/// One group of adapted projections: every target whose name matches one of <see cref="Patterns"/> (globs or prefixes, as
/// <see cref="ParameterFreezing.Matches"/>) gets an adapter of rank <see cref="Rank"/> scaled by <see cref="Alpha"/>/rank.
/// Target names are module names of the image model: Linear layers (<c>….attn.qkv</c>, <c>….attn.proj</c>,
/// <c>….mlp.fc1</c>, <c>….linear1</c>, <c>….out_proj</c>) and the q/k/v parts of an attention's fused input projection
/// (<c>….self_attn.q_proj</c>, <c>.k_proj</c>, <c>.v_proj</c>).
/// </summary>
internal sealed record LoraPart(string Name, IReadOnlyList<string> Patterns, int Rank, double Alpha)
{
    /// <summary>Attention projections everywhere: q/k/v/out of every attention and the ViT's fused qkv and proj.</summary>
    public static LoraPart Attention(int rank = 8, double alpha = 16) =>
        new("attention", ["*.q_proj", "*.k_proj", "*.v_proj", "*.out_proj", "*.attn.qkv", "*.attn.proj"], rank, alpha);

    /// <summary>MLP projections: ViT <c>mlp.fc1/fc2</c>, fusion encoder / decoder / geometry encoder <c>linear1/linear2</c>.</summary>
    public static LoraPart Mlp(int rank = 8, double alpha = 16) =>
        new("mlp", ["*.mlp.fc1", "*.mlp.fc2", "*.linear1", "*.linear2"], rank, alpha);
}

/// <summary>LoRA configuration: parts in priority order (a target takes the first part that matches it).</summary>
internal sealed record LoraOptions
{
    public required IReadOnlyList<LoraPart> Parts { get; init; }

    /// <summary>Base weights frozen when the adapters are attached (the usual LoRA setup; heads can be unfrozen afterwards).</summary>
    public bool FreezeBase { get; init; } = true;

    /// <summary>Adapters skip the interactive heads (not part of detector training).</summary>
    internal const string ExcludedPrefix = "inst_interactive_predictor";
}
