using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Processing;

/// <summary>
/// <c>sigmoid(x) &gt; 0.5</c> of float32 logits, bit-identical to LibTorch's float <c>sigmoid</c> followed by
/// <c>gt(0.5)</c>, without evaluating the sigmoid on every pixel: a logit is compared with the band
/// <c>(0, <see cref="BandUpper"/>]</c>; above it the answer is 1, at or below 0 it is 0, and only the logits inside the band
/// (a handful per image, if any) are decided by LibTorch's own sigmoid.
/// <para>
/// Why the band is enough. LibTorch evaluates float <c>sigmoid(x)</c> as <c>1 / (1 + exp(-x))</c> (the vectorised kernel
/// with SLEEF's <c>expf</c>, error ≤ 1 ulp; the scalar tail with the C library's <c>expf</c>, also ≤ 1 ulp), with an
/// IEEE division. Write <c>e = fl(exp(-x))</c> and <c>s = fl(1 + e)</c>. (1) <c>fl(1 / s) &gt; 0.5</c> exactly when
/// <c>s &lt; 2</c>: for <c>s ≥ 2</c> the quotient is ≤ 0.5; the largest float below 2 is <c>2 − 2⁻²³</c>, whose reciprocal
/// <c>0.5·(1 + 2⁻²⁴ + …)</c> lies more than half an ulp (2⁻²⁵) above 0.5 and rounds up. (2) <c>s &lt; 2</c> exactly when
/// <c>e ≤ 1 − 2⁻²³</c>: <c>e = 1 − 2⁻²⁴</c> gives the tie <c>2 − 2⁻²⁴</c>, which rounds to even, i.e. to 2. (3) For
/// <c>x ≤ 0</c>, <c>exp(−x) ≥ 1</c>, so an expf within 1 ulp returns at least the float below 1, <c>1 − 2⁻²⁴</c>: the answer
/// is 0 (NaN also gives 0 both ways). (4) For <c>x ≥ 2⁻²²</c>, <c>exp(−x) ≤ 1 − 2⁻²² + 2⁻⁴⁵ &lt; 1 − 2⁻²³ − 2⁻²⁴</c>, so an
/// expf within 1 ulp (2⁻²⁴ below 1) returns at most <c>1 − 2⁻²³</c>: the answer is 1 (+∞ included). Only
/// <c>0 &lt; x &lt; 2⁻²²</c> depends on how the expf rounds; with a correctly rounded one the change happens just above
/// <c>3·2⁻²⁵</c>. The band is taken closed at 2⁻²² to leave nothing to doubt.
/// </para>
/// </summary>
internal static class SigmoidHalfThreshold
{
    /// <summary>Upper end of the undecided band, 2⁻²².</summary>
    public const float BandUpper = 1f / (1 << 22);

    /// <summary>The probability threshold this shortcut reproduces (upstream's mask threshold).</summary>
    public const double Threshold = 0.5;

    /// <summary>Float elements below which a chunk is not split across threads.</summary>
    private const long ParallelMinElements = 1L << 18;

