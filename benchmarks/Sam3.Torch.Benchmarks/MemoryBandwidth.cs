using System.Diagnostics;
using Sam3.Torch.Config;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// Memory-read bandwidth of this machine as LibTorch sees it, and the two floors of a weight-streaming stage (issue 15
/// item 2): the text encoder at a few real tokens multiplies every weight once per token, so its 24 layers are bound by
/// reading ≈1.2 GB of fp32 weights, not by FLOPs. For such a stage the honest floor is the larger of
/// <c>FLOPs / GEMM rate</c> and <c>weight bytes / read bandwidth</c>. Callable from the reference harness
/// (<see cref="TextFloors"/>) and printed by the <c>heads text</c> mode.
/// </summary>
internal static class MemoryBandwidth
{
    /// <summary>Bytes the read test streams (well past any last-level cache).</summary>
    public const long DefaultReadBytes = 512L << 20;

    /// <summary>
    /// Read bandwidth in bytes/s: <c>sum()</c> over a fp32 tensor of <paramref name="bytes"/> bytes (one pass, the result
    /// is a scalar), best of <paramref name="reps"/> after one warm-up pass, with the process's current thread count.
    /// Also returns the copy bandwidth (bytes read + written per second, <c>copy_</c> into a second tensor).
    /// </summary>
    public static (double ReadBytesPerS, double CopyBytesPerS) Measure(long bytes = DefaultReadBytes, int reps = 5)
    {
        using var scope = NewDisposeScope();
        long n = bytes / sizeof(float);
        var a = torch.ones(n, dtype: ScalarType.Float32);
        var b = torch.empty(n, dtype: ScalarType.Float32);
        a.sum().Dispose();
        b.copy_(a);
        double read = double.MaxValue, copy = double.MaxValue;
        for (int r = 0; r < reps; r++)
        {
            var sw = Stopwatch.StartNew();
            a.sum().Dispose();
            read = Math.Min(read, sw.Elapsed.TotalSeconds);
            sw.Restart();
            b.copy_(a);
            copy = Math.Min(copy, sw.Elapsed.TotalSeconds);
        }
        return (n * sizeof(float) / read, 2.0 * n * sizeof(float) / copy);
    }

    /// <summary>
    /// Bytes of weights the text encoder reads per forward (the 24 blocks' attention and MLP matrices, biases and
    /// LayerNorms, ln_final and the resizer), at <paramref name="bytesPerElement"/> (4 = fp32). The token embedding
    /// is gathered (a few rows), not streamed, and not counted.
    /// </summary>
    public static double TextWeightBytes(TextConfig t, double bytesPerElement = sizeof(float))
    {
        double w = t.Width, hidden = w * t.MlpRatio;
        double block = (3 * w * w + 3 * w) + (w * w + w) + (w * hidden + hidden) + (hidden * w + w) + 4 * w;
        return bytesPerElement * (t.Layers * block + 2 * w + (w * t.DModel + t.DModel));
    }

    /// <summary>Text encoder FLOPs over <paramref name="tokens"/> positions (upstream runs the full context).</summary>
    public static double TextFlops(TextConfig t, double tokens)
    {
        double l = tokens, w = t.Width, hidden = w * t.MlpRatio;
        double layer = Reference.StageFlops.Gemm(l, w, 3 * w) + Reference.StageFlops.Gemm(l, w, w) + Reference.StageFlops.Attention(l, l, w)
                     + Reference.StageFlops.Gemm(l, w, hidden) + Reference.StageFlops.Gemm(l, hidden, w);
        return t.Layers * layer + Reference.StageFlops.Gemm(l, w, t.DModel);
    }

    /// <summary>
    /// The text encoder's floors in seconds at <paramref name="tokens"/> positions: GEMM floor (FLOPs / <paramref name="gemmFlopsPerS"/>),
    /// bandwidth floor (weight bytes / <paramref name="readBytesPerS"/>), and their maximum, the floor a measured time is
    /// compared with.
    /// </summary>
    public static (double GemmFloorS, double BandwidthFloorS, double FloorS) TextFloors(TextConfig t, double tokens,
        double gemmFlopsPerS, double readBytesPerS, double bytesPerElement = sizeof(float))
    {
        double gemmFloor = TextFlops(t, tokens) / gemmFlopsPerS;
        double bwFloor = TextWeightBytes(t, bytesPerElement) / readBytesPerS;
        return (gemmFloor, bwFloor, Math.Max(gemmFloor, bwFloor));
    }
}
