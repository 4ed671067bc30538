using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.Arm;
using System.Runtime.Intrinsics.X86;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Decoder;

/// <summary>
/// The boxRPB attention bias of <see cref="TransformerDecoder.GetRpbMatrix"/> as one fused CPU kernel (inference only: fp32,
/// CPU, no autograd). Input: the per-axis delta features exactly as upstream computes them (<c>dx</c> [B,Q,W,nIn],
/// <c>dy</c> [B,Q,H,nIn]: coordinate − box edge, log-scaled in "log" mode; built by LibTorch in the decoder, so they are
/// upstream's values bit for bit). Per query it runs both axis MLPs (<c>Linear(nIn,hidden) → ReLU → Linear(hidden,heads)</c>)
/// row by row with the hidden layer in registers, and writes the head-major bias <c>[B,heads,(1+)Q,H·W]</c> once, each
/// element <c>ey[y,k] + ex[x,k]</c> (the same single addition as upstream's <c>dy.unsqueeze(3) + dx.unsqueeze(2)</c>), the
/// presence token's zero row first when asked.
/// </summary>
/// <remarks>
/// Not bit-identical to the LibTorch path: the hidden layer is <c>fma(d1, w1, fma(d0, w0, b1))</c> and the output layer's
/// 256-term dot products are summed in vector lanes, then across the lanes, where MKL's GEMM uses its own order. The
/// difference is bounded by fp32 rounding of those sums (≈ n·eps·Σ|terms| in the worst case; measured in
/// <c>BoxRpbKernelTests</c> and the parity runs). Paths: the output width 8 (the released model's 8 heads) with nIn = 2
/// runs vectorised over the hidden units (Vector512 where AVX-512F is there, Vector256 with FMA, Vector128 with FMA or
/// Arm64 AdvSimd); every other shape, and machines without FMA, take the scalar path. Threads: the queries are split into
/// at most <c>torch.get_num_threads()</c> contiguous parts (LibTorch's own pool is idle while the kernel runs).
/// A NaN hidden pre-activation becomes 0 on the vector paths (the x86 <c>max</c> instruction), where LibTorch's ReLU
/// keeps it NaN; the deltas come from sigmoid boxes, so they are finite.
/// </remarks>
internal static class BoxRpbKernel
{
    /// <summary>Tests only: force a path (0 = scalar, 128, 256, 512); null = the widest the machine supports.</summary>
    internal static int? ForcedVectorBits { get; set; }

    /// <summary>Output width of the register path (one accumulator per head).</summary>
    private const int RegisterHeads = 8;

    /// <summary>Fewest queries per thread (below it the kernel stays on the calling thread).</summary>
    private const int MinQueriesPerThread = 8;

    /// <summary>The kernel handles these MLPs: two layers, fp32 CPU weights, the same shapes on both axes.</summary>
    public static bool Supports(Mlp mx, Mlp my)
    {
        if (mx.layers.Count != 2 || my.layers.Count != 2 || mx.out_norm is not null || my.out_norm is not null) return false;
        foreach (var m in new[] { mx, my })
            foreach (var l in m.layers)
                if (l.weight is not { } w || l.bias is not { } b || w.dtype != ScalarType.Float32 || b.dtype != ScalarType.Float32
                    || w.device_type != DeviceType.CPU) return false;
        return mx.layers[0].weight!.shape.SequenceEqual(my.layers[0].weight!.shape)
               && mx.layers[1].weight!.shape.SequenceEqual(my.layers[1].weight!.shape);
    }

    /// <summary>Which path a call takes on this machine for these sizes (bits: 0 = scalar).</summary>
    public static int PathBits(int nIn, int hidden, int heads)
    {
        if (nIn != 2 || heads != RegisterHeads) return 0;
        bool fma = Fma.IsSupported || AdvSimd.Arm64.IsSupported;
        int widest = Avx512F.IsSupported ? 512 : Fma.IsSupported && Vector256.IsHardwareAccelerated ? 256 : fma && Vector128.IsHardwareAccelerated ? 128 : 0;
        int bits = ForcedVectorBits is int f ? Math.Min(f, widest) : widest;
        while (bits > 0 && hidden % (bits / 32) != 0) bits /= 2;
        return bits < 128 ? 0 : bits;
    }

    /// <summary>Packed weights of one axis MLP: w1 column-major [nIn][hidden], b1, w2 [heads][hidden], b2.</summary>
    private sealed class Packed
    {
        public readonly float[] W1T, B1, W2, B2;
        public readonly int NIn, Hidden, Heads;