    /// <summary>
    /// Writes <c>sigmoid(src[i]) &gt; 0.5</c> as bytes 0/1 for the <c>n × pixels</c> floats at <paramref name="src"/>
    /// (contiguous), image <c>j</c>'s bytes to <c>destinations[j]</c> (<paramref name="pixels"/> bytes each, pinned or
    /// native). Uses up to <paramref name="threads"/> threads; the band logits are decided by LibTorch's sigmoid.
    /// </summary>
    public static unsafe void Apply(float* src, IReadOnlyList<nint> destinations, long pixels, int threads)
    {
        int n = destinations.Count;
        long total = n * pixels;
        if (total == 0) return;
        int parts = threads <= 1 || total < ParallelMinElements ? 1 : threads * 2;
        long per = (total + parts - 1) / parts;
        per = (per + 31) / 32 * 32;
        parts = (int)((total + per - 1) / per);
        var bands = new List<long>[parts];
        void Part(int p)
        {
            var band = new List<long>();
            long begin = p * per, end = Math.Min(total, begin + per);
            // one segment per destination image crossed by this part
            for (long at = begin; at < end;)
            {
                long j = at / pixels, inImage = at % pixels;
                long len = Math.Min(end - at, pixels - inImage);
                byte* dst = (byte*)destinations[(int)j] + inImage;
                Compare(src + at, dst, len, band, at);
                at += len;
            }
            bands[p] = band;
        }
        if (parts == 1) Part(0);
        else Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = threads }, Part);

        int count = bands.Sum(b => b.Count);
        if (count == 0) return;
        var positions = new long[count];
        int c = 0;
        foreach (var b in bands) foreach (var at in b) positions[c++] = at;
        var decided = Decide(positions.Select(at => src[at]).ToArray());
        for (int i = 0; i < count; i++)
        {
            long at = positions[i];
            ((byte*)destinations[(int)(at / pixels)])[at % pixels] = decided[i];
        }
    }

    /// <summary><see cref="Apply(float*, IReadOnlyList{nint}, long, int)"/> of one managed run of logits (tests).</summary>
    internal static unsafe byte[] Apply(float[] logits, int threads)
    {
        var dst = new byte[logits.Length];
        if (logits.Length == 0) return dst;
        fixed (float* s = logits)
        fixed (byte* d = dst)
            Apply(s, [(nint)d], logits.Length, threads);
        return dst;
    }

    /// <summary>LibTorch's own <c>sigmoid(x) &gt; 0.5</c> of the given logits, as bytes 0/1.</summary>
    internal static byte[] Decide(float[] logits)
    {
        if (logits.Length == 0) return [];
        using var scope = NewDisposeScope();
        // padded to whole vectors so that LibTorch's vectorised kernel (the one the full-size tensor goes through)
        // evaluates them; the padding repeats the last value
        int padded = (logits.Length + 63) / 64 * 64;
        var values = new float[padded];
        logits.CopyTo(values, 0);
        for (int i = logits.Length; i < padded; i++) values[i] = logits[^1];
        var t = torch.tensor(values).sigmoid().gt(Threshold).to(ScalarType.Byte);
        return t.data<byte>().ToArray().AsSpan(0, logits.Length).ToArray();
    }

    /// <summary>
    /// One contiguous run: <c>dst[i] = src[i] &gt; BandUpper</c>; positions <c>offset + i</c> of the logits in
    /// <c>(0, BandUpper]</c> are appended to <paramref name="band"/> (their byte is written 0 and fixed up later).
    /// </summary>
    internal static unsafe void Compare(float* src, byte* dst, long n, List<long> band, long offset)
    {
        long i = 0;
        if (Avx2.IsSupported)
        {
            var hi = Vector256.Create(BandUpper);
            var zero = Vector256<float>.Zero;
            var one = Vector256.Create((byte)1);
            // packs work per 128-bit lane: restore the element order with a 64-bit permutation
            for (; i + 32 <= n; i += 32)
            {
                var a = Avx.LoadVector256(src + i);
                var b = Avx.LoadVector256(src + i + 8);
                var c = Avx.LoadVector256(src + i + 16);
                var d = Avx.LoadVector256(src + i + 24);
                var ga = Avx.CompareGreaterThan(a, hi);
                var gb = Avx.CompareGreaterThan(b, hi);
                var gc = Avx.CompareGreaterThan(c, hi);
                var gd = Avx.CompareGreaterThan(d, hi);
                var inBand = Avx.AndNot(ga, Avx.CompareGreaterThan(a, zero)) | Avx.AndNot(gb, Avx.CompareGreaterThan(b, zero))
                           | Avx.AndNot(gc, Avx.CompareGreaterThan(c, zero)) | Avx.AndNot(gd, Avx.CompareGreaterThan(d, zero));
                var ab = Avx2.PackSignedSaturate(ga.AsInt32(), gb.AsInt32());
                var cd = Avx2.PackSignedSaturate(gc.AsInt32(), gd.AsInt32());
                var bytes = Avx2.PackSignedSaturate(ab, cd).AsByte();
                bytes = Avx2.PermuteVar8x32(bytes.AsInt32(), Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7)).AsByte() & one;
                Avx.Store(dst + i, bytes);
                if (Avx.MoveMask(inBand) != 0)
                    for (long k = i; k < i + 32; k++)
                        if (src[k] > 0f && !(src[k] > BandUpper)) band.Add(offset + k);
            }
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            var hi = Vector128.Create(BandUpper);
            var zero = Vector128<float>.Zero;
            var one = Vector128.Create((byte)1);
            for (; i + 16 <= n; i += 16)
            {
                var a = Vector128.Load(src + i);
                var b = Vector128.Load(src + i + 4);
                var c = Vector128.Load(src + i + 8);
                var d = Vector128.Load(src + i + 12);
                var ga = Vector128.GreaterThan(a, hi);
                var gb = Vector128.GreaterThan(b, hi);
                var gc = Vector128.GreaterThan(c, hi);
                var gd = Vector128.GreaterThan(d, hi);
                var inBand = (Vector128.GreaterThan(a, zero) & ~ga) | (Vector128.GreaterThan(b, zero) & ~gb)
                           | (Vector128.GreaterThan(c, zero) & ~gc) | (Vector128.GreaterThan(d, zero) & ~gd);
                var bytes = Vector128.Narrow(Vector128.Narrow(ga.AsInt32(), gb.AsInt32()), Vector128.Narrow(gc.AsInt32(), gd.AsInt32())).AsByte() & one;
                bytes.Store(dst + i);
                if (inBand != Vector128<float>.Zero)
                    for (long k = i; k < i + 16; k++)
                        if (src[k] > 0f && !(src[k] > BandUpper)) band.Add(offset + k);
            }
        }
        for (; i < n; i++)
        {
            float x = src[i];
            bool above = x > BandUpper;
            dst[i] = above ? (byte)1 : (byte)0;
            if (x > 0f && !above) band.Add(offset + i);
        }
    }
}
