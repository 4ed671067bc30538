using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Processing;

/// <summary>
/// The mask post-processing's <c>interpolate(bilinear, align_corners=False) → sigmoid → &gt; 0.5</c> of one
/// <c>[h, w]</c> float logit map fused into one pass that writes the bytes 0/1 of the <c>[H, W]</c> mask, with no
/// full-resolution float tensor: the logits are upsampled with LibTorch's own CPU arithmetic (the generic separable kernel
/// that <c>upsample_bilinear2d</c> runs for one channel) and compared as <see cref="SigmoidHalfThreshold"/> does.
/// <para>
/// LibTorch computes, per output pixel, <c>t_r = in[r, x0]·wx0 + in[r, x1]·wx1</c> for the two source rows, then
/// <c>t_y0·wy0 + t_y1·wy1</c>, with float source coordinates <c>max(scale·(i + 0.5) − 0.5, 0)</c>,
/// <c>scale = in / out</c>, <c>λ1 = clamp(src − ⌊src⌋, 0, 1)</c>, <c>λ0 = 1 − λ1</c> (a copy where a size is unchanged).
/// Whether the compiler fused a product and a sum into an FMA in the LibTorch build is not visible from here, so the
/// arithmetic variant is chosen once per process by comparing each candidate bit for bit with LibTorch's
/// <c>interpolate</c> on probe maps (<see cref="Variant"/>), and checked once more on each new geometry
/// (<see cref="VariantFor"/>); when none matches, the caller upsamples with LibTorch. Measured with LibTorch 2.10 (AVX2):
/// both sums and the source coordinate are fused (<c>fma(t0, w0, t1·w1)</c>).
/// </para>
/// </summary>
internal static class BilinearThreshold
{
    /// <summary>How <c>a·b + c·d</c> is rounded: both products rounded (<see cref="Plain"/>), or one of them fused.</summary>
    internal enum Sum { Plain, FusedFirst, FusedSecond }

    /// <summary>One arithmetic variant: the two interpolation sums and the source-coordinate <c>scale·x − 0.5</c>.</summary>
    internal readonly record struct Arithmetic(Sum Horizontal, Sum Vertical, bool FusedSource)
    {
        public override string ToString() => $"horizontal {Horizontal}, vertical {Vertical}, source {(FusedSource ? "fused" : "plain")}";
    }

    private static readonly Lazy<Arithmetic?> Calibrated = new(Calibrate);

    /// <summary>The variant that reproduces LibTorch's interpolate on this machine, or null (then use LibTorch's).</summary>
    public static Arithmetic? Variant => Calibrated.Value;

    /// <summary>Whether the fused path reproduces LibTorch here (calibrated on first use).</summary>
    public static bool Available => Variant is not null;

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(int, int, int, int), bool> Verified = new();

    /// <summary>Geometries checked at most (then the fused path is not used for new ones).</summary>
    private const int MaxVerifiedGeometries = 256;

    /// <summary>
    /// The variant for upsampling <c>[h, w]</c> to <c>[H, W]</c>, or null (use LibTorch's interpolate): only where both
    /// axes change size (LibTorch's build rounds an unchanged axis's copy through another code path) and once the
    /// variant has equalled LibTorch bit for bit on a probe map of this very geometry (checked once per geometry).
    /// </summary>
    public static Arithmetic? VariantFor(int h, int w, int height, int width)
    {
        if (Variant is not { } a || h == height || w == width) return null;
        var key = (h, w, height, width);
        if (Verified.TryGetValue(key, out bool ok)) return ok ? a : null;
        if (Verified.Count >= MaxVerifiedGeometries) return null;
        ok = Matches(a, h, w, height, width, new Random(HashCode.Combine(h, w, height, width)));
        Verified[key] = ok;
        return ok ? a : null;
    }

    /// <summary>Whether the variant equals LibTorch's interpolate bit for bit on a random map of this geometry.</summary>
    private static bool Matches(Arithmetic a, int h, int w, int height, int width, Random gen)
    {
        var src = new float[h * w];
        for (int i = 0; i < src.Length; i++) src[i] = (float)(gen.NextDouble() * 40 - 20);
        return Upsample(src, h, w, height, width, a).AsSpan().SequenceEqual(LibTorch(src, h, w, height, width));
    }

