using TorchSharp;

namespace Sam3.Torch.Processing;

/// <summary>
/// Result of <see cref="ImagePreprocessor.PreprocessWithIntermediates"/>: the model input and the resized uint8 images
/// it was computed from. Disposing it disposes both tensors (which also belong to the dispose scope that was current
/// when they were made, if any; disposing twice is harmless).
/// </summary>
internal sealed class PreprocessedImages : IDisposable
{
    internal PreprocessedImages(torch.Tensor input, torch.Tensor resizedUint8, IReadOnlyList<(int Height, int Width)> originalSizes)
    {
        Input = input;
        ResizedUint8 = resizedUint8;
        OriginalSizes = originalSizes;
    }

    /// <summary>float32 [B, 3, S, S], normalised ((u/255 − mean)/std), on the requested device.</summary>
    public torch.Tensor Input { get; }

    /// <summary>uint8 [B, 3, S, S] after the antialiased bilinear resize, on the CPU.</summary>
    public torch.Tensor ResizedUint8 { get; }

    /// <summary>(height, width) of each image before resizing, in batch order.</summary>
    public IReadOnlyList<(int Height, int Width)> OriginalSizes { get; }

    public void Dispose()
    {
        Input.Dispose();
        ResizedUint8.Dispose();
    }
}
