using Sam3.Torch.Training.Lora;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Common;

/// <summary>
/// Counterpart of <c>torch.nn.MultiheadAttention</c> with the same state-dict keys (packed <c>in_proj_weight</c>
/// [3E,E] in q,k,v order, <c>in_proj_bias</c>, <c>out_proj</c>), seq-first by default or batch-first. Masks follow
/// PyTorch: <c>key_padding_mask</c> [B,S] bool True = ignore; <c>attn_mask</c> [L,S] or [B·heads,L,S], bool True =
/// not allowed, or float (added to the logits). Scale 1/√head_dim. Runs on scaled_dot_product_attention.
/// </summary>
internal sealed class MultiheadAttention : nn.Module
{
    public readonly Parameter in_proj_weight;
    public readonly Parameter in_proj_bias;
    public readonly Linear out_proj;
    public int embed_dim { get; }
    public int num_heads { get; }
    public bool batch_first { get; }
    /// <summary>Attention-weight dropout probability (active only in training; settable for deterministic training).</summary>
    public double dropout { get; set; }

    public MultiheadAttention(int embedDim, int numHeads, double dropout = 0.0, bool batchFirst = false)
        : base(nameof(MultiheadAttention))
    {
        if (embedDim % numHeads != 0) throw new ArgumentException("embed_dim must be divisible by num_heads");
        embed_dim = embedDim;
        num_heads = numHeads;
        batch_first = batchFirst;
        this.dropout = dropout;
        in_proj_weight = new Parameter(torch.empty(3 * embedDim, embedDim));
        in_proj_bias = new Parameter(torch.zeros(3 * embedDim));
        out_proj = nn.Linear(embedDim, embedDim);
        nn.init.xavier_uniform_(in_proj_weight);
        RegisterComponents();
    }

    /// <summary>Attention output in the module's layout (seq-first [L,B,E] or batch-first [B,L,E]).</summary>
    public Tensor forward(Tensor query, Tensor key, Tensor value, Tensor? key_padding_mask = null, Tensor? attn_mask = null)
    {
        using var scope = NewDisposeScope();
        if (!batch_first)
        {
            query = query.transpose(0, 1);
            key = key.transpose(0, 1);
            value = value.transpose(0, 1);
        }
        // bf16 policy: the in-projections take their inputs in the weight's dtype (no-op in fp32)
        query = Precision.PrecisionPolicy.ToWeightDtype(query, in_proj_weight);
        key = Precision.PrecisionPolicy.ToWeightDtype(key, in_proj_weight);
        value = Precision.PrecisionPolicy.ToWeightDtype(value, in_proj_weight);
        long b = query.shape[0], l = query.shape[1], s = key.shape[1];
        int h = num_heads, e = embed_dim, hd = e / h;
        var w = in_proj_weight.chunk(3, 0);
        var bias = in_proj_bias.chunk(3, 0);
        var q = LoraHooks.InProjection(this, 0, query, nn.functional.linear(query, w[0], bias[0])).view(b, l, h, hd).transpose(1, 2);
        var k = LoraHooks.InProjection(this, 1, key, nn.functional.linear(key, w[1], bias[1])).view(b, s, h, hd).transpose(1, 2);
        var v = LoraHooks.InProjection(this, 2, value, nn.functional.linear(value, w[2], bias[2])).view(b, s, h, hd).transpose(1, 2);

        Tensor? mask = null;
        if (attn_mask is not null)
        {
            var am = attn_mask.dtype == ScalarType.Bool
                ? torch.zeros(attn_mask.shape, dtype: q.dtype, device: q.device).masked_fill(attn_mask, double.NegativeInfinity)
                : attn_mask.to(q.dtype);
            mask = am.dim() == 3 ? am.view(b, h, l, s) : am.view(1, 1, l, s);
        }
        if (key_padding_mask is not null)
        {
            var kp = torch.zeros(b, 1, 1, s, dtype: q.dtype, device: q.device)
                .masked_fill(key_padding_mask.to(ScalarType.Bool).view(b, 1, 1, s), double.NegativeInfinity);
            mask = mask is null ? kp : mask + kp;
        }
        var o = nn.functional.scaled_dot_product_attention(q, k, v, mask, p: training ? dropout : 0.0);
        o = o.transpose(1, 2).reshape(b, l, e);
        o = LoraHooks.Linear(out_proj, o);
        if (!batch_first) o = o.transpose(0, 1);
        return o.MoveToOuterDisposeScope();
    }
}
