using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using MultiheadAttention = Sam3.Torch.Modeling.Common.MultiheadAttention;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Text;

/// <summary>
/// Pre-norm transformer block of the text encoder (sam3/model/text_encoder_ve.py <c>ResidualAttentionBlock</c>):
/// <c>x += attn(ln_1(x))</c>, <c>x += mlp(ln_2(x))</c> with <c>mlp = c_fc → GELU (exact, erf) → c_proj</c>.
/// Batch-first [B,L,W]. No LayerScale (ls_init_value is None in SAM3, so ls_1/ls_2 are identities without keys).
/// State-dict keys: <c>attn.*</c>, <c>ln_1</c>, <c>ln_2</c>, <c>mlp.c_fc</c>, <c>mlp.c_proj</c>.
/// </summary>
internal sealed partial class ResidualAttentionBlock : nn.Module<Tensor, Tensor?, Tensor>
{
    public readonly MultiheadAttention attn;
    public readonly LayerNorm ln_1;
    public readonly LayerNorm ln_2;
    public readonly Sequential mlp;

    public ResidualAttentionBlock(int dModel, int nHead, int mlpWidth, double layerNormEps) : base(nameof(ResidualAttentionBlock))
    {
        attn = new MultiheadAttention(dModel, nHead, dropout: 0.0, batchFirst: true);
        ln_1 = nn.LayerNorm(dModel, layerNormEps);
        ln_2 = nn.LayerNorm(dModel, layerNormEps);
        mlp = nn.Sequential(
            ("c_fc", nn.Linear(dModel, mlpWidth)),
            ("gelu", nn.GELU()),
            ("c_proj", nn.Linear(mlpWidth, dModel)));
        RegisterComponents();
    }

    /// <summary><paramref name="x"/> [B,L,W]; <paramref name="attnMask"/> additive float [L,L] (or bool, True = blocked) or null.</summary>
    public override Tensor forward(Tensor x, Tensor? attnMask)
    {
        using var scope = NewDisposeScope();
        if (attnMask is not null && attnMask.dtype != ScalarType.Bool) attnMask = attnMask.to(x.dtype);
        var h = ln_1.forward(x);
        x = x + (SkinnyAttention(h, attnMask) ?? attn.forward(h, h, h, key_padding_mask: null, attn_mask: attnMask));
        var h2 = ln_2.forward(x);
        x = x + (SkinnyMlp(h2) ?? mlp.forward(Precision.PrecisionPolicy.ToModuleDtype(h2, mlp)));
        return x.MoveToOuterDisposeScope();
    }
}
