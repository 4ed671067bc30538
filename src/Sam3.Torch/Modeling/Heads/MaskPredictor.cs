using Sam3.Torch.Modeling.Common;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Heads;

/// <summary>
/// Mask logits as a dot product of embedded queries with per-pixel embeddings (maskformer_segmentation.py MaskPredictor):
/// <c>einsum(mask_embed(q), pixel_embed)</c>. Keys: <c>mask_embed.layers.{0,1,2}.*</c> (MLP(d,d,d,3)).
/// </summary>
internal sealed class MaskPredictor : nn.Module<Tensor, Tensor, Tensor>
{
    public readonly Mlp mask_embed;

    public MaskPredictor(int hiddenDim, int maskDim, int numLayers) : base(nameof(MaskPredictor))
    {
        mask_embed = new Mlp(hiddenDim, hiddenDim, maskDim, numLayers);
        RegisterComponents();
    }

    /// <summary>
    /// <paramref name="objQueries"/> [B,Q,C] (or [L,B,Q,C] with aux masks), <paramref name="pixelEmbed"/> [B,C,H,W] (or [C,H,W])
    /// → [B,Q,H,W] (or [L,B,Q,H,W]).
    /// </summary>
    public override Tensor forward(Tensor objQueries, Tensor pixelEmbed)
    {
        using var scope = NewDisposeScope();
        var e = mask_embed.forward(objQueries);
        string eq = (objQueries.dim(), pixelEmbed.dim()) switch
        {
            (3, 3) => "bqc,chw->bqhw",
            (3, 4) => "bqc,bchw->bqhw",
            (4, 3) => "lbqc,chw->lbqhw",
            (4, 4) => "lbqc,bchw->lbqhw",
            _ => throw new Sam3Exception($"mask predictor: unsupported shapes queries [{string.Join(",", objQueries.shape)}], pixels [{string.Join(",", pixelEmbed.shape)}]"),
        };
        return einsum(eq, e, pixelEmbed).MoveToOuterDisposeScope();
    }
}