        public Packed(Mlp mlp)
        {
            var l1 = mlp.layers[0];
            var l2 = mlp.layers[1];
            Hidden = (int)l1.weight!.shape[0];
            NIn = (int)l1.weight.shape[1];
            Heads = (int)l2.weight!.shape[0];
            using var scope = NewDisposeScope();
            W1T = ToArray(l1.weight.detach().t());
            B1 = ToArray(l1.bias!.detach());
            W2 = ToArray(l2.weight.detach());
            B2 = ToArray(l2.bias!.detach());
        }

        private static float[] ToArray(Tensor t) => MemoryMarshal.Cast<byte, float>(t.contiguous().bytes).ToArray();
    }

    /// <summary>
    /// The bias [B, heads, (presenceRow ? 1 : 0) + Q, H·W] from the delta features <paramref name="dx"/> [B,Q,W,nIn] and
    /// <paramref name="dy"/> [B,Q,H,nIn] (fp32, CPU) through the x and y MLPs.
    /// </summary>
    public static unsafe Tensor Bias(Tensor dx, Tensor dy, Mlp embedX, Mlp embedY, bool presenceRow)
    {
        if (dx.dim() != 4 || dy.dim() != 4 || dx.shape[0] != dy.shape[0] || dx.shape[1] != dy.shape[1] || dx.shape[3] != dy.shape[3])
            throw new Sam3Exception($"boxRPB kernel: deltas must be [B,Q,W,n] and [B,Q,H,n], got [{string.Join(",", dx.shape)}] and [{string.Join(",", dy.shape)}]");
        if (dx.dtype != ScalarType.Float32 || dy.dtype != ScalarType.Float32 || dx.device_type != DeviceType.CPU || dy.device_type != DeviceType.CPU)
            throw new Sam3Exception($"boxRPB kernel: fp32 CPU deltas expected, got {dx.dtype} on {dx.device} and {dy.dtype} on {dy.device}");
        var px = new Packed(embedX);
        var py = new Packed(embedY);
        if (px.NIn != dx.shape[3])
            throw new Sam3Exception($"boxRPB kernel: the MLPs take {px.NIn} inputs, the deltas have {dx.shape[3]}");
        using var scope = NewDisposeScope();
        var dxc = dx.contiguous();
        var dyc = dy.contiguous();
        int bs = (int)dx.shape[0], nq = (int)dx.shape[1], w = (int)dx.shape[2], h = (int)dy.shape[2];
        int heads = px.Heads, off = presenceRow ? 1 : 0, rows = nq + off;
        long hw = (long)h * w;
        var result = torch.empty(bs, heads, rows, hw, dtype: ScalarType.Float32);
        int bits = PathBits(px.NIn, px.Hidden, heads);
        fixed (byte* pOut = result.bytes)
        fixed (byte* pDx = dxc.bytes)
        fixed (byte* pDy = dyc.bytes)
        {
            float* outBase = (float*)pOut;
            if (presenceRow)
                for (int b = 0; b < bs; b++)
                    for (int k = 0; k < heads; k++)
                        new Span<float>(outBase + ((long)b * heads + k) * rows * hw, (int)hw).Clear();
            nint o = (nint)pOut, ix = (nint)pDx, iy = (nint)pDy;
            int items = bs * nq;
            int threads = Math.Max(1, Math.Min(torch.get_num_threads(), items / MinQueriesPerThread));
            void Part(int p)
            {
                int begin = (int)((long)items * p / threads), end = (int)((long)items * (p + 1) / threads);
                var tx = new float[heads * w];
                var ty = new float[heads * h];
                fixed (float* exT = tx, eyT = ty)
                    for (int item = begin; item < end; item++)
                    {
                        int b = item / nq, q = item % nq;
                        Table((float*)ix + (long)item * w * px.NIn, w, px, exT, bits);
                        Table((float*)iy + (long)item * h * py.NIn, h, py, eyT, bits);
                        for (int k = 0; k < heads; k++)
                            WriteRow((float*)o + (((long)b * heads + k) * rows + q + off) * hw, eyT + k * h, h, exT + k * w, w);
                    }
            }
            if (threads == 1) Part(0);
            else Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, Part);
            if (UseStreamingStores && Sse.IsSupported) Sse.StoreFence(); // order the streaming stores before LibTorch reads the bias
        }
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>One axis: the MLP over <paramref name="n"/> rows of nIn features → the head-major table t[k·n + i].</summary>
    private static unsafe void Table(float* input, int n, Packed m, float* t, int bits)
    {
        float* o = stackalloc float[RegisterHeads];
        fixed (float* w1 = m.W1T, b1 = m.B1, w2 = m.W2, b2 = m.B2)
        {
            if (bits == 0)
            {
                float* hid = stackalloc float[m.Hidden];
                for (int i = 0; i < n; i++)
                {
                    float* x = input + (long)i * m.NIn;
                    for (int j = 0; j < m.Hidden; j++)
                    {
                        float a = b1[j];
                        for (int c = 0; c < m.NIn; c++) a += x[c] * w1[c * m.Hidden + j];
                        hid[j] = a > 0f ? a : 0f;
                    }
                    for (int k = 0; k < m.Heads; k++)
                    {
                        float a = 0f;
                        float* wk = w2 + k * m.Hidden;
                        for (int j = 0; j < m.Hidden; j++) a += hid[j] * wk[j];
                        t[k * n + i] = a + b2[k];
                    }
                }
                return;
            }
            for (int i = 0; i < n; i++)
            {
                float* x = input + 2L * i;
                switch (bits)
                {
                    case 512: Row512(x[0], x[1], w1, w1 + m.Hidden, b1, w2, m.Hidden, o); break;
                    case 256: Row256(x[0], x[1], w1, w1 + m.Hidden, b1, w2, m.Hidden, o); break;
                    default: Row128(x[0], x[1], w1, w1 + m.Hidden, b1, w2, m.Hidden, o); break;
                }
                for (int k = 0; k < RegisterHeads; k++) t[k * n + i] = o[k] + b2[k];
            }
        }
    }

