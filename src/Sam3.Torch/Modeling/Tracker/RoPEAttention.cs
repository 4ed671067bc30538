using Sam3.Torch.Modeling.Sam;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Tracker;

/// <summary>
/// SAM attention with 2-D axial rotary position encoding (sam/transformer.py RoPEAttention), used by the tracker's
/// memory attention. RoPE (sam/rope.py, complex form) rotates interleaved channel pairs (2j, 2j+1) of every head:
/// pairs 0..D/4−1 by the token's column x, pairs D/4..D/2−1 by its row y, with frequencies
/// <c>1/θ^(4k/D)</c> (D = head dim), tokens flattened row-major (<c>x = i % W, y = i // W</c>).
/// Queries are rotated with the table of their own grid; keys (all but the last <c>num_k_exclude_rope</c>, e.g. object
/// pointer tokens) with the same table repeated per memory frame (<c>rope_k_repeat</c>). The table is computed lazily,
/// for the query length (a square grid when it differs from feat_sizes, as upstream), and is not a state-dict entry.
/// </summary>
internal sealed class RoPEAttention : SamAttention
{
    public double rope_theta { get; }
    public bool rope_k_repeat { get; }
    /// <summary>(end_x, end_y) of the initial table (upstream feat_sizes, [w, h]).</summary>
    public (int X, int Y) feat_sizes { get; }

    private readonly Dictionary<(long len, DeviceType dev, int idx), (Tensor cos, Tensor sin)> _tables = new();

    public RoPEAttention(int embeddingDim, int numHeads, int downsampleRate = 1, double dropout = 0.0, int? kvInDim = null,
                         double ropeTheta = 10000.0, bool ropeKRepeat = false, (int X, int Y)? featSizes = null)
        : base(nameof(RoPEAttention), embeddingDim, numHeads, downsampleRate, dropout, kvInDim)
    {
        int headDim = internal_dim / numHeads;
        if (headDim % 4 != 0) throw new Sam3ConfigException($"RoPEAttention: head dim {headDim} must be a multiple of 4 for axial RoPE");
        rope_theta = ropeTheta;
        rope_k_repeat = ropeKRepeat;
        feat_sizes = featSizes ?? (64, 64);
    }

    /// <summary>
    /// Axial RoPE table (compute_axial_cis) for an end_x × end_y grid as (cos, sin), each [end_x·end_y, dim/2], float32.
    /// </summary>
    public static (Tensor cos, Tensor sin) ComputeAxialCis(int dim, long endX, long endY, double theta, Device? device = null)
    {
        using var scope = NewDisposeScope();
        int n = dim / 4;
        var exps = torch.arange(0, dim, 4, dtype: ScalarType.Float32, device: device)[..n] / dim;
        var freqs = 1.0f / torch.pow(torch.tensor((float)theta, device: device), exps);
        var t = torch.arange(endX * endY, dtype: ScalarType.Float32, device: device);
        var tx = torch.remainder(t, endX);
        var ty = torch.floor_divide(t, endX);
        var angles = torch.cat([torch.outer(tx, freqs), torch.outer(ty, freqs)], -1);
        return (angles.cos().MoveToOuterDisposeScope(), angles.sin().MoveToOuterDisposeScope());
    }

    private (Tensor cos, Tensor sin) TableFor(long qLen, Device device)
    {
        var key = (qLen, device.type, device.index);
        if (_tables.TryGetValue(key, out var t)) return t;
        long endX, endY;
        if (qLen == (long)feat_sizes.X * feat_sizes.Y) { endX = feat_sizes.X; endY = feat_sizes.Y; }
        else
        {
            // upstream recomputes with w = h = sqrt(L): only square grids are supported
            long side = (long)Math.Round(Math.Sqrt(qLen));
            if (side * side != qLen) throw new Sam3Exception($"RoPEAttention: query length {qLen} is not a square grid");
            endX = endY = side;
        }
        var (cos, sin) = ComputeAxialCis(internal_dim / num_heads, endX, endY, rope_theta, device);
        cos.DetachFromDisposeScope();
        sin.DetachFromDisposeScope();
        _tables[key] = (cos, sin);
        return (cos, sin);
    }

    /// <summary>Rotates interleaved pairs of x [B, h, L, D] by the table (cos/sin [L, D/2]) in float32; returns x's dtype.</summary>
    public static Tensor ApplyRotary(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        var xf = x.to(ScalarType.Float32);
        var pairs = xf.reshape([.. x.shape[..^1], x.shape[^1] / 2, 2]);
        var re = pairs[TensorIndex.Ellipsis, 0];
        var im = pairs[TensorIndex.Ellipsis, 1];
        var outRe = re * cos - im * sin;
        var outIm = re * sin + im * cos;
        return torch.stack([outRe, outIm], -1).flatten(3).to(x.dtype).MoveToOuterDisposeScope();
    }

    public override Tensor forward(Tensor q, Tensor k, Tensor v) => forward(q, k, v, 0);

    /// <summary>
    /// q [B, Lq, C], k/v [B, Lk, kv_in_dim] (batch-first). The last <paramref name="numKExcludeRope"/> keys are not rotated.
    /// </summary>
    public Tensor forward(Tensor q, Tensor k, Tensor v, int numKExcludeRope)
    {
        using var scope = NewDisposeScope();
        var (qh, kh, vh) = Project(q, k, v);
        long qLen = qh.shape[2], kLen = kh.shape[2];
        if (qLen != kLen && !rope_k_repeat)
            throw new Sam3Exception($"RoPEAttention: query length {qLen} differs from key length {kLen} without rope_k_repeat");
        if (numKExcludeRope < 0 || numKExcludeRope > kLen)
            throw new Sam3Exception($"RoPEAttention: num_k_exclude_rope {numKExcludeRope} outside [0, {kLen}]");
        var (cos, sin) = TableFor(qLen, qh.device);
        qh = ApplyRotary(qh, cos, sin);
        long kRope = kLen - numKExcludeRope;
        if (kRope > 0)
        {
            Tensor kc = cos, ks = sin;
            if (rope_k_repeat)
            {
                if (kRope % qLen != 0) throw new Sam3Exception($"RoPEAttention: {kRope} rotated keys are not a multiple of the query grid ({qLen})");
                long r = kRope / qLen;
                if (r != 1) { kc = cos.repeat(r, 1); ks = sin.repeat(r, 1); }
            }
            else if (kRope != qLen)
                throw new Sam3Exception($"RoPEAttention: {kRope} rotated keys for {qLen} queries without rope_k_repeat");
            var rotated = ApplyRotary(kh[.., .., TensorIndex.Slice(0, kRope)], kc, ks);
            kh = numKExcludeRope > 0 ? torch.cat([rotated, kh[.., .., TensorIndex.Slice(kRope, null)]], 2) : rotated;
        }
        return Attend(qh, kh, vh).MoveToOuterDisposeScope();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            foreach (var (c, s) in _tables.Values) { c.Dispose(); s.Dispose(); }
            _tables.Clear();
        }
        base.Dispose(disposing);
    }
}
