using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Sam;

/// <summary>
/// One block of the SAM two-way transformer (sam/transformer.py TwoWayAttentionBlock), post-norm:
/// (1) token self-attention (without PE on the first block, whose output then replaces the queries instead of being
/// added), (2) tokens → image cross-attention, (3) MLP on tokens, (4) image → tokens cross-attention.
/// Queries [B, Nq, C], keys [B, HW, C], batch-first.
/// </summary>
internal sealed class TwoWayAttentionBlock : nn.Module
{
    public readonly SamAttention self_attn;
    public readonly LayerNorm norm1;
    public readonly SamAttention cross_attn_token_to_image;
    public readonly LayerNorm norm2;
    public readonly MlpBlock mlp;
    public readonly LayerNorm norm3;
    public readonly LayerNorm norm4;
    public readonly SamAttention cross_attn_image_to_token;
    public bool skip_first_layer_pe { get; }

    public TwoWayAttentionBlock(int embeddingDim, int numHeads, int mlpDim, Func<Tensor, Tensor> activation,
                                int attentionDownsampleRate, bool skipFirstLayerPe, double layerNormEps)
        : base(nameof(TwoWayAttentionBlock))
    {
        self_attn = new SamAttention(embeddingDim, numHeads);
        norm1 = nn.LayerNorm(embeddingDim, layerNormEps);
        cross_attn_token_to_image = new SamAttention(embeddingDim, numHeads, attentionDownsampleRate);
        norm2 = nn.LayerNorm(embeddingDim, layerNormEps);
        mlp = new MlpBlock(embeddingDim, mlpDim, activation);
        norm3 = nn.LayerNorm(embeddingDim, layerNormEps);
        norm4 = nn.LayerNorm(embeddingDim, layerNormEps);
        cross_attn_image_to_token = new SamAttention(embeddingDim, numHeads, attentionDownsampleRate);
        skip_first_layer_pe = skipFirstLayerPe;
        RegisterComponents();
    }

    public (Tensor queries, Tensor keys) forward(Tensor queries, Tensor keys, Tensor queryPe, Tensor keyPe)
    {
        using var scope = NewDisposeScope();
        if (skip_first_layer_pe)
        {
            queries = self_attn.forward(queries, queries, queries);
        }
        else
        {
            var q0 = queries + queryPe;
            queries = queries + self_attn.forward(q0, q0, queries);
        }
        queries = norm1.forward(queries);

        var q = queries + queryPe;
        var k = keys + keyPe;
        queries = norm2.forward(queries + cross_attn_token_to_image.forward(q, k, keys));

        queries = norm3.forward(queries + mlp.forward(queries));

        q = queries + queryPe;
        k = keys + keyPe;
        keys = norm4.forward(keys + cross_attn_image_to_token.forward(k, q, queries));
        return (queries.MoveToOuterDisposeScope(), keys.MoveToOuterDisposeScope());
    }
}
