using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Sam3.Torch.IO;
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
    /// Most rows of <c>x</c> for which the kernel runs. Measured at low load (2026-11-30, AMD EPYC AVX2, 1 thread,
    /// `heads skinny`, the text encoder's [4096,1024] and [1024,4096] weights): the kernel's time is 0.43–0.69× LibTorch's
    /// at M = 2…8, 0.56–0.95× at 12…16; at 24…32 it loses on [1024,4096] (1.2–1.3×), so a 32-token context keeps MKL.
    /// </summary>
    public const int DefaultMaxRows = 16;

    /// <summary>
    /// Fewest rows for which the kernel runs: at M = 1 LibTorch's matrix-vector product streams the weights at least as
    /// fast (same sweep: the kernel took 1.06–1.13× its time).
    /// </summary>
    public const int MinRows = 2;

    /// <summary>Rows of <c>x</c> handled per pass over a block of weight rows (at most 4 × 4 accumulators).</summary>
    private const int RowGroup = 4;

    /// <summary>Floats in a 64-byte cache line (the software prefetch step).</summary>
    private const int LineFloats = 16;

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
        if (weight.numel() > int.MaxValue / sizeof(float)) return "weight over 2 GiB (addressed through a span)";
        if (x.dim() < 1 || x.shape[^1] != weight.shape[1]) return "x's last dimension is not the weight's input size";
        if (bias is not null && (bias.device_type != DeviceType.CPU || bias.dtype != ScalarType.Float32 || bias.dim() != 1
                                 || !bias.is_contiguous() || bias.shape[0] != weight.shape[0]))
            return "bias not a contiguous float32 vector of the output size";
        long k = weight.shape[1];
        long m = k == 0 ? 0 : x.numel() / k;
        if (m > maxRows) return $"{m} rows > {maxRows}";
        if (m < MinRows && m > 0 && weight.shape[0] > 0) return $"{m} row < {MinRows} (LibTorch's matrix-vector product is as fast)";
        if (m == 0 || k == 0 || weight.shape[0] == 0) return "empty";
        if (m * weight.shape[0] > int.MaxValue / sizeof(float)) return "output over 2 GiB (addressed through a span)";
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
        float* xp = (float*)TensorMemory.DataPointer(xc), wp = (float*)TensorMemory.DataPointer(weight), yp = (float*)TensorMemory.DataPointer(y);
        float* bp = bias is null ? null : (float*)TensorMemory.DataPointer(bias);
        var job = new Job(xp, wp, bp, yp, m, n, k, isa);
        int threads = Math.Max(1, torch.get_num_threads());
        int parts = Math.Min(threads * PartsPerThread, n / MinFeaturesPerPart);
        if (threads == 1 || parts <= 1) job.Run(0, n);
        else
        {
            // parts of a multiple of 4 features (the blocks of weight rows), the last takes the rest
            int per = (n / parts + 3) & ~3;
            Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = threads }, p =>
            {
                int start = p * per, end = p == parts - 1 ? n : Math.Min(n, start + per);
                if (start < end) job.Run(start, end);
            });
        }
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>First element of a contiguous CPU tensor (LibTorch-owned memory: it does not move).</summary>
    /// <summary>One product's operands; <see cref="Run"/> computes output features [start, end) for all rows.</summary>
    private readonly struct Job(float* x, float* w, float* b, float* y, int m, int n, int k, Isa isa)
    {
        public void Run(int start, int end)
        {
            // blocks of weight rows outer, groups of ≤ 4 x rows inner: each weight row comes from memory once and is
            // re-read from the cache by the later groups. 8 accumulators: 4 weight rows a block for 1–2 x rows,
            // 2 for more; the last odd feature alone.
            int j = start;
            if (m <= 2)
                for (; j + 3 < end; j += 4) Groups<Four>(j);
            for (; j + 1 < end; j += 2) Groups<Two>(j);
            for (; j < end; j++) Groups<One>(j);
        }

        private void Groups<TCols>(int j) where TCols : struct, IRows
        {
            for (int g = 0; g < m; g += RowGroup)
            {
                float* xg = x + (long)g * k, yg = y + (long)g * n;
                switch (Math.Min(RowGroup, m - g))
                {
                    case 1: Block<One, TCols>(xg, j, yg); break;
                    case 2: Block<Two, TCols>(xg, j, yg); break;
                    case 3: Block<Three, TCols>(xg, j, yg); break;
                    default: Block<Four, TCols>(xg, j, yg); break;
                }
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private void Block<TRows, TCols>(float* xg, int j, float* yg) where TRows : struct, IRows where TCols : struct, IRows
        {
            float* wj = w + (long)j * k;
            switch (isa)
            {
                case Isa.Vector512: Block512<TRows, TCols>(xg, wj, k, yg + j, n); break;
                case Isa.Vector256: Block256<TRows, TCols>(xg, wj, k, yg + j, n); break;
                default: BlockScalar<TRows, TCols>(xg, wj, k, yg + j, n); break;
            }
            if (b != null)
                for (int r = 0; r < TRows.Count; r++)
                    for (int c = 0; c < TCols.Count; c++) yg[r * n + j + c] += b[j + c];
        }
    }

    /// <summary>Number of x rows of a group, a compile-time constant for the JIT (dead accumulators are removed).</summary>
    private interface IRows { static abstract int Count { get; } }
    private struct One : IRows { public static int Count => 1; }
    private struct Two : IRows { public static int Count => 2; }
    private struct Three : IRows { public static int Count => 3; }
    private struct Four : IRows { public static int Count => 4; }

    /// <summary>
    /// Dot products of the TCols weight rows at <paramref name="w"/> (row c at <c>w + c·k</c>) with the TRows x rows at
    /// <paramref name="x"/> (row r at <c>x + r·k</c>); the result for x row r and weight row c goes to <c>y[r·ldy + c]</c>.
    /// One accumulator per pair (the JIT drops the unused ones: TRows and TCols are constants per instantiation).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block256<TRows, TCols>(float* x, float* w, int k, float* y, int ldy) where TRows : struct, IRows where TCols : struct, IRows
    {
        var a00 = Vector256<float>.Zero; var a01 = Vector256<float>.Zero; var a02 = Vector256<float>.Zero; var a03 = Vector256<float>.Zero;
        var a10 = Vector256<float>.Zero; var a11 = Vector256<float>.Zero; var a12 = Vector256<float>.Zero; var a13 = Vector256<float>.Zero;
        var a20 = Vector256<float>.Zero; var a21 = Vector256<float>.Zero; var a22 = Vector256<float>.Zero; var a23 = Vector256<float>.Zero;
        var a30 = Vector256<float>.Zero; var a31 = Vector256<float>.Zero; var a32 = Vector256<float>.Zero; var a33 = Vector256<float>.Zero;
        float* x1 = x + k, x2 = x + 2 * k, x3 = x + 3 * k;
        float* w1 = w + k, w2 = w + 2 * k, w3 = w + 3 * k;
        int i = 0;
        float* next = w + TCols.Count * k;
        for (; i + Vector256<float>.Count <= k; i += Vector256<float>.Count)
        {
            // the next block of weight rows (contiguous after this one) into L2 at the rate this one is read: the
            // hardware prefetchers stop at page boundaries, and a 1024-float row is one page
            Sse.Prefetch1(next + TCols.Count * i);
            if (TCols.Count > 2) Sse.Prefetch1(next + TCols.Count * i + LineFloats);
            var v0 = Avx.LoadVector256(w + i);
            var v1 = TCols.Count > 1 ? Avx.LoadVector256(w1 + i) : default;
            var v2 = TCols.Count > 2 ? Avx.LoadVector256(w2 + i) : default;
            var v3 = TCols.Count > 3 ? Avx.LoadVector256(w3 + i) : default;
            { var xv0 = Avx.LoadVector256(x + i); a00 = Fma.MultiplyAdd(v0, xv0, a00); if (TCols.Count > 1) a01 = Fma.MultiplyAdd(v1, xv0, a01); if (TCols.Count > 2) a02 = Fma.MultiplyAdd(v2, xv0, a02); if (TCols.Count > 3) a03 = Fma.MultiplyAdd(v3, xv0, a03); }
            if (TRows.Count > 1) { var xv1 = Avx.LoadVector256(x1 + i); a10 = Fma.MultiplyAdd(v0, xv1, a10); if (TCols.Count > 1) a11 = Fma.MultiplyAdd(v1, xv1, a11); if (TCols.Count > 2) a12 = Fma.MultiplyAdd(v2, xv1, a12); if (TCols.Count > 3) a13 = Fma.MultiplyAdd(v3, xv1, a13); }
            if (TRows.Count > 2) { var xv2 = Avx.LoadVector256(x2 + i); a20 = Fma.MultiplyAdd(v0, xv2, a20); if (TCols.Count > 1) a21 = Fma.MultiplyAdd(v1, xv2, a21); if (TCols.Count > 2) a22 = Fma.MultiplyAdd(v2, xv2, a22); if (TCols.Count > 3) a23 = Fma.MultiplyAdd(v3, xv2, a23); }
            if (TRows.Count > 3) { var xv3 = Avx.LoadVector256(x3 + i); a30 = Fma.MultiplyAdd(v0, xv3, a30); if (TCols.Count > 1) a31 = Fma.MultiplyAdd(v1, xv3, a31); if (TCols.Count > 2) a32 = Fma.MultiplyAdd(v2, xv3, a32); if (TCols.Count > 3) a33 = Fma.MultiplyAdd(v3, xv3, a33); }
        }
        { y[0 * ldy + 0] = Vector256.Sum(a00) + Tail(x, w, i, k); if (TCols.Count > 1) y[0 * ldy + 1] = Vector256.Sum(a01) + Tail(x, w1, i, k); if (TCols.Count > 2) y[0 * ldy + 2] = Vector256.Sum(a02) + Tail(x, w2, i, k); if (TCols.Count > 3) y[0 * ldy + 3] = Vector256.Sum(a03) + Tail(x, w3, i, k); }
        if (TRows.Count > 1) { y[1 * ldy + 0] = Vector256.Sum(a10) + Tail(x1, w, i, k); if (TCols.Count > 1) y[1 * ldy + 1] = Vector256.Sum(a11) + Tail(x1, w1, i, k); if (TCols.Count > 2) y[1 * ldy + 2] = Vector256.Sum(a12) + Tail(x1, w2, i, k); if (TCols.Count > 3) y[1 * ldy + 3] = Vector256.Sum(a13) + Tail(x1, w3, i, k); }
        if (TRows.Count > 2) { y[2 * ldy + 0] = Vector256.Sum(a20) + Tail(x2, w, i, k); if (TCols.Count > 1) y[2 * ldy + 1] = Vector256.Sum(a21) + Tail(x2, w1, i, k); if (TCols.Count > 2) y[2 * ldy + 2] = Vector256.Sum(a22) + Tail(x2, w2, i, k); if (TCols.Count > 3) y[2 * ldy + 3] = Vector256.Sum(a23) + Tail(x2, w3, i, k); }
        if (TRows.Count > 3) { y[3 * ldy + 0] = Vector256.Sum(a30) + Tail(x3, w, i, k); if (TCols.Count > 1) y[3 * ldy + 1] = Vector256.Sum(a31) + Tail(x3, w1, i, k); if (TCols.Count > 2) y[3 * ldy + 2] = Vector256.Sum(a32) + Tail(x3, w2, i, k); if (TCols.Count > 3) y[3 * ldy + 3] = Vector256.Sum(a33) + Tail(x3, w3, i, k); }
    }

    /// <summary><see cref="Block256{TRows, TCols}"/> with 16-float AVX-512 vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block512<TRows, TCols>(float* x, float* w, int k, float* y, int ldy) where TRows : struct, IRows where TCols : struct, IRows
    {
        var a00 = Vector512<float>.Zero; var a01 = Vector512<float>.Zero; var a02 = Vector512<float>.Zero; var a03 = Vector512<float>.Zero;
        var a10 = Vector512<float>.Zero; var a11 = Vector512<float>.Zero; var a12 = Vector512<float>.Zero; var a13 = Vector512<float>.Zero;
        var a20 = Vector512<float>.Zero; var a21 = Vector512<float>.Zero; var a22 = Vector512<float>.Zero; var a23 = Vector512<float>.Zero;
        var a30 = Vector512<float>.Zero; var a31 = Vector512<float>.Zero; var a32 = Vector512<float>.Zero; var a33 = Vector512<float>.Zero;
        float* x1 = x + k, x2 = x + 2 * k, x3 = x + 3 * k;
        float* w1 = w + k, w2 = w + 2 * k, w3 = w + 3 * k;
        int i = 0;
        float* next = w + TCols.Count * k;
        for (; i + Vector512<float>.Count <= k; i += Vector512<float>.Count)
        {
            Sse.Prefetch1(next + TCols.Count * i);
            if (TCols.Count > 1) Sse.Prefetch1(next + TCols.Count * i + LineFloats);
            if (TCols.Count > 2) Sse.Prefetch1(next + TCols.Count * i + 2 * LineFloats);
            if (TCols.Count > 3) Sse.Prefetch1(next + TCols.Count * i + 3 * LineFloats);
            var v0 = Avx512F.LoadVector512(w + i);
            var v1 = TCols.Count > 1 ? Avx512F.LoadVector512(w1 + i) : default;
            var v2 = TCols.Count > 2 ? Avx512F.LoadVector512(w2 + i) : default;
            var v3 = TCols.Count > 3 ? Avx512F.LoadVector512(w3 + i) : default;
            { var xv0 = Avx512F.LoadVector512(x + i); a00 = Avx512F.FusedMultiplyAdd(v0, xv0, a00); if (TCols.Count > 1) a01 = Avx512F.FusedMultiplyAdd(v1, xv0, a01); if (TCols.Count > 2) a02 = Avx512F.FusedMultiplyAdd(v2, xv0, a02); if (TCols.Count > 3) a03 = Avx512F.FusedMultiplyAdd(v3, xv0, a03); }
            if (TRows.Count > 1) { var xv1 = Avx512F.LoadVector512(x1 + i); a10 = Avx512F.FusedMultiplyAdd(v0, xv1, a10); if (TCols.Count > 1) a11 = Avx512F.FusedMultiplyAdd(v1, xv1, a11); if (TCols.Count > 2) a12 = Avx512F.FusedMultiplyAdd(v2, xv1, a12); if (TCols.Count > 3) a13 = Avx512F.FusedMultiplyAdd(v3, xv1, a13); }
            if (TRows.Count > 2) { var xv2 = Avx512F.LoadVector512(x2 + i); a20 = Avx512F.FusedMultiplyAdd(v0, xv2, a20); if (TCols.Count > 1) a21 = Avx512F.FusedMultiplyAdd(v1, xv2, a21); if (TCols.Count > 2) a22 = Avx512F.FusedMultiplyAdd(v2, xv2, a22); if (TCols.Count > 3) a23 = Avx512F.FusedMultiplyAdd(v3, xv2, a23); }
            if (TRows.Count > 3) { var xv3 = Avx512F.LoadVector512(x3 + i); a30 = Avx512F.FusedMultiplyAdd(v0, xv3, a30); if (TCols.Count > 1) a31 = Avx512F.FusedMultiplyAdd(v1, xv3, a31); if (TCols.Count > 2) a32 = Avx512F.FusedMultiplyAdd(v2, xv3, a32); if (TCols.Count > 3) a33 = Avx512F.FusedMultiplyAdd(v3, xv3, a33); }
        }
        { y[0 * ldy + 0] = Vector512.Sum(a00) + Tail(x, w, i, k); if (TCols.Count > 1) y[0 * ldy + 1] = Vector512.Sum(a01) + Tail(x, w1, i, k); if (TCols.Count > 2) y[0 * ldy + 2] = Vector512.Sum(a02) + Tail(x, w2, i, k); if (TCols.Count > 3) y[0 * ldy + 3] = Vector512.Sum(a03) + Tail(x, w3, i, k); }
        if (TRows.Count > 1) { y[1 * ldy + 0] = Vector512.Sum(a10) + Tail(x1, w, i, k); if (TCols.Count > 1) y[1 * ldy + 1] = Vector512.Sum(a11) + Tail(x1, w1, i, k); if (TCols.Count > 2) y[1 * ldy + 2] = Vector512.Sum(a12) + Tail(x1, w2, i, k); if (TCols.Count > 3) y[1 * ldy + 3] = Vector512.Sum(a13) + Tail(x1, w3, i, k); }
        if (TRows.Count > 2) { y[2 * ldy + 0] = Vector512.Sum(a20) + Tail(x2, w, i, k); if (TCols.Count > 1) y[2 * ldy + 1] = Vector512.Sum(a21) + Tail(x2, w1, i, k); if (TCols.Count > 2) y[2 * ldy + 2] = Vector512.Sum(a22) + Tail(x2, w2, i, k); if (TCols.Count > 3) y[2 * ldy + 3] = Vector512.Sum(a23) + Tail(x2, w3, i, k); }
        if (TRows.Count > 3) { y[3 * ldy + 0] = Vector512.Sum(a30) + Tail(x3, w, i, k); if (TCols.Count > 1) y[3 * ldy + 1] = Vector512.Sum(a31) + Tail(x3, w1, i, k); if (TCols.Count > 2) y[3 * ldy + 2] = Vector512.Sum(a32) + Tail(x3, w2, i, k); if (TCols.Count > 3) y[3 * ldy + 3] = Vector512.Sum(a33) + Tail(x3, w3, i, k); }
    }

    /// <summary><see cref="Block256{TRows, TCols}"/> without vectors: each dot product in four interleaved scalar sums.</summary>
    private static void BlockScalar<TRows, TCols>(float* x, float* w, int k, float* y, int ldy) where TRows : struct, IRows where TCols : struct, IRows
    {
        for (int r = 0; r < TRows.Count; r++)
            for (int c = 0; c < TCols.Count; c++)
                y[r * ldy + c] = DotScalar(x + (long)r * k, w + (long)c * k, k);
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
