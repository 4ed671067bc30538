using Sam3.Torch.Training.Lora;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using MultiheadAttention = Sam3.Torch.Modeling.Common.MultiheadAttention;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Encoder;

/// <summary>
/// Self-attention → cross-attention (to "memory") → FFN layer of sam3/model/encoder.py (<c>TransformerEncoderLayer</c>).
/// Used by the fusion encoder (image tokens attend to the prompt; batch-first, pos at self-attention) and by the
/// geometry encoder (prompt tokens attend to the image; seq-first, pos on the cross-attention keys).
/// State-dict keys: <c>self_attn.*</c>, <c>cross_attn_image.*</c>, <c>linear1</c>, <c>linear2</c>, <c>norm1..3</c>.
/// Tensors are in the attention modules' layout: seq-first [L,B,C] or batch-first [B,L,C].
/// </summary>
internal sealed class TransformerEncoderLayer : nn.Module
{
    public readonly MultiheadAttention self_attn;
    public readonly MultiheadAttention cross_attn_image;
    public readonly Linear linear1;
    public readonly Linear linear2;
    public readonly LayerNorm norm1;
    public readonly LayerNorm norm2;
    public readonly LayerNorm norm3;

    public int d_model { get; }
    public int dim_feedforward { get; }
    public double dropout_value { get; set; }
    public bool pre_norm { get; }
    public bool pos_enc_at_attn { get; }
    public bool pos_enc_at_cross_attn_keys { get; }
    public bool pos_enc_at_cross_attn_queries { get; }
    public bool batch_first { get; }
    /// <summary>Index in the owning stack (set by the encoder, as upstream).</summary>
    public int? layer_idx { get; set; }

    private readonly Func<Tensor, Tensor> activation;

    public TransformerEncoderLayer(int dModel, int numHeads, int dimFeedforward, double dropout, string activation,
                                   bool preNorm, bool posEncAtAttn, bool posEncAtCrossAttnKeys, bool posEncAtCrossAttnQueries,
                                   bool batchFirst, double layerNormEps)
        : base(nameof(TransformerEncoderLayer))
    {
        d_model = dModel;
        dim_feedforward = dimFeedforward;
        dropout_value = dropout;
        pre_norm = preNorm;
        pos_enc_at_attn = posEncAtAttn;
        pos_enc_at_cross_attn_keys = posEncAtCrossAttnKeys;
        pos_enc_at_cross_attn_queries = posEncAtCrossAttnQueries;
        batch_first = batchFirst;
        this.activation = Activations.Get(activation);

        self_attn = new MultiheadAttention(dModel, numHeads, dropout, batchFirst);
        cross_attn_image = new MultiheadAttention(dModel, numHeads, dropout, batchFirst);
        linear1 = nn.Linear(dModel, dimFeedforward);
        linear2 = nn.Linear(dimFeedforward, dModel);
        norm1 = nn.LayerNorm(dModel, layerNormEps);
        norm2 = nn.LayerNorm(dModel, layerNormEps);
        norm3 = nn.LayerNorm(dModel, layerNormEps);
        RegisterComponents();
    }

    /// <summary>Fusion-encoder layer (encoder.py builder values: batch-first, pre-norm, pos at self-attention only).</summary>
    public static TransformerEncoderLayer ForFusion(Config.Sam3Config cfg)
    {
        var e = cfg.Encoder;
        return new TransformerEncoderLayer(e.DModel, e.NumHeads, e.DimFeedforward, e.Dropout, e.Activation, e.PreNorm,
            e.PosEncAtAttn, e.PosEncAtCrossAttnKeys, e.PosEncAtCrossAttnQueries, batchFirst: true,
            cfg.HardcodedInClasses.LayerNormEps);
    }

    /// <summary>Geometry-encoder layer (seq-first, pre-norm, pos on the cross-attention keys).</summary>
    public static TransformerEncoderLayer ForGeometry(Config.Sam3Config cfg)
    {
        var g = cfg.GeometryEncoder;
        return new TransformerEncoderLayer(g.DModel, g.NumHeads, g.DimFeedforward, g.Dropout, g.Activation, g.PreNorm,
            g.PosEncAtAttn, g.PosEncAtCrossAttnKeys, g.PosEncAtCrossAttnQueries, batchFirst: false,
            cfg.HardcodedInClasses.LayerNormEps);
    }

    private Tensor Drop(Tensor x) => training && dropout_value > 0 ? nn.functional.dropout(x, dropout_value, training) : x;

