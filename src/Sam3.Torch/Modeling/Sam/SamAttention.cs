using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Sam;

/// <summary>
/// SAM attention (sam/transformer.py <c>Attention</c>): separate <c>q_proj/k_proj/v_proj/out_proj</c>, projecting to an
/// internal dim of embedding_dim / downsample_rate split into heads; keys/values may come from a different width
/// (kv_in_dim). Batch-first [B, N, C]; softmax(QKᵀ/√head_dim) via scaled_dot_product_attention.
/// </summary>
internal class SamAttention : nn.Module<Tensor, Tensor, Tensor, Tensor>
{
    public readonly Linear q_proj;
    public readonly Linear k_proj;
    public readonly Linear v_proj;
    public readonly Linear out_proj;

    public int embedding_dim { get; }
    public int kv_in_dim { get; }
    public int internal_dim { get; }
    public int num_heads { get; }
    public double dropout_p { get; }

    public SamAttention(int embeddingDim, int numHeads, int downsampleRate = 1, double dropout = 0.0, int? kvInDim = null)
        : this(nameof(SamAttention), embeddingDim, numHeads, downsampleRate, dropout, kvInDim) { }

    protected SamAttention(string name, int embeddingDim, int numHeads, int downsampleRate, double dropout, int? kvInDim) : base(name)
    {
        if (downsampleRate <= 0 || embeddingDim % downsampleRate != 0)
            throw new Sam3ConfigException($"{name}: embedding_dim {embeddingDim} is not divisible by downsample_rate {downsampleRate}");
        embedding_dim = embeddingDim;
        kv_in_dim = kvInDim ?? embeddingDim;
        internal_dim = embeddingDim / downsampleRate;
        num_heads = numHeads;
        dropout_p = dropout;
        if (numHeads <= 0 || internal_dim % numHeads != 0)
            throw new Sam3ConfigException($"{name}: num_heads ({numHeads}) must divide the internal dim ({internal_dim})");
        q_proj = nn.Linear(embeddingDim, internal_dim);
        k_proj = nn.Linear(kv_in_dim, internal_dim);
        v_proj = nn.Linear(kv_in_dim, internal_dim);
        out_proj = nn.Linear(internal_dim, embeddingDim);
        RegisterComponents();
    }

    /// <summary>[B, N, C] → [B, heads, N, C/heads].</summary>
    protected static Tensor SeparateHeads(Tensor x, int numHeads)
    {
        long b = x.shape[0], n = x.shape[1], c = x.shape[2];
        return x.reshape(b, n, numHeads, c / numHeads).transpose(1, 2);
    }

    /// <summary>[B, heads, N, c] → [B, N, heads·c].</summary>
    protected static Tensor RecombineHeads(Tensor x)
    {
        long b = x.shape[0], h = x.shape[1], n = x.shape[2], c = x.shape[3];
        return x.transpose(1, 2).reshape(b, n, h * c);
    }

    /// <summary>Projections and head split: q, k, v as [B, heads, N, head_dim].</summary>
    protected (Tensor q, Tensor k, Tensor v) Project(Tensor q, Tensor k, Tensor v)
        => (SeparateHeads(q_proj.forward(Precision.PrecisionPolicy.ToWeightDtype(q, q_proj.weight!)), num_heads), SeparateHeads(k_proj.forward(Precision.PrecisionPolicy.ToWeightDtype(k, k_proj.weight!)), num_heads),
            SeparateHeads(v_proj.forward(Precision.PrecisionPolicy.ToWeightDtype(v, v_proj.weight!)), num_heads));

    /// <summary>Attention of projected heads, recombination and output projection.</summary>
    protected Tensor Attend(Tensor q, Tensor k, Tensor v)
    {
        var o = nn.functional.scaled_dot_product_attention(q, k, v, p: training ? dropout_p : 0.0);
        return out_proj.forward(Precision.PrecisionPolicy.ToWeightDtype(RecombineHeads(o), out_proj.weight!));
    }

    public override Tensor forward(Tensor q, Tensor k, Tensor v)
    {
        using var scope = NewDisposeScope();
        var (qh, kh, vh) = Project(q, k, v);
        return Attend(qh, kh, vh).MoveToOuterDisposeScope();
    }
}
