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
        key = Precision.PrecisionPolicy.ToWeightDtype(key, in_proj_weight);
        value = Precision.PrecisionPolicy.ToWeightDtype(value, in_proj_weight);
        var k = LoraHooks.InProjection(this, 1, key, nn.functional.linear(key, InProjWeight(1), InProjBias(1)));
        var v = LoraHooks.InProjection(this, 2, value, nn.functional.linear(value, InProjWeight(2), InProjBias(2)));
        var o = Attend(query, k, v, key_padding_mask, attn_mask);
        if (!batch_first) o = o.transpose(0, 1);
        return o.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <see cref="forward"/> with the k and v in-projections already computed by the caller
    /// (<paramref name="kProjected"/>, <paramref name="vProjected"/> batch-first [B,S,E], possibly column slices of a wider
    /// tensor: the detector decoder projects its memory for all layers in one GEMM). <paramref name="key"/> and
    /// <paramref name="value"/> are the un-projected inputs in the module's layout, read only by LoRA adapters of the k/v
    /// projections, which are added here as <see cref="forward"/> adds them. Query, masks and output as <see cref="forward"/>.
    /// </summary>
    internal Tensor ForwardProjectedKv(Tensor query, Tensor key, Tensor value, Tensor kProjected, Tensor vProjected,
        Tensor? key_padding_mask = null, Tensor? attn_mask = null)
    {
        using var scope = NewDisposeScope();
        if (!batch_first)
        {
            query = query.transpose(0, 1);
            key = key.transpose(0, 1);
            value = value.transpose(0, 1);
        }
        var k = LoraHooks.InProjection(this, 1, Precision.PrecisionPolicy.ToWeightDtype(key, in_proj_weight), kProjected);
        var v = LoraHooks.InProjection(this, 2, Precision.PrecisionPolicy.ToWeightDtype(value, in_proj_weight), vProjected);
        var o = Attend(query, k, v, key_padding_mask, attn_mask);
        if (!batch_first) o = o.transpose(0, 1);
        return o.MoveToOuterDisposeScope();
    }

    /// <summary>Rows <paramref name="part"/>·E..(part+1)·E of the packed in-projection weight (0 = q, 1 = k, 2 = v).</summary>
    private Tensor InProjWeight(int part) => in_proj_weight.narrow(0, part * embed_dim, embed_dim);

    private Tensor InProjBias(int part) => in_proj_bias.narrow(0, part * embed_dim, embed_dim);

    /// <summary>
    /// Projects <paramref name="query"/> [B,L,E] (q in-projection + its LoRA) and runs <see cref="AttendProjected"/>.
    /// Returns [B,L,E] in the caller's scope.
    /// </summary>
    private Tensor Attend(Tensor query, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor? attn_mask)
    {
        query = Precision.PrecisionPolicy.ToWeightDtype(query, in_proj_weight);
        var q = LoraHooks.InProjection(this, 0, query, nn.functional.linear(query, InProjWeight(0), InProjBias(0)));
        return AttendProjected(q, k, v, key_padding_mask, attn_mask);
    }

    /// <summary>
    /// The attention core, batch-first, on projected <paramref name="q"/> [B,L,E] and <paramref name="k"/>/<paramref name="v"/>
    /// [B,S,E] (views of a wider tensor allowed): splits heads, merges the masks into one additive bias, runs
    /// scaled_dot_product_attention and the output projection — <c>out_proj</c> with its LoRA, or
    /// <paramref name="outProjection"/> when given (the text encoder's few-token kernel path). Returns [B,L,E] in the
    /// caller's scope.
    /// </summary>
    internal Tensor AttendProjected(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask, Tensor? attn_mask,
        Func<Tensor, Tensor>? outProjection = null)
    {
        long b = q.shape[0], l = q.shape[1], s = k.shape[1];
        int h = num_heads, e = embed_dim, hd = e / h;
        q = q.view(b, l, h, hd).transpose(1, 2);
        k = k.view(b, s, h, hd).transpose(1, 2);
        v = v.view(b, s, h, hd).transpose(1, 2);

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
        return outProjection is null ? LoraHooks.Linear(out_proj, o) : outProjection(o);
    }
}