    private static float[] LibTorch(float[] src, int h, int w, int height, int width)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        return nn.functional.interpolate(torch.tensor(src).reshape(1, 1, h, w), [height, width], mode: InterpolationMode.Bilinear, align_corners: false)
            .contiguous().data<float>().ToArray();
    }

    /// <summary>Source indices and weights of one axis, as LibTorch's <c>compute_indices_weights_linear</c> makes them.</summary>
    internal sealed record Axis(int[] I0, int[] I1, float[] W0, float[] W1)
    {
        public static Axis Of(int inSize, int outSize, bool fusedSource)
        {
            var i0 = new int[outSize]; var i1 = new int[outSize];
            var w0 = new float[outSize]; var w1 = new float[outSize];
            float scale = (float)inSize / outSize;
            for (int i = 0; i < outSize; i++)
            {
                if (inSize == outSize)
                {
                    i0[i] = i1[i] = i; w0[i] = 1f; w1[i] = 0f;
                    continue;
                }
                float centre = (float)i + 0.5f;
                float real = fusedSource ? MathF.FusedMultiplyAdd(scale, centre, -0.5f) : Sub(Mul(scale, centre), 0.5f);
                if (real < 0f) real = 0f;
                int index = (int)Math.Min((long)MathF.Floor(real), inSize - 1);
                float lambda = MathF.Min(MathF.Max(real - index, 0f), 1f);
                i0[i] = index;
                i1[i] = index + (index < inSize - 1 ? 1 : 0);
                w1[i] = lambda;
                w0[i] = 1f - lambda;
            }
            return new Axis(i0, i1, w0, w1);
        }

        // separate statements keep each operation rounded to float
        private static float Mul(float a, float b) => a * b;
        private static float Sub(float a, float b) => a - b;
    }

    /// <summary>
    /// Upsamples one contiguous <c>[h, w]</c> float map at <paramref name="src"/> to <c>[H, W]</c> and writes
    /// <c>sigmoid(·) &gt; 0.5</c> as bytes to <paramref name="dst"/> (H·W bytes); the logits of the undecided band are
    /// appended (position within the mask, value) for <see cref="SigmoidHalfThreshold.Decide"/>. Uses up to
    /// <paramref name="threads"/> threads over rows and <paramref name="horizontal"/> (≥ h·W floats) as scratch.
    /// </summary>
    public static unsafe void Mask(float* src, int h, int w, byte* dst, int height, int width, Axis rows, Axis cols, Arithmetic a,
        int threads, float[] horizontal, List<long> bandPositions, List<float> bandValues)
    {
        // horizontal pass: every source row at the output width, into the caller's scratch of h·W floats
        if (horizontal.LongLength < (long)h * width) throw new ArgumentException($"scratch of {horizontal.LongLength} floats for {h}x{width}", nameof(horizontal));
        int parts = Math.Max(1, Math.Min(threads, height / 64));
        fixed (float* hz = horizontal)
        fixed (int* c0 = cols.I0, c1 = cols.I1)
        fixed (float* cw0 = cols.W0, cw1 = cols.W1)
        {
            float* hp = hz; int* x0 = c0, x1 = c1; float* wx0 = cw0, wx1 = cw1;
            void Horizontal(int r)
            {
                float* row = src + (long)r * w, o = hp + (long)r * width;
                for (int x = 0; x < width; x++) o[x] = Combine(row[x0[x]], wx0[x], row[x1[x]], wx1[x], a.Horizontal);
            }
            if (parts == 1) for (int r = 0; r < h; r++) Horizontal(r);
            else Parallel.For(0, h, new ParallelOptions { MaxDegreeOfParallelism = threads }, Horizontal);

            // vertical pass, fused with the comparison, row by row into a small reused row of floats
            var positions = new List<long>[parts];
            var values = new List<float>[parts];
            void Vertical(int p)
            {
                var pos = new List<long>(); var val = new List<float>();
                var line = new float[width];
                int y0 = (int)((long)height * p / parts), y1 = (int)((long)height * (p + 1) / parts);
                fixed (float* l = line)
                {
                    for (int y = y0; y < y1; y++)
                    {
                        Rows(hp + (long)rows.I0[y] * width, rows.W0[y], hp + (long)rows.I1[y] * width, rows.W1[y], l, width, a.Vertical);
                        int before = pos.Count;
                        SigmoidHalfThreshold.Compare(l, dst + (long)y * width, width, pos, (long)y * width);
                        for (int k = before; k < pos.Count; k++) val.Add(l[pos[k] - (long)y * width]);
                    }
                }
                positions[p] = pos; values[p] = val;
            }
            if (parts == 1) Vertical(0);
            else Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = threads }, Vertical);
            for (int p = 0; p < parts; p++) { bandPositions.AddRange(positions[p]); bandValues.AddRange(values[p]); }
        }
    }

    /// <summary>The upsampled float map itself (no threshold): for the calibration and the tests.</summary>
    internal static unsafe float[] Upsample(float[] src, int h, int w, int height, int width, Arithmetic a)
    {
        var rows = Axis.Of(h, height, a.FusedSource);
        var cols = Axis.Of(w, width, a.FusedSource);
        var horizontal = new float[h * width];
        for (int r = 0; r < h; r++)
            for (int x = 0; x < width; x++)
                horizontal[r * width + x] = Combine(src[r * w + cols.I0[x]], cols.W0[x], src[r * w + cols.I1[x]], cols.W1[x], a.Horizontal);
        var result = new float[height * width];
        fixed (float* hz = horizontal)
        fixed (float* o = result)
            for (int y = 0; y < height; y++)
                Rows(hz + rows.I0[y] * width, rows.W0[y], hz + rows.I1[y] * width, rows.W1[y], o + (long)y * width, width, a.Vertical);
        return result;
    }

    private static float Combine(float a, float wa, float b, float wb, Sum s) => s switch
    {
        Sum.FusedFirst => MathF.FusedMultiplyAdd(a, wa, Product(b, wb)),
        Sum.FusedSecond => MathF.FusedMultiplyAdd(b, wb, Product(a, wa)),
        _ => Product(a, wa) + Product(b, wb),
    };

    private static float Product(float a, float b) => a * b;

    /// <summary><c>out[x] = r0[x]·w0 + r1[x]·w1</c> with the given rounding.</summary>
    private static unsafe void Rows(float* r0, float w0, float* r1, float w1, float* o, int n, Sum s)
    {
        int x = 0;
        if (Avx.IsSupported && (s == Sum.Plain || Fma.IsSupported))
        {
            var v0 = Vector256.Create(w0);
            var v1 = Vector256.Create(w1);
            for (; x + 8 <= n; x += 8)
            {
                var a = Avx.LoadVector256(r0 + x);
                var b = Avx.LoadVector256(r1 + x);
                var r = s switch
                {
                    Sum.FusedFirst => Fma.MultiplyAdd(a, v0, Avx.Multiply(b, v1)),
                    Sum.FusedSecond => Fma.MultiplyAdd(b, v1, Avx.Multiply(a, v0)),
                    _ => Avx.Add(Avx.Multiply(a, v0), Avx.Multiply(b, v1)),
                };
                Avx.Store(o + x, r);
            }
        }
        for (; x < n; x++) o[x] = Combine(r0[x], w0, r1[x], w1, s);
    }

    /// <summary>
    /// Finds the arithmetic variant that equals LibTorch's <c>interpolate(bilinear, align_corners=False)</c> bit for bit
    /// on probe maps of random logits (upsampling, downsampling, an unchanged axis, the full model's 288 → 1200×1800).
    /// </summary>
    /// <summary>Per candidate and probe: pixels that differ from LibTorch (benchmarks' diagnostics).</summary>
    internal static IEnumerable<string> Diagnose()
    {
        var gen = new Random(5);
        foreach (var (h, w, oh, ow) in new[] { (4, 4, 4, 9), (4, 4, 9, 4), (47, 61, 211, 333), (64, 80, 31, 45), (288, 288, 500, 289), (288, 288, 1200, 1800), (288, 288, 2000, 3000) })
        {
            var src = new float[h * w];
            for (int i = 0; i < src.Length; i++) src[i] = (float)(gen.NextDouble() * 40 - 20);
            using var scope = NewDisposeScope();
            var expected = nn.functional.interpolate(torch.tensor(src).reshape(1, 1, h, w), [oh, ow], mode: InterpolationMode.Bilinear, align_corners: false)
                .contiguous().data<float>().ToArray();
            foreach (var hs in Enum.GetValues<Sum>())
                foreach (var vs in Enum.GetValues<Sum>())
                    foreach (var fs in new[] { false, true })
                    {
                        var c = new Arithmetic(hs, vs, fs);
                        var got = Upsample(src, h, w, oh, ow, c);
                        int diff = 0; double maxd = 0; int first = -1;
                        for (int i = 0; i < got.Length; i++)
                            if (got[i] != expected[i]) { diff++; maxd = Math.Max(maxd, Math.Abs(got[i] - expected[i])); if (first < 0) first = i; }
                        if (c.Horizontal == Sum.FusedFirst && c.FusedSource || diff == 0)
                            yield return $"{h}x{w}->{oh}x{ow} {c}: {diff} differ, max {maxd:G3}" + (first >= 0 ? $", first at {first}: {got[first]:R} vs {expected[first]:R}" : "");
                    }
        }
    }

    private static Arithmetic? Calibrate()
    {
        // upsampling geometries whose both axes change size, the full model's 288 → 1200×1800 among them (with LibTorch
        // 2.10 no variant reproduces a downsampling: those geometries fail their own check in VariantFor)
        var probes = new (int H, int W, int OutH, int OutW)[] { (47, 61, 211, 333), (288, 288, 500, 289), (288, 288, 1200, 1800) };
        var candidates = new List<Arithmetic>();
        foreach (var hs in Enum.GetValues<Sum>())
            foreach (var vs in Enum.GetValues<Sum>())
                foreach (var fs in new[] { false, true })
                    candidates.Add(new Arithmetic(hs, vs, fs));
        var gen = new Random(20251130);
        foreach (var (h, w, oh, ow) in probes)
        {
            var src = new float[h * w];
            for (int i = 0; i < src.Length; i++) src[i] = (float)(gen.NextDouble() * 40 - 20);
            var expected = LibTorch(src, h, w, oh, ow);
            candidates.RemoveAll(c => !Upsample(src, h, w, oh, ow, c).AsSpan().SequenceEqual(expected));
            if (candidates.Count == 0) return null;
        }
        return candidates[0];
    }
}
