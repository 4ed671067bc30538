using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Heads;

/// <summary>
/// Classification logits as a scaled dot product between the decoder queries and the mean-pooled prompt
/// (sam3/model/model_misc.py DotProductScoring): <c>p = prompt_mlp(prompt)</c> (residual MLP + LayerNorm), masked mean over
/// the prompt tokens (valid count clamped to ≥ 1), <c>prompt_proj(p) · hs_proj(hs) / √d_proj</c>, clamped to
/// ±clamp_max_val. Keys: <c>prompt_mlp.layers.{i}.*, prompt_mlp.out_norm.*, prompt_proj.*, hs_proj.*</c>.
/// </summary>
internal sealed class DotProductScoring : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    public readonly Mlp? prompt_mlp;
    public readonly Linear prompt_proj;
    public readonly Linear hs_proj;

    public int d_proj { get; }
    public double scale { get; }
    /// <summary>Clamp bound of the logits (null = no clamp).</summary>
    public double? clamp_max_val { get; }

    public DotProductScoring(Sam3Config cfg) : this(cfg.DotProdScoring, cfg.HardcodedInClasses) { }

    public DotProductScoring(DotProdScoringConfig c, HardcodedConfig hc, bool usePromptMlp = true, bool clampLogits = true)
        : base(nameof(DotProductScoring))
    {
        d_proj = c.DProj;
        if (usePromptMlp)
        {
            double? outNormEps = c.PromptMlpOutNorm switch
            {
                "LayerNorm" => hc.LayerNormEps,
                "" or "none" or "None" or "Identity" => null,
                _ => throw new Sam3ConfigException($"unknown dot_prod_scoring.prompt_mlp_out_norm '{c.PromptMlpOutNorm}' (expected LayerNorm or none)"),
            };
            prompt_mlp = new Mlp(c.DModel, c.PromptMlpHiddenDim, c.DModel, c.PromptMlpNumLayers,
                dropout: hc.DotProdPromptMlpDropout, residual: c.PromptMlpResidual, outNormEps: outNormEps);
        }
        prompt_proj = nn.Linear(c.DModel, c.DProj);
        hs_proj = nn.Linear(c.DModel, c.DProj);
        scale = 1.0 / Math.Sqrt(c.DProj);
        clamp_max_val = clampLogits ? hc.DotProdClampMaxVal : null;
        RegisterComponents();
    }

    /// <summary>Masked mean over the prompt tokens: <paramref name="prompt"/> [S,B,d], <paramref name="promptMask"/> [B,S] (True = padding) → [B,d].</summary>
    public static Tensor MeanPoolText(Tensor prompt, Tensor promptMask)
    {
        using var scope = NewDisposeScope();
        var isValid = promptMask.to(ScalarType.Bool).logical_not().to(ScalarType.Float32).permute(1, 0)[TensorIndex.Ellipsis, TensorIndex.None]; // S,B,1
        var numValid = isValid.sum(dim: 0).clamp(min: 1.0); // B,1
        return ((prompt * isValid).sum(dim: 0) / numValid).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <paramref name="hs"/> [L,B,Q,d] (batch-first per layer), <paramref name="prompt"/> [S,B,d] (seq-first),
    /// <paramref name="promptMask"/> [B,S] (True = padding) → logits [L,B,Q,1].
    /// </summary>
    public override Tensor forward(Tensor hs, Tensor prompt, Tensor promptMask)
    {
        if (hs.dim() != 4 || prompt.dim() != 3 || promptMask.dim() != 2)
            throw new Sam3Exception($"DotProductScoring expects hs [L,B,Q,d], prompt [S,B,d], mask [B,S]; got [{string.Join(",", hs.shape)}], [{string.Join(",", prompt.shape)}], [{string.Join(",", promptMask.shape)}]");
        if (promptMask.shape[0] != prompt.shape[1] || promptMask.shape[1] != prompt.shape[0])
            throw new Sam3Exception($"prompt mask [{string.Join(",", promptMask.shape)}] does not fit prompt [{string.Join(",", prompt.shape)}]");
        using var scope = NewDisposeScope();
        if (prompt_mlp is not null) prompt = prompt_mlp.forward(prompt);
        var pooled = MeanPoolText(prompt, promptMask);
        var projPrompt = prompt_proj.forward(Precision.PrecisionPolicy.ToWeightDtype(pooled, prompt_proj.weight!)); // B,d_proj
        var projHs = hs_proj.forward(Precision.PrecisionPolicy.ToWeightDtype(hs, hs_proj.weight!)); // L,B,Q,d_proj
        var scores = matmul(projHs, projPrompt.unsqueeze(-1)) * scale;
        if (clamp_max_val is double m) scores = scores.clamp(-m, m);
        return scores.MoveToOuterDisposeScope();
    }
}
