using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Common;

/// <summary>
/// <c>y = x·Wᵀ + b</c> for a few rows of <c>x</c> (fp32, CPU, inference): a weight-streaming kernel that reads every row
/// of <c>W</c> once for all rows of <c>x</c>, so its cost is the weight bytes over the read bandwidth. LibTorch's
/// <c>linear</c> at M = 3 streams the weights at about a third of the bandwidth a plain <c>sum</c> reaches (issue 15,
/// the text encoder over a prompt's real tokens: 24 layers, 1.2 GB of weights per prompt). Output features are split
/// over <c>torch.get_num_threads()</c> threads. Not bit-identical to MKL's GEMM (another summation order); the error
/// stays within fp32 rounding of the dot products (see the tests' bound).
/// </summary>
/// <remarks>
/// <see cref="TryLinear"/> returns null, and the caller runs LibTorch's <c>linear</c>, for anything outside the kernel's
/// case: not CPU, not fp32, weight not a contiguous 2-D tensor, bias not contiguous 1-D, more than
/// <c>maxRows</c> rows, or autograd would have to record the product (grad mode on and an input requiring grad).
/// </remarks>
internal static unsafe class SkinnyLinear
{
    /// <summary>Instruction set of the inner loop.</summary>
    internal enum Isa
    {
        /// <summary>The widest the CPU has: <see cref="Vector512"/>, else <see cref="Vector256"/>, else <see cref="Scalar"/>.</summary>
        Auto,
        /// <summary>Scalar loop with four accumulators (any CPU).</summary>
        Scalar,
        /// <summary>AVX2 + FMA, 8 floats a vector.</summary>
        Vector256,
        /// <summary>AVX-512F, 16 floats a vector.</summary>
        Vector512,
    }

    /// <summary>
    /// Most rows of <c>x</c> for which the kernel runs (measured on AVX2, 2 threads, full-size text shapes: the kernel
    /// wins at every M ≤ 16; at 32 LibTorch's GEMM is on par; `heads skinny` prints the sweep).
    /// </summary>
    public const int DefaultMaxRows = 16;

    /// <summary>Rows of <c>x</c> handled per pass over a weight row pair (accumulators: 2 weight rows × 4 x rows).</summary>
    private const int RowGroup = 4;

    /// <summary>Fewest output features per parallel part (below this one thread does the whole product).</summary>
    private const int MinFeaturesPerPart = 64;

    /// <summary>Parallel parts per thread (dynamic balance when a core is busy with something else).</summary>
    private const int PartsPerThread = 4;

    /// <summary>The instruction set <see cref="Isa.Auto"/> resolves to on this CPU.</summary>
    public static Isa Best =>
        Avx512F.IsSupported ? Isa.Vector512 : Avx2.IsSupported && Fma.IsSupported ? Isa.Vector256 : Isa.Scalar;

    /// <summary>Whether <paramref name="isa"/> runs on this CPU.</summary>
    public static bool IsSupported(Isa isa) => isa switch
    {
        Isa.Auto or Isa.Scalar => true,
        Isa.Vector256 => Avx2.IsSupported && Fma.IsSupported,
        Isa.Vector512 => Avx512F.IsSupported,
        _ => false,
    };

    /// <summary>Why <see cref="TryLinear"/> would not run the kernel on these operands (null: it would).</summary>
    public static string? Refusal(Tensor x, Tensor weight, Tensor? bias, int maxRows = DefaultMaxRows)
    {
        if (x.device_type != DeviceType.CPU || weight.device_type != DeviceType.CPU) return "not on the CPU";
        if (x.dtype != ScalarType.Float32 || weight.dtype != ScalarType.Float32) return "not float32";
        if (weight.dim() != 2 || !weight.is_contiguous()) return "weight not a contiguous 2-D tensor";
        if (x.dim() < 1 || x.shape[^1] != weight.shape[1]) return "x's last dimension is not the weight's input size";
        if (bias is not null && (bias.device_type != DeviceType.CPU || bias.dtype != ScalarType.Float32 || bias.dim() != 1
                                 || !bias.is_contiguous() || bias.shape[0] != weight.shape[0]))
            return "bias not a contiguous float32 vector of the output size";
        long k = weight.shape[1];
        long m = k == 0 ? 0 : x.numel() / k;
        if (m > maxRows) return $"{m} rows > {maxRows}";
        if (m == 0 || k == 0 || weight.shape[0] == 0) return "empty";
        if (torch.is_grad_enabled() && (x.requires_grad || weight.requires_grad || (bias?.requires_grad ?? false)))
            return "autograd would record the product";
        return null;
    }