    // Register path: 8 output accumulators; per chunk of hidden units h = relu(fma(x1, w1[1], fma(x0, w1[0], b1))), then
    // acc[k] += h · w2[k] lane-wise; the lanes are summed at the end. Three copies for the three vector widths.

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Row256(float x0, float x1, float* w10, float* w11, float* b1, float* w2, int hidden, float* o)
    {
        var v0 = Vector256.Create(x0);
        var v1 = Vector256.Create(x1);
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int j = 0; j < hidden; j += 8)
        {
            var h = Vector256.FusedMultiplyAdd(v1, Vector256.Load(w11 + j), Vector256.FusedMultiplyAdd(v0, Vector256.Load(w10 + j), Vector256.Load(b1 + j)));
            h = Vector256.MaxNative(h, Vector256<float>.Zero);
            float* w = w2 + j;
            a0 = Vector256.FusedMultiplyAdd(h, Vector256.Load(w), a0);
            a1 = Vector256.FusedMultiplyAdd(h, Vector256.Load(w + hidden), a1);
            a2 = Vector256.FusedMultiplyAdd(h, Vector256.Load(w + 2 * hidden), a2);
            a3 = Vector256.FusedMultiplyAdd(h, Vector256.Load(w + 3 * hidden), a3);
            a4 = Vector256.FusedMultiplyAdd(h, Vector256.Load(w + 4 * hidden), a4);
            a5 = Vector256.FusedMultiplyAdd(h, Vector256.Load(w + 5 * hidden), a5);
            a6 = Vector256.FusedMultiplyAdd(h, Vector256.Load(w + 6 * hidden), a6);
            a7 = Vector256.FusedMultiplyAdd(h, Vector256.Load(w + 7 * hidden), a7);
        }
        o[0] = Vector256.Sum(a0); o[1] = Vector256.Sum(a1); o[2] = Vector256.Sum(a2); o[3] = Vector256.Sum(a3);
        o[4] = Vector256.Sum(a4); o[5] = Vector256.Sum(a5); o[6] = Vector256.Sum(a6); o[7] = Vector256.Sum(a7);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Row512(float x0, float x1, float* w10, float* w11, float* b1, float* w2, int hidden, float* o)
    {
        var v0 = Vector512.Create(x0);
        var v1 = Vector512.Create(x1);
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int j = 0; j < hidden; j += 16)
        {
            var h = Vector512.FusedMultiplyAdd(v1, Vector512.Load(w11 + j), Vector512.FusedMultiplyAdd(v0, Vector512.Load(w10 + j), Vector512.Load(b1 + j)));
            h = Vector512.MaxNative(h, Vector512<float>.Zero);
            float* w = w2 + j;
            a0 = Vector512.FusedMultiplyAdd(h, Vector512.Load(w), a0);
            a1 = Vector512.FusedMultiplyAdd(h, Vector512.Load(w + hidden), a1);
            a2 = Vector512.FusedMultiplyAdd(h, Vector512.Load(w + 2 * hidden), a2);
            a3 = Vector512.FusedMultiplyAdd(h, Vector512.Load(w + 3 * hidden), a3);
            a4 = Vector512.FusedMultiplyAdd(h, Vector512.Load(w + 4 * hidden), a4);
            a5 = Vector512.FusedMultiplyAdd(h, Vector512.Load(w + 5 * hidden), a5);
            a6 = Vector512.FusedMultiplyAdd(h, Vector512.Load(w + 6 * hidden), a6);
            a7 = Vector512.FusedMultiplyAdd(h, Vector512.Load(w + 7 * hidden), a7);
        }
        o[0] = Vector512.Sum(a0); o[1] = Vector512.Sum(a1); o[2] = Vector512.Sum(a2); o[3] = Vector512.Sum(a3);
        o[4] = Vector512.Sum(a4); o[5] = Vector512.Sum(a5); o[6] = Vector512.Sum(a6); o[7] = Vector512.Sum(a7);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Row128(float x0, float x1, float* w10, float* w11, float* b1, float* w2, int hidden, float* o)
    {
        var v0 = Vector128.Create(x0);
        var v1 = Vector128.Create(x1);
        Vector128<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        for (int j = 0; j < hidden; j += 4)
        {
            var h = Vector128.FusedMultiplyAdd(v1, Vector128.Load(w11 + j), Vector128.FusedMultiplyAdd(v0, Vector128.Load(w10 + j), Vector128.Load(b1 + j)));
            h = Vector128.MaxNative(h, Vector128<float>.Zero);
            float* w = w2 + j;
            a0 = Vector128.FusedMultiplyAdd(h, Vector128.Load(w), a0);
            a1 = Vector128.FusedMultiplyAdd(h, Vector128.Load(w + hidden), a1);
            a2 = Vector128.FusedMultiplyAdd(h, Vector128.Load(w + 2 * hidden), a2);
            a3 = Vector128.FusedMultiplyAdd(h, Vector128.Load(w + 3 * hidden), a3);
            a4 = Vector128.FusedMultiplyAdd(h, Vector128.Load(w + 4 * hidden), a4);
            a5 = Vector128.FusedMultiplyAdd(h, Vector128.Load(w + 5 * hidden), a5);
            a6 = Vector128.FusedMultiplyAdd(h, Vector128.Load(w + 6 * hidden), a6);
            a7 = Vector128.FusedMultiplyAdd(h, Vector128.Load(w + 7 * hidden), a7);
        }
        o[0] = Vector128.Sum(a0); o[1] = Vector128.Sum(a1); o[2] = Vector128.Sum(a2); o[3] = Vector128.Sum(a3);
        o[4] = Vector128.Sum(a4); o[5] = Vector128.Sum(a5); o[6] = Vector128.Sum(a6); o[7] = Vector128.Sum(a7);
    }

