using Sam3.Torch.Config;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Sam;

/// <summary>
/// SAM two-way transformer (sam/transformer.py TwoWayTransformer): <c>depth</c> TwoWayAttentionBlocks (the first without
/// PE in its self-attention), then a final token → image attention and LayerNorm. MLP activation ReLU.
/// </summary>
internal sealed class TwoWayTransformer : nn.Module
{
    public readonly ModuleList<TwoWayAttentionBlock> layers;
    public readonly SamAttention final_attn_token_to_image;
    public readonly LayerNorm norm_final_attn;

    public int depth { get; }
    public int embedding_dim { get; }
    public int num_heads { get; }
    public int mlp_dim { get; }

    /// <summary>The mask decoder's transformer as built by the tracker (depth, heads, mlp dim, downsample rate from the hard-coded section).</summary>
    public TwoWayTransformer(Sam3Config cfg)
        : this(cfg.HardcodedInClasses.TwoWayDepth, cfg.Tracker.HiddenDim, cfg.HardcodedInClasses.TwoWayNumHeads,
               cfg.HardcodedInClasses.TwoWayMlpDim, cfg.HardcodedInClasses.TwoWayAttentionDownsampleRate,
               cfg.HardcodedInClasses.LayerNormEps)
    { }

    public TwoWayTransformer(int depth, int embeddingDim, int numHeads, int mlpDim, int attentionDownsampleRate, double layerNormEps)
        : base(nameof(TwoWayTransformer))
    {
        this.depth = depth;
        embedding_dim = embeddingDim;
        num_heads = numHeads;
        mlp_dim = mlpDim;
        layers = new ModuleList<TwoWayAttentionBlock>();
        for (int i = 0; i < depth; i++)
            layers.Add(new TwoWayAttentionBlock(embeddingDim, numHeads, mlpDim, x => nn.functional.relu(x),
                                                attentionDownsampleRate, skipFirstLayerPe: i == 0, layerNormEps));
        final_attn_token_to_image = new SamAttention(embeddingDim, numHeads, attentionDownsampleRate);
        norm_final_attn = nn.LayerNorm(embeddingDim, layerNormEps);
        RegisterComponents();
    }

    /// <summary>
    /// <paramref name="imageEmbedding"/> and <paramref name="imagePe"/> [B, C, H, W], <paramref name="pointEmbedding"/>
    /// [B, N, C]. Returns the processed tokens [B, N, C] and image tokens [B, HW, C].
    /// </summary>
    public (Tensor queries, Tensor keys) forward(Tensor imageEmbedding, Tensor imagePe, Tensor pointEmbedding)
    {
        using var scope = NewDisposeScope();
        var keys = imageEmbedding.flatten(2).permute(0, 2, 1);
        var keyPe = imagePe.flatten(2).permute(0, 2, 1);
        var queries = pointEmbedding;
        foreach (var layer in layers)
            (queries, keys) = layer.forward(queries, keys, pointEmbedding, keyPe);
        var q = queries + pointEmbedding;
        var k = keys + keyPe;
        queries = norm_final_attn.forward(queries + final_attn_token_to_image.forward(q, k, keys));
        return (queries.MoveToOuterDisposeScope(), keys.MoveToOuterDisposeScope());
    }
}