    /// <summary>
    /// One layer. <paramref name="pos"/> is the memory's position encoding, <paramref name="queryPos"/> the target's
    /// (either may be null when the corresponding switch does not use it). Masks follow nn.MultiheadAttention
    /// (key-padding bool [B,S], True = ignore). <paramref name="dac"/>: self-attention only on the first half of the
    /// target sequence (training-time divide-and-conquer; pre-norm, seq-first only as upstream).
    /// </summary>
    public Tensor forward(Tensor tgt, Tensor memory, Tensor? tgtKeyPaddingMask = null, Tensor? memoryKeyPaddingMask = null,
                          Tensor? pos = null, Tensor? queryPos = null, Tensor? tgtMask = null, Tensor? memoryMask = null,
                          bool dac = false)
    {
        using var scope = NewDisposeScope();
        if (pos_enc_at_attn && queryPos is null)
            throw new Sam3Exception("TransformerEncoderLayer: pos_enc_at_attn needs a query position encoding");
        if (pos_enc_at_cross_attn_queries && queryPos is null)
            throw new Sam3Exception("TransformerEncoderLayer: pos_enc_at_cross_attn_queries needs a query position encoding");
        if (pos_enc_at_cross_attn_keys && pos is null)
            throw new Sam3Exception("TransformerEncoderLayer: pos_enc_at_cross_attn_keys needs a memory position encoding");
        var result = pre_norm
            ? ForwardPre(tgt, memory, dac, tgtMask, memoryMask, tgtKeyPaddingMask, memoryKeyPaddingMask, pos, queryPos)
            : ForwardPost(tgt, memory, tgtMask, memoryMask, tgtKeyPaddingMask, memoryKeyPaddingMask, pos, queryPos);
        return result.MoveToOuterDisposeScope();
    }

    private Tensor ForwardPost(Tensor tgt, Tensor memory, Tensor? tgtMask, Tensor? memoryMask, Tensor? tgtKeyPaddingMask,
                               Tensor? memoryKeyPaddingMask, Tensor? pos, Tensor? queryPos)
    {
        var q = pos_enc_at_attn ? tgt + queryPos! : tgt;
        var t2 = self_attn.forward(q, q, tgt, tgtKeyPaddingMask, tgtMask);
        tgt = Precision.PrecisionPolicy.Norm(norm1, tgt + Drop(t2));

        t2 = cross_attn_image.forward(
            pos_enc_at_cross_attn_queries ? tgt + queryPos! : tgt,
            pos_enc_at_cross_attn_keys ? memory + pos! : memory,
            memory, memoryKeyPaddingMask, memoryMask);
        tgt = Precision.PrecisionPolicy.Norm(norm2, tgt + Drop(t2));

        t2 = LoraHooks.Linear(linear2, Drop(activation(LoraHooks.Linear(linear1, tgt))));
        return Precision.PrecisionPolicy.Norm(norm3, tgt + Drop(t2));
    }

    private Tensor ForwardPre(Tensor tgt, Tensor memory, bool dac, Tensor? tgtMask, Tensor? memoryMask, Tensor? tgtKeyPaddingMask,
                              Tensor? memoryKeyPaddingMask, Tensor? pos, Tensor? queryPos)
    {
        Tensor? other = null;
        if (dac)
        {
            // upstream splits along dim 0 (the sequence dim of a seq-first layout)
            long n = tgt.shape[0];
            if (n % 2 != 0) throw new Sam3Exception("TransformerEncoderLayer: dac needs an even number of queries");
            other = tgt[TensorIndex.Slice(n / 2, null)];
            tgt = tgt[TensorIndex.Slice(null, n / 2)];
        }
        var t2 = Precision.PrecisionPolicy.Norm(norm1, tgt);
        var q = pos_enc_at_attn ? t2 + queryPos! : t2;
        t2 = self_attn.forward(q, q, t2, tgtKeyPaddingMask, tgtMask);
        tgt = tgt + Drop(t2);
        if (other is not null) tgt = torch.cat([tgt, other], 0);

        t2 = Precision.PrecisionPolicy.Norm(norm2, tgt);
        t2 = cross_attn_image.forward(
            pos_enc_at_cross_attn_queries ? t2 + queryPos! : t2,
            pos_enc_at_cross_attn_keys ? memory + pos! : memory,
            memory, memoryKeyPaddingMask, memoryMask);
        tgt = tgt + Drop(t2);

        t2 = Precision.PrecisionPolicy.Norm(norm3, tgt);
        t2 = LoraHooks.Linear(linear2, Drop(activation(LoraHooks.Linear(linear1, t2))));
        return tgt + Drop(t2);
    }
}