    /// <summary>
    /// Write the bias with non-temporal (streaming) stores where the rows are 32-byte aligned (x86 AVX): the 33 MB bias (full
    /// size) does not fit the caches anyway, and streaming stores skip reading each line before it is overwritten.
    /// </summary>
    internal static bool UseStreamingStores { get; set; } = true;

    /// <summary>One head's bias row of one query: dst[y·w + x] = ey[y] + ex[x].</summary>
    private static unsafe void WriteRow(float* dst, float* ey, int h, float* ex, int w)
    {
        if (UseStreamingStores && Avx.IsSupported && w % 8 == 0 && ((nint)dst & 31) == 0)
        {
            for (int y = 0; y < h; y++, dst += w)
            {
                var vv = Vector256.Create(ey[y]);
                for (int x = 0; x < w; x += 8) Avx.StoreAlignedNonTemporal(dst + x, vv + Vector256.Load(ex + x));
            }
            return;
        }
        for (int y = 0; y < h; y++, dst += w)
        {
            float v = ey[y];
            int x = 0;
            if (Vector256.IsHardwareAccelerated)
            {
                var vv = Vector256.Create(v);
                for (; x <= w - 8; x += 8) Vector256.Store(vv + Vector256.Load(ex + x), dst + x);
            }
            else if (Vector128.IsHardwareAccelerated)
            {
                var vv = Vector128.Create(v);
                for (; x <= w - 4; x += 4) Vector128.Store(vv + Vector128.Load(ex + x), dst + x);
            }
            for (; x < w; x++) dst[x] = v + ex[x];
        }
    }
}
