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
    public static Tensor Masks(Tensor lowResLogits, int height, int width, double probabilityThreshold, long chunkElements = DefaultChunkElements)
        => Run(lowResLogits, height, width, chunkElements, ScalarType.Bool, up => up.gt(probabilityThreshold));

    /// <summary>
    /// float32 <c>[K, H, W]</c> on the CPU: <c>sigmoid(upsample(logits))</c> (upstream's "masks_logits", which are
    /// probabilities). Costs 4 bytes a pixel per detection: only for callers that need the probabilities themselves.
    /// </summary>
    public static Tensor Probabilities(Tensor lowResLogits, int height, int width, long chunkElements = DefaultChunkElements)
        => Run(lowResLogits, height, width, chunkElements, ScalarType.Float32, up => up);

    private static Tensor Run(Tensor lowResLogits, int height, int width, long chunkElements, ScalarType resultType, Func<Tensor, Tensor> finish)
    {
        ArgumentNullException.ThrowIfNull(lowResLogits);
        if (height <= 0 || width <= 0) throw new ArgumentOutOfRangeException(nameof(height), $"invalid original size {height}x{width}");
        if (chunkElements <= 0) throw new ArgumentOutOfRangeException(nameof(chunkElements), chunkElements, "the chunk size must be positive");
        using var scope = NewDisposeScope();
        var low = lowResLogits;
        if (low.dim() == 3) low = low.unsqueeze(1);
        if (low.dim() != 4 || low.shape[1] != 1)
            throw new Sam3Exception($"low-resolution mask logits must be [K, h, w] or [K, 1, h, w], got [{string.Join(",", lowResLogits.shape)}]");
        if (low.dtype != ScalarType.Float32) low = low.to(ScalarType.Float32);
        long k = low.shape[0];
        var result = torch.empty(k, height, width, dtype: resultType);
        long perChunk = Math.Max(1, chunkElements / ((long)height * width));
        for (long start = 0; start < k; start += perChunk)
        {
            using var chunkScope = NewDisposeScope();
            long end = Math.Min(k, start + perChunk);
            var up = nn.functional.interpolate(low.slice(0, start, end, 1), [height, width], mode: InterpolationMode.Bilinear, align_corners: false);
            up.sigmoid_();
            result.slice(0, start, end, 1).copy_(finish(up).squeeze(1).cpu());
        }
        return result.MoveToOuterDisposeScope();
    }
}
