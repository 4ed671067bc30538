using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Vision;

/// <summary>
/// Axial 2D rotary position embedding of the ViT (vitdet.py <c>init_t_xy</c>, <c>compute_axial_cis</c>,
/// <c>apply_rotary_enc</c>), done with real arithmetic: the complex table <c>cat(polar(t_x·f), polar(t_y·f))</c> is
/// kept as its cosine and sine parts, and the rotation acts on interleaved channel pairs (2j, 2j+1) of each head.
/// Tokens are flattened row-major: <c>t_x = idx % end_x</c>, <c>t_y = idx // end_x</c>. Always computed in float32.
/// </summary>
internal static class AxialRope
{
    /// <summary>
    /// Angles of the axial table, float32 <c>[end_x·end_y, dim/2]</c>: the first dim/4 columns are <c>t_x·f_k</c>, the
    /// last dim/4 are <c>t_y·f_k</c>, with <c>f_k = 1/θ^(4k/dim)</c> and positions scaled by <paramref name="scalePos"/>
    /// (then shifted by <paramref name="offset"/>).
    /// </summary>
    public static Tensor ComputeAngles(int dim, int endX, int endY, double theta, double scalePos = 1.0, int offset = 0, Device? device = null)
    {
        if (dim % 4 != 0) throw new Sam3ConfigException($"RoPE head dim {dim} must be a multiple of 4");
        using var scope = NewDisposeScope();
        device ??= CPU;
        // f = 1 / theta^(arange(0, dim, 4)[:dim/4] / dim), in float32 as upstream.
        var exps = torch.arange(0, dim, 4, dtype: ScalarType.Int64, device: device)
            .slice(0, 0, dim / 4, 1).to(ScalarType.Float32) / dim;
        var freqs = torch.full_like(exps, theta).pow(exps).reciprocal();
        var t = torch.arange(endX * endY, dtype: ScalarType.Float32, device: device);
        var tx = t.remainder(endX);
        var ty = t.div(endX, rounding_mode: RoundingMode.floor);
        tx = tx * scalePos + offset;
        ty = ty * scalePos + offset;
        var ax = torch.outer(tx, freqs);
        var ay = torch.outer(ty, freqs);
        return torch.cat([ax, ay], -1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The complex table as float32 <c>[end_x·end_y, dim/2, 2]</c> (<c>view_as_real</c> layout: cos, sin), the form
    /// in which checkpoints store the ViT <c>attn.freqs_cis</c> buffers.
    /// </summary>
    public static Tensor ComputeAxialCisAsReal(int dim, int endX, int endY, double theta, double scalePos = 1.0, int offset = 0, Device? device = null)
    {
        using var scope = NewDisposeScope();
        var a = ComputeAngles(dim, endX, endY, theta, scalePos, offset, device);
        return torch.stack([a.cos(), a.sin()], -1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Tables ready for <see cref="Apply"/>: <c>cos</c> and <c>sin</c> each float32 <c>[L, dim]</c>, repeated per channel
    /// pair, with the sine's sign folded in: <c>cos = [c0,c0,c1,c1,…]</c>, <c>sin = [−s0,s0,−s1,s1,…]</c>.
    /// </summary>
    public static (Tensor cos, Tensor sin) InterleavedTables(Tensor angles)
    {
        using var scope = NewDisposeScope();
        var c = angles.cos();
        var s = angles.sin();
        var cos = torch.stack([c, c], -1).flatten(-2);
        var sin = torch.stack([-s, s], -1).flatten(-2);
        return (cos.MoveToOuterDisposeScope(), sin.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Rotates interleaved pairs of the last dim of <paramref name="x"/> (<c>[..., L, dim]</c>) by the table:
    /// <c>(x_{2j} + i·x_{2j+1})·(c_j + i·s_j)</c>, i.e. <c>out_{2j} = x_{2j}c_j − x_{2j+1}s_j</c>,
    /// <c>out_{2j+1} = x_{2j}s_j + x_{2j+1}c_j</c>. The math runs in float32 and the result is cast back to the input
    /// dtype (an fp32 island under reduced precision).
    /// </summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        var dtype = x.dtype;
        var xf = dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);
        long d = xf.shape[^1];
        // Pair-swapped copy: (x_{2j+1}, x_{2j}); then out = x·cos + swap(x)·sin with sin = (−s, s).
        var swapped = xf.unflatten(xf.dim() - 1, [d / 2, 2]).flip(-1).flatten(-2);
        var res = xf * cos;
        res.addcmul_(swapped, sin, 1);
        if (dtype != ScalarType.Float32) res = res.to(dtype);
        return res.MoveToOuterDisposeScope();
    }
}