    /// <summary>
    /// <c>x·Wᵀ + b</c> ([..., K] → [..., N]) by the weight-streaming kernel, or null when <see cref="Refusal"/> names a
    /// reason (the caller then runs <c>nn.functional.linear</c>).
    /// </summary>
    public static Tensor? TryLinear(Tensor x, Tensor weight, Tensor? bias, int maxRows = DefaultMaxRows, Isa isa = Isa.Auto)
    {
        if (Refusal(x, weight, bias, maxRows) is not null) return null;
        return Linear(x, weight, bias, isa);
    }

    /// <summary>The kernel itself; the operands must pass <see cref="Refusal"/>.</summary>
    internal static Tensor Linear(Tensor x, Tensor weight, Tensor? bias, Isa isa = Isa.Auto)
    {
        if (isa == Isa.Auto) isa = Best;
        if (!IsSupported(isa)) throw new PlatformNotSupportedException($"the CPU lacks {isa}");
        int n = checked((int)weight.shape[0]), k = checked((int)weight.shape[1]);
        int m = checked((int)(x.numel() / k));
        var outShape = x.shape.ToArray();
        outShape[^1] = n;
        using var scope = NewDisposeScope();
        var xc = x.is_contiguous() ? x : x.contiguous();
        var y = torch.empty(outShape, dtype: ScalarType.Float32);
        float* xp = (float*)Address(xc), wp = (float*)Address(weight), yp = (float*)Address(y);
        float* bp = bias is null ? null : (float*)Address(bias);
        var job = new Job(xp, wp, bp, yp, m, n, k, isa);
        int threads = Math.Max(1, torch.get_num_threads());
        int parts = Math.Min(threads * PartsPerThread, n / MinFeaturesPerPart);
        if (threads == 1 || parts <= 1) job.Run(0, n);
        else
        {
            // parts of an even number of features (the kernel pairs weight rows), the last takes the rest
            int per = (n / parts + 1) & ~1;
            Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = threads }, p =>
            {
                int start = p * per, end = p == parts - 1 ? n : Math.Min(n, start + per);
                if (start < end) job.Run(start, end);
            });
        }
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>First element of a contiguous CPU tensor (LibTorch-owned memory: it does not move).</summary>
    private static nint Address(Tensor t)
    {
        fixed (byte* p = t.bytes) return (nint)p;
    }

    /// <summary>One product's operands; <see cref="Run"/> computes output features [start, end) for all rows.</summary>
    private readonly struct Job(float* x, float* w, float* b, float* y, int m, int n, int k, Isa isa)
    {
        public void Run(int start, int end)
        {
            for (int g = 0; g < m; g += RowGroup)
            {
                int rows = Math.Min(RowGroup, m - g);
                float* xg = x + (long)g * k, yg = y + (long)g * n;
                switch (rows)
                {
                    case 1: Group<One>(xg, yg, start, end); break;
                    case 2: Group<Two>(xg, yg, start, end); break;
                    case 3: Group<Three>(xg, yg, start, end); break;
                    default: Group<Four>(xg, yg, start, end); break;
                }
            }
        }

        private void Group<TRows>(float* xg, float* yg, int start, int end) where TRows : struct, IRows
        {
            int j = start;
            for (; j + 1 < end; j += 2)
            {
                float* w0 = w + (long)j * k;
                switch (isa)
                {
                    case Isa.Vector512: Pair512<TRows>(xg, w0, w0 + k, k, yg + j, n); break;
                    case Isa.Vector256: Pair256<TRows>(xg, w0, w0 + k, k, yg + j, n); break;
                    default: PairScalar<TRows>(xg, w0, w0 + k, k, yg + j, n); break;
                }
                if (b != null)
                    for (int r = 0; r < TRows.Count; r++) { yg[r * n + j] += b[j]; yg[r * n + j + 1] += b[j + 1]; }
            }
            if (j < end)
            {
                // an odd last feature: the pair kernel on the same row twice, one result kept
                float* w0 = w + (long)j * k;
                var tmp = stackalloc float[2 * RowGroup];
                switch (isa)
                {
                    case Isa.Vector512: Pair512<TRows>(xg, w0, w0, k, tmp, 2); break;
                    case Isa.Vector256: Pair256<TRows>(xg, w0, w0, k, tmp, 2); break;
                    default: PairScalar<TRows>(xg, w0, w0, k, tmp, 2); break;
                }
                for (int r = 0; r < TRows.Count; r++) yg[r * n + j] = tmp[r * 2] + (b != null ? b[j] : 0f);
            }
        }
    }

    /// <summary>Number of x rows of a group, a compile-time constant for the JIT (dead accumulators are removed).</summary>
    private interface IRows { static abstract int Count { get; } }
    private struct One : IRows { public static int Count => 1; }
    private struct Two : IRows { public static int Count => 2; }
    private struct Three : IRows { public static int Count => 3; }
    private struct Four : IRows { public static int Count => 4; }

    /// <summary>
    /// Dot products of weight rows <paramref name="w0"/>, <paramref name="w1"/> with x rows 0…Count−1 (x row r at
    /// <c>x + r·k</c>); result for x row r and weight row i at <c>y[r·ldy + i]</c>. 8 independent accumulators.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Pair256<TRows>(float* x, float* w0, float* w1, int k, float* y, int ldy) where TRows : struct, IRows
    {
        var a00 = Vector256<float>.Zero; var a01 = Vector256<float>.Zero;
        var a10 = Vector256<float>.Zero; var a11 = Vector256<float>.Zero;
        var a20 = Vector256<float>.Zero; var a21 = Vector256<float>.Zero;
        var a30 = Vector256<float>.Zero; var a31 = Vector256<float>.Zero;
        float* x1 = x + k, x2 = x + 2 * k, x3 = x + 3 * k;
        int i = 0;
        for (; i + Vector256<float>.Count <= k; i += Vector256<float>.Count)
        {
            var v0 = Avx.LoadVector256(w0 + i);
            var v1 = Avx.LoadVector256(w1 + i);
            var xv = Avx.LoadVector256(x + i);
            a00 = Fma.MultiplyAdd(v0, xv, a00); a01 = Fma.MultiplyAdd(v1, xv, a01);
            if (TRows.Count > 1) { xv = Avx.LoadVector256(x1 + i); a10 = Fma.MultiplyAdd(v0, xv, a10); a11 = Fma.MultiplyAdd(v1, xv, a11); }
            if (TRows.Count > 2) { xv = Avx.LoadVector256(x2 + i); a20 = Fma.MultiplyAdd(v0, xv, a20); a21 = Fma.MultiplyAdd(v1, xv, a21); }
            if (TRows.Count > 3) { xv = Avx.LoadVector256(x3 + i); a30 = Fma.MultiplyAdd(v0, xv, a30); a31 = Fma.MultiplyAdd(v1, xv, a31); }
        }
        y[0] = Vector256.Sum(a00) + Tail(x, w0, i, k); y[1] = Vector256.Sum(a01) + Tail(x, w1, i, k);
        if (TRows.Count > 1) { y[ldy] = Vector256.Sum(a10) + Tail(x1, w0, i, k); y[ldy + 1] = Vector256.Sum(a11) + Tail(x1, w1, i, k); }
        if (TRows.Count > 2) { y[2 * ldy] = Vector256.Sum(a20) + Tail(x2, w0, i, k); y[2 * ldy + 1] = Vector256.Sum(a21) + Tail(x2, w1, i, k); }
        if (TRows.Count > 3) { y[3 * ldy] = Vector256.Sum(a30) + Tail(x3, w0, i, k); y[3 * ldy + 1] = Vector256.Sum(a31) + Tail(x3, w1, i, k); }
    }

    /// <summary><see cref="Pair256{TRows}"/> with 16-float AVX-512 vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Pair512<TRows>(float* x, float* w0, float* w1, int k, float* y, int ldy) where TRows : struct, IRows
    {
        var a00 = Vector512<float>.Zero; var a01 = Vector512<float>.Zero;
        var a10 = Vector512<float>.Zero; var a11 = Vector512<float>.Zero;
        var a20 = Vector512<float>.Zero; var a21 = Vector512<float>.Zero;
        var a30 = Vector512<float>.Zero; var a31 = Vector512<float>.Zero;
        float* x1 = x + k, x2 = x + 2 * k, x3 = x + 3 * k;
        int i = 0;
        for (; i + Vector512<float>.Count <= k; i += Vector512<float>.Count)
        {
            var v0 = Avx512F.LoadVector512(w0 + i);
            var v1 = Avx512F.LoadVector512(w1 + i);
            var xv = Avx512F.LoadVector512(x + i);
            a00 = Avx512F.FusedMultiplyAdd(v0, xv, a00); a01 = Avx512F.FusedMultiplyAdd(v1, xv, a01);
            if (TRows.Count > 1) { xv = Avx512F.LoadVector512(x1 + i); a10 = Avx512F.FusedMultiplyAdd(v0, xv, a10); a11 = Avx512F.FusedMultiplyAdd(v1, xv, a11); }
            if (TRows.Count > 2) { xv = Avx512F.LoadVector512(x2 + i); a20 = Avx512F.FusedMultiplyAdd(v0, xv, a20); a21 = Avx512F.FusedMultiplyAdd(v1, xv, a21); }
            if (TRows.Count > 3) { xv = Avx512F.LoadVector512(x3 + i); a30 = Avx512F.FusedMultiplyAdd(v0, xv, a30); a31 = Avx512F.FusedMultiplyAdd(v1, xv, a31); }
        }
        y[0] = Vector512.Sum(a00) + Tail(x, w0, i, k); y[1] = Vector512.Sum(a01) + Tail(x, w1, i, k);
        if (TRows.Count > 1) { y[ldy] = Vector512.Sum(a10) + Tail(x1, w0, i, k); y[ldy + 1] = Vector512.Sum(a11) + Tail(x1, w1, i, k); }
        if (TRows.Count > 2) { y[2 * ldy] = Vector512.Sum(a20) + Tail(x2, w0, i, k); y[2 * ldy + 1] = Vector512.Sum(a21) + Tail(x2, w1, i, k); }
        if (TRows.Count > 3) { y[3 * ldy] = Vector512.Sum(a30) + Tail(x3, w0, i, k); y[3 * ldy + 1] = Vector512.Sum(a31) + Tail(x3, w1, i, k); }
    }

    /// <summary><see cref="Pair256{TRows}"/> without vectors: each dot product in four interleaved scalar sums.</summary>
    private static void PairScalar<TRows>(float* x, float* w0, float* w1, int k, float* y, int ldy) where TRows : struct, IRows
    {
        for (int r = 0; r < TRows.Count; r++)
        {
            float* xr = x + (long)r * k;
            y[r * ldy] = DotScalar(xr, w0, k);
            y[r * ldy + 1] = DotScalar(xr, w1, k);
        }
    }

    private static float DotScalar(float* x, float* w, int k)
    {
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int i = 0;
        for (; i + 4 <= k; i += 4)
        {
            s0 = MathF.FusedMultiplyAdd(x[i], w[i], s0);
            s1 = MathF.FusedMultiplyAdd(x[i + 1], w[i + 1], s1);
            s2 = MathF.FusedMultiplyAdd(x[i + 2], w[i + 2], s2);
            s3 = MathF.FusedMultiplyAdd(x[i + 3], w[i + 3], s3);
        }
        return (s0 + s1) + (s2 + s3) + Tail(x, w, i, k);
    }

    /// <summary>Σ x[i]·w[i] over the elements [from, k) a vector loop left.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Tail(float* x, float* w, int from, int k)
    {
        float s = 0;
        for (int i = from; i < k; i++) s = MathF.FusedMultiplyAdd(x[i], w[i], s);
        return s;
    }
}
