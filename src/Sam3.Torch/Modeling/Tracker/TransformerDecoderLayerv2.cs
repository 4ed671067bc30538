using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Tracker;

/// <summary>
/// Memory-attention layer (model/decoder.py TransformerDecoderLayerv2, pre-norm only, as upstream):
/// <c>x += SA(norm1(x))</c> (RoPE self-attention, PE added to q/k only with pos_enc_at_attn),
/// <c>x += CA(q = norm2(x) [+ query_pos], k = memory [+ pos], v = memory)</c> (RoPE on q and the spatial memory keys),
/// <c>x += linear2(act(linear1(norm3(x))))</c>; with cross_attention_first the two attentions swap. Batch-first.
/// </summary>
internal sealed class TransformerDecoderLayerv2 : nn.Module
{
    public readonly RoPEAttention self_attn;
    public readonly RoPEAttention cross_attn_image;
    public readonly Linear linear1;
    public readonly Linear linear2;
    public readonly LayerNorm norm1;
    public readonly LayerNorm norm2;
    public readonly LayerNorm norm3;

    public int d_model { get; }
    public int dim_feedforward { get; }
    public double dropout_value { get; }
    public bool pre_norm { get; }
    public bool pos_enc_at_attn { get; }
    public bool pos_enc_at_cross_attn_keys { get; }
    public bool pos_enc_at_cross_attn_queries { get; }
    public bool cross_attention_first { get; }
    private readonly Func<Tensor, Tensor> activation;

    /// <summary>The tracker's layer from the memory-attention config (dropout applies only in training; 0 here).</summary>
    public TransformerDecoderLayerv2(Sam3Config cfg, double dropout = 0.0) : base(nameof(TransformerDecoderLayerv2))
    {
        var c = cfg.Tracker.MemoryAttention;
        if (!c.PreNorm) throw new Sam3ConfigException("TransformerDecoderLayerv2 supports only pre_norm=True (upstream raises NotImplementedError)");
        d_model = c.DModel;
        dim_feedforward = c.DimFeedforward;
        dropout_value = dropout;
        pre_norm = c.PreNorm;
        pos_enc_at_attn = c.PosEncAtAttn;
        pos_enc_at_cross_attn_keys = c.PosEncAtCrossAttnKeys;
        pos_enc_at_cross_attn_queries = c.PosEncAtCrossAttnQueries;
        cross_attention_first = false;
        var feat = c.FeatSizes is { Length: 2 } f ? (f[0], f[1]) : throw new Sam3ConfigException("memory_attention.feat_sizes must have 2 entries");
        self_attn = new RoPEAttention(c.DModel, c.NumHeads, 1, dropout, null, c.RopeTheta, ropeKRepeat: false, featSizes: feat);
        cross_attn_image = new RoPEAttention(c.DModel, c.NumHeads, 1, dropout, c.KvInDim, c.RopeTheta, ropeKRepeat: true, featSizes: feat);
        linear1 = nn.Linear(c.DModel, c.DimFeedforward);
        linear2 = nn.Linear(c.DimFeedforward, c.DModel);
        double eps = cfg.HardcodedInClasses.LayerNormEps;
        norm1 = nn.LayerNorm(c.DModel, eps);
        norm2 = nn.LayerNorm(c.DModel, eps);
        norm3 = nn.LayerNorm(c.DModel, eps);
        activation = Activations.Get(c.Activation);
        RegisterComponents();
    }

    private Tensor Dropout(Tensor x) => training && dropout_value > 0 ? nn.functional.dropout(x, dropout_value, true) : x;

    private Tensor ForwardSa(Tensor tgt, Tensor? queryPos)
    {
        var t2 = Precision.PrecisionPolicy.Norm(norm1, tgt);
        var qk = pos_enc_at_attn && queryPos is not null ? t2 + queryPos : t2;
        return tgt + Dropout(self_attn.forward(qk, qk, t2));
    }

    private Tensor ForwardCa(Tensor tgt, Tensor memory, Tensor? queryPos, Tensor? pos, int numKExcludeRope)
    {
        var t2 = Precision.PrecisionPolicy.Norm(norm2, tgt);
        var q = pos_enc_at_cross_attn_queries && queryPos is not null ? t2 + queryPos : t2;
        var k = pos_enc_at_cross_attn_keys && pos is not null ? memory + pos : memory;
        return tgt + Dropout(cross_attn_image.forward(q, k, memory, numKExcludeRope));
    }

    /// <summary>
    /// <paramref name="tgt"/> [B, L, d], <paramref name="memory"/> [B, M, kv_dim], <paramref name="pos"/> (memory PE)
    /// [B, M, kv_dim], <paramref name="queryPos"/> [B, L, d]; the last <paramref name="numKExcludeRope"/> memory tokens
    /// (object pointers) are not rotated.
    /// </summary>
    public Tensor forward(Tensor tgt, Tensor memory, Tensor? pos, Tensor? queryPos, int numKExcludeRope = 0)
    {
        using var scope = NewDisposeScope();
        if (cross_attention_first)
        {
            tgt = ForwardCa(tgt, memory, queryPos, pos, numKExcludeRope);
            tgt = ForwardSa(tgt, queryPos);
        }
        else
        {
            tgt = ForwardSa(tgt, queryPos);
            tgt = ForwardCa(tgt, memory, queryPos, pos, numKExcludeRope);
        }
        // bf16 policy (a no-op in fp32): norm3 on autocast's fp32 list, linear1 takes its input in the weight's dtype
        var t2 = linear2.forward(Dropout(activation(linear1.forward(Precision.PrecisionPolicy.ToWeightDtype(Precision.PrecisionPolicy.Norm(norm3, tgt), linear1.weight!)))));
        return (tgt + Dropout(t2)).MoveToOuterDisposeScope();
    }
}
