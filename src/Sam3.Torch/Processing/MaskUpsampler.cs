using System.Runtime.InteropServices;
using Sam3.Torch.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Processing;

/// <summary>
/// Upsampling of low-resolution mask logits of the KEPT detections to the original image size, the last step of the
/// processor's and the batched post-processor's <c>interpolate(bilinear, align_corners=False) → sigmoid → &gt; 0.5</c>.
/// Works in chunks of detections so that the float temporaries stay bounded (<see cref="DefaultChunkElements"/>) whatever
/// the number of detections and the image size: the only full-resolution tensor that lives on is the boolean result.
/// Bilinear interpolation treats every channel independently and the sigmoid is applied in place, so the result is
/// bit-identical to upsampling all detections at once.
/// </summary>
internal static class MaskUpsampler
{
    /// <summary>Float elements of one chunk's temporary (16 Mi floats = 64 MiB).</summary>
    public const long DefaultChunkElements = 1L << 24;

    /// <summary>
    /// bool <c>[K, H, W]</c> on the CPU: <c>sigmoid(upsample(logits)) &gt; probabilityThreshold</c>.
    /// </summary>
    /// <param name="lowResLogits"><c>[K, h, w]</c> or <c>[K, 1, h, w]</c> logits, any floating dtype and device.</param>
    /// <param name="height">Original height H.</param>
    /// <param name="width">Original width W.</param>
    /// <param name="probabilityThreshold">Threshold on the probabilities (upstream 0.5).</param>
    /// <param name="chunkElements">Upper bound on the float elements upsampled at once (at least one detection).</param>
    public static unsafe Tensor Masks(Tensor lowResLogits, int height, int width, double probabilityThreshold, long chunkElements = DefaultChunkElements)
    {
        if (!UsesLogitCompare(lowResLogits, probabilityThreshold))
            return Run(lowResLogits, height, width, chunkElements, ScalarType.Bool, up => up.gt(probabilityThreshold));
        long k = Validate(lowResLogits, height, width, chunkElements);
        using var scope = NewDisposeScope();
        var result = torch.empty(k, height, width, dtype: ScalarType.Bool);
        if (k > 0)
        {
            long pixels = (long)height * width;
            if (FusedVariant(lowResLogits, height, width) is { } arithmetic)
                FusedInto(lowResLogits, height, width, arithmetic, (j, write) => write((byte*)TensorMemory.DataPointer(result[j])));
            else
                ForEachUpsampled(lowResLogits, height, width, chunkElements, (start, n, up) =>
                    ThresholdInto(up, Enumerable.Range(0, n).Select(j => TensorMemory.DataPointer(result[start + j])).ToList(), pixels));
        }
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The masks of <see cref="Masks"/> written as bytes 0/1 straight into caller-provided arrays, chunk by chunk:
    /// <paramref name="destination"/> gives detection <c>k</c>'s array (at least H×W bytes, row-major; it is overwritten,
    /// so it may be uninitialised), and <paramref name="completed"/>, if given, is called once that array holds mask
    /// <c>k</c> (in order). With CPU float logits and the upstream threshold 0.5 the sigmoid is replaced by the exact
    /// logit comparison of <see cref="SigmoidHalfThreshold"/>, and, where <see cref="BilinearThreshold"/> reproduces LibTorch's
    /// upsampling here, the upsampling is fused with it (<paramref name="allowFused"/>: false = LibTorch's interpolate chunk
    /// by chunk, for comparisons); the values are bit-identical to <see cref="Masks"/>'s either way.
    /// </summary>
    public static unsafe void MasksInto(Tensor lowResLogits, int height, int width, double probabilityThreshold, long chunkElements,
        Func<long, byte[]> destination, Action<long, byte[]>? completed = null, bool allowFused = true)
    {
        ArgumentNullException.ThrowIfNull(destination);
        Validate(lowResLogits, height, width, chunkElements);
        long pixels = (long)height * width;
        if (!UsesLogitCompare(lowResLogits, probabilityThreshold))
        {
            ForEachChunk(lowResLogits, height, width, chunkElements, up => up.gt(probabilityThreshold), (start, chunk) =>
            {
                var all = chunk.cpu().contiguous().bytes; // one byte 0/1 a pixel
                for (int j = 0; j < chunk.shape[0]; j++)
                {
                    var dst = Destination(destination, start + j, pixels);
                    all.Slice((int)(j * pixels), (int)pixels).CopyTo(dst);
                    completed?.Invoke(start + j, dst);
                }
            });
            return;
        }
        if (allowFused && FusedVariant(lowResLogits, height, width) is { } arithmetic)
        {
            FusedInto(lowResLogits, height, width, arithmetic, (k, write) =>
            {
                var dst = Destination(destination, k, pixels);
                fixed (byte* d = dst) write(d);
                completed?.Invoke(k, dst);
            });
            return;
        }
        ForEachUpsampled(lowResLogits, height, width, chunkElements, (start, n, up) =>
        {
            var arrays = new byte[n][];
            var handles = new GCHandle[n];
            try
            {
                for (int j = 0; j < n; j++)
                {
                    arrays[j] = Destination(destination, start + j, pixels);
                    handles[j] = GCHandle.Alloc(arrays[j], GCHandleType.Pinned);
                }
                ThresholdInto(up, handles.Select(h => h.AddrOfPinnedObject()).ToList(), pixels);
            }
            finally
            {
                foreach (var h in handles) if (h.IsAllocated) h.Free();
            }
            if (completed is not null)
                for (int j = 0; j < n; j++) completed(start + j, arrays[j]);
        });
    }

    private static BilinearThreshold.Arithmetic? FusedVariant(Tensor lowResLogits, int height, int width)
        => lowResLogits.shape[0] == 0 ? null
            : BilinearThreshold.VariantFor((int)lowResLogits.shape[^2], (int)lowResLogits.shape[^1], height, width);

    /// <summary>A writer of one mask's bytes to a destination address.</summary>
    private unsafe delegate void MaskWriter(byte* destination);

    /// <summary>
    /// The fused path (<see cref="BilinearThreshold"/>): each mask upsampled and thresholded in one pass straight into
    /// its destination, no full-resolution float tensor; <paramref name="each"/> receives the mask index and the writer
    /// to call with that mask's destination. The band's logits are decided by LibTorch's sigmoid, mask by mask.
    /// </summary>
    private static unsafe void FusedInto(Tensor lowResLogits, int height, int width, BilinearThreshold.Arithmetic arithmetic, Action<long, MaskWriter> each)
    {
        using var scope = NewDisposeScope();
        var low = lowResLogits;
        if (low.dim() == 4) low = low.squeeze(1);
        low = low.to(ScalarType.Float32).contiguous();
        long k = low.shape[0];
        if (k == 0) return;
        int h = (int)low.shape[1], w = (int)low.shape[2];
        var rows = BilinearThreshold.Axis.Of(h, height, arithmetic.FusedSource);
        var cols = BilinearThreshold.Axis.Of(w, width, arithmetic.FusedSource);
        var horizontal = GC.AllocateUninitializedArray<float>(checked(h * width));
        int threads = Math.Max(1, torch.get_num_threads());
        var positions = new List<long>();
        var values = new List<float>();
        fixed (byte* lowBytes = low.bytes)
        {
            float* src = (float*)lowBytes;
            for (long j = 0; j < k; j++)
            {
                float* one = src + j * h * w;
                each(j, dst =>
                {
                    positions.Clear(); values.Clear();
                    BilinearThreshold.Mask(one, h, w, dst, height, width, rows, cols, arithmetic, threads, horizontal, positions, values);
                    if (positions.Count == 0) return;
                    var decided = SigmoidHalfThreshold.Decide(values.ToArray());
                    for (int i = 0; i < decided.Length; i++) dst[positions[i]] = decided[i];
                });
            }
        }
    }

    private static byte[] Destination(Func<long, byte[]> destination, long k, long pixels)
    {
        var dst = destination(k) ?? throw new InvalidOperationException($"no destination array for mask {k}");
        if (dst.LongLength < pixels) throw new ArgumentException($"the destination of mask {k} has {dst.LongLength} bytes, the mask {pixels}", nameof(destination));
        return dst;
    }

    /// <summary>
    /// Whether the exact logit comparison applies: logits on the CPU (upsampled there by LibTorch's CPU kernels, whose
    /// sigmoid <see cref="SigmoidHalfThreshold"/> reproduces) and the threshold 0.5. Elsewhere the sigmoid runs.
    /// </summary>
    internal static bool UsesLogitCompare(Tensor lowResLogits, double probabilityThreshold)
        => probabilityThreshold == SigmoidHalfThreshold.Threshold && lowResLogits.device_type == DeviceType.CPU;

    private static unsafe void ThresholdInto(Tensor up, IReadOnlyList<nint> destinations, long pixels)
    {
        fixed (byte* p = up.bytes)
            SigmoidHalfThreshold.Apply((float*)p, destinations, pixels, Math.Max(1, torch.get_num_threads()));
    }

    /// <summary>
    /// Upsamples the detections chunk by chunk (bilinear, align_corners=False, float32, CPU) and hands the contiguous
    /// logits <c>[n, 1, H, W]</c> of detections <c>start…start+n−1</c> to <paramref name="sink"/>, inside a dispose scope.
    /// </summary>
    private static void ForEachUpsampled(Tensor lowResLogits, int height, int width, long chunkElements, Action<long, int, Tensor> sink)
    {
        using var scope = NewDisposeScope();
        var low = lowResLogits;
        if (low.dim() == 3) low = low.unsqueeze(1);
        if (low.dtype != ScalarType.Float32) low = low.to(ScalarType.Float32);
        long k = low.shape[0];
        long perChunk = Math.Max(1, chunkElements / ((long)height * width));
        for (long start = 0; start < k; start += perChunk)
        {
            using var chunkScope = NewDisposeScope();
            long end = Math.Min(k, start + perChunk);
            var up = nn.functional.interpolate(low.slice(0, start, end, 1), [height, width], mode: InterpolationMode.Bilinear, align_corners: false)
                .contiguous();
            sink(start, (int)(end - start), up);
        }
    }

    /// <summary>
    /// float32 <c>[K, H, W]</c> on the CPU: <c>sigmoid(upsample(logits))</c> (upstream's "masks_logits", which are
    /// probabilities). Costs 4 bytes a pixel per detection: only for callers that need the probabilities themselves.
    /// </summary>
    public static Tensor Probabilities(Tensor lowResLogits, int height, int width, long chunkElements = DefaultChunkElements)
        => Run(lowResLogits, height, width, chunkElements, ScalarType.Float32, up => up);

    /// <summary>
    /// The boolean masks of <see cref="Masks"/> streamed chunk by chunk instead of gathered into one <c>[K, H, W]</c>
    /// tensor: <paramref name="sink"/> receives the index of the chunk's first detection and a contiguous CPU bool
    /// <c>[n, H, W]</c> tensor (storage offset 0, one byte 0/1 a pixel), disposed when the sink returns. The values are
    /// bit-identical to <see cref="Masks"/>'s.
    /// </summary>
    public static void MaskChunks(Tensor lowResLogits, int height, int width, double probabilityThreshold, long chunkElements,
        Action<long, Tensor> sink)
    {
        ArgumentNullException.ThrowIfNull(sink);
        ForEachChunk(lowResLogits, height, width, chunkElements, up => up.gt(probabilityThreshold),
            (start, chunk) => sink(start, chunk.cpu().contiguous()));
    }

    private static Tensor Run(Tensor lowResLogits, int height, int width, long chunkElements, ScalarType resultType, Func<Tensor, Tensor> finish)
    {
        long k = Validate(lowResLogits, height, width, chunkElements);
        using var scope = NewDisposeScope();
        var result = torch.empty(k, height, width, dtype: resultType);
        ForEachChunk(lowResLogits, height, width, chunkElements, finish,
            (start, chunk) => result.slice(0, start, start + chunk.shape[0], 1).copy_(chunk.cpu()));
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>Checks the arguments; returns the number of detections K.</summary>
    private static long Validate(Tensor lowResLogits, int height, int width, long chunkElements)
    {
        ArgumentNullException.ThrowIfNull(lowResLogits);
        if (height <= 0 || width <= 0) throw new ArgumentOutOfRangeException(nameof(height), $"invalid original size {height}x{width}");
        if (chunkElements <= 0) throw new ArgumentOutOfRangeException(nameof(chunkElements), chunkElements, "the chunk size must be positive");
        bool ok = lowResLogits.dim() == 3 || (lowResLogits.dim() == 4 && lowResLogits.shape[1] == 1);
        if (!ok)
            throw new Sam3Exception($"low-resolution mask logits must be [K, h, w] or [K, 1, h, w], got [{string.Join(",", lowResLogits.shape)}]");
        return lowResLogits.shape[0];
    }

    /// <summary>
    /// Upsamples the detections <c>perChunk</c> at a time (bilinear, align_corners=False, then an in-place sigmoid) and
    /// hands <c>finish(probabilities)</c> of shape <c>[n, H, W]</c> to <paramref name="sink"/>, inside a dispose scope
    /// that frees the chunk's temporaries when the sink returns.
    /// </summary>
    private static void ForEachChunk(Tensor lowResLogits, int height, int width, long chunkElements, Func<Tensor, Tensor> finish,
        Action<long, Tensor> sink)
    {
        Validate(lowResLogits, height, width, chunkElements);
        ForEachUpsampled(lowResLogits, height, width, chunkElements, (start, _, up) =>
        {
            up.sigmoid_();
            sink(start, finish(up).squeeze(1));
        });
    }
}
