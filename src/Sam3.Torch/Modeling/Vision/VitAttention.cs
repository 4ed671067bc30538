using Sam3.Torch.Training.Lora;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Vision;

/// <summary>
/// Multi-head self-attention of the ViT blocks with axial 2D RoPE (vitdet.py <c>VitAttention</c>; relative position
/// embeddings and the cls-token variant are not used by SAM3 and not ported). State-dict keys: <c>qkv.*</c>,
/// <c>proj.*</c>. The upstream persistent buffer <c>freqs_cis</c> (complex64) is deliberately not registered: the
/// table is deterministic, computed lazily on the device of the first forward, and exposed through
/// <see cref="FreqsCisAsReal"/> for checkpoint checks.
/// </summary>
internal sealed class VitAttention : nn.Module<Tensor, Tensor>
{
    public readonly Linear qkv;
    public readonly Linear proj;

    public int num_heads { get; }
    public int head_dim { get; }
    public bool use_rope { get; }
    public double rope_theta { get; }
    /// <summary>Grid the RoPE table is built for (H, W): the window for windowed blocks, N×N for global ones.</summary>
    public (int H, int W) input_size { get; }
    /// <summary>RoPE grid of the previous training stage (defaults to <see cref="input_size"/>).</summary>
    public (int H, int W) rope_pt_size { get; }
    public bool rope_interp { get; }
    /// <summary>Position scale of the table: rope_pt_size/input_size when interpolating, else 1.</summary>
    public double RopeScalePos => rope_interp ? (double)rope_pt_size.H / input_size.H : 1.0;

    // Not a Tensor field on purpose: RegisterComponents would make it a state_dict buffer.
    private sealed class RopeTables { public Tensor Cos = null!; public Tensor Sin = null!; public Device Device = null!; }
    private RopeTables? _rope;

    public VitAttention(int dim, int numHeads, bool qkvBias, bool useRope, double ropeTheta, (int H, int W) inputSize,
                     (int H, int W)? ropePtSize, bool ropeInterp) : base(nameof(VitAttention))
    {
        if (numHeads <= 0 || dim % numHeads != 0) throw new Sam3ConfigException($"ViT attention: dim {dim} is not divisible by num_heads {numHeads}");
        num_heads = numHeads;
        head_dim = dim / numHeads;
        use_rope = useRope;
        rope_theta = ropeTheta;
        input_size = inputSize;
        rope_pt_size = ropePtSize ?? inputSize;
        rope_interp = ropeInterp;
        if (useRope && head_dim % 4 != 0) throw new Sam3ConfigException($"ViT RoPE needs head_dim % 4 == 0, got {head_dim}");
        qkv = nn.Linear(dim, dim * 3, hasBias: qkvBias);
        proj = nn.Linear(dim, dim);
        RegisterComponents();
    }

    /// <summary>
    /// The RoPE table as float32 <c>[H·W, head_dim/2, 2]</c> (cos, sin) — the <c>view_as_real</c> form of the upstream
    /// complex64 buffer <c>attn.freqs_cis</c>. Null when RoPE is off.
    /// </summary>
    public Tensor? FreqsCisAsReal(Device? device = null)
    {
        if (!use_rope) return null;
        return AxialRope.ComputeAxialCisAsReal(head_dim, input_size.H, input_size.W, rope_theta, RopeScalePos, 0, device ?? CPU);
    }

    private RopeTables Tables(Device device)
    {
        if (_rope is { } r && r.Device.type == device.type && r.Device.index == device.index) return r;
        if (_rope is { } old) { old.Cos.Dispose(); old.Sin.Dispose(); }
        using (var scope = NewDisposeScope())
        {
            var angles = AxialRope.ComputeAngles(head_dim, input_size.H, input_size.W, rope_theta, RopeScalePos, 0, device);
            var (cos, sin) = AxialRope.InterleavedTables(angles);
            _rope = new RopeTables { Cos = cos.DetachFromDisposeScope(), Sin = sin.DetachFromDisposeScope(), Device = device };
        }
        return _rope;
    }

    /// <param name="x">Tokens <c>[B, H, W, C]</c> (a window batch for windowed blocks).</param>
    /// <returns><c>[B, H, W, C]</c>.</returns>
    public override Tensor forward(Tensor x)
    {
        if (x.dim() != 4) throw new Sam3Exception($"ViT attention expects [B,H,W,C], got [{string.Join(",", x.shape)}]");
        using var scope = NewDisposeScope();
        long b = x.shape[0], h = x.shape[1], w = x.shape[2], l = h * w;
        // [B, L, 3, heads, hd] -> [3, B, heads, L, hd]
        var qkvT = LoraHooks.Linear(qkv, x).reshape(b, l, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4);
        Tensor q, k;
        var v = qkvT[2];
        if (use_rope)
        {
            if (h != input_size.H || w != input_size.W)
                throw new Sam3Exception($"ViT attention: RoPE table is for a {input_size.H}x{input_size.W} grid, got {h}x{w} (the input image size must equal the configured img_size)");
            var t = Tables(x.device);
            // q and k rotated together: [2, B, heads, L, hd]
            var qk = AxialRope.Apply(qkvT.slice(0, 0, 2, 1), t.Cos, t.Sin);
            q = qk[0];
            k = qk[1];
        }
        else
        {
            q = qkvT[0];
            k = qkvT[1];
        }
        // default scale 1/sqrt(head_dim); dropout is 0 upstream
        var o = nn.functional.scaled_dot_product_attention(q, k, v);
        o = o.permute(0, 2, 1, 3).reshape(b, h, w, -1);
        return LoraHooks.Linear(proj, o).MoveToOuterDisposeScope();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && _rope is { } r) { r.Cos.Dispose(); r.Sin.Dispose(); _rope = null; }
        base.Dispose(disposing);
    }
}
