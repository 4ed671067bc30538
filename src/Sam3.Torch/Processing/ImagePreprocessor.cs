using Sam3.Torch.Config;
using Sam3.Torch.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Processing;

/// <summary>
/// The image transform of <c>Sam3Processor</c> (<c>sam3_image_processor.py</c>, architecture guide §2.1 and §4.19):
/// the uint8 image is resized to S×S with bilinear interpolation, <b>antialias on</b>, align_corners off, computed on
/// the uint8 tensor (LibTorch's fixed-point uint8 kernel, the one torchvision v2 uses on the CPU) so the result is
/// uint8; then it is scaled by 1/255 and normalised with the configured mean and std, giving float32 [B, 3, S, S].
/// </summary>
/// <remarks>
/// <para>The aspect ratio is not kept: the image is squashed to a square, without padding, as upstream does.</para>
/// <para>The resize always runs on the CPU, where it matches the reference fixtures byte for byte. (Upstream runs the
/// transform on the model's device; on CUDA torchvision resizes in float32 and rounds, which differs by ±1 on some
/// values.) The uint8 result is then moved to the requested device and normalised there.</para>
/// <para>Normalisation follows torchvision's operation order in float32: <c>u.to(float32) * (1/255)</c>
/// (<c>ToDtype(float32, scale=True)</c>), then <c>(x − mean) / std</c> (<c>Normalize</c>).</para>
/// </remarks>
internal sealed class ImagePreprocessor
{
    private readonly float[] _mean;
    private readonly float[] _std;

    /// <summary>Uses <see cref="Sam3Config.ImageSize"/>, <see cref="Sam3Config.ImageMean"/> and <see cref="Sam3Config.ImageStd"/>.</summary>
    public ImagePreprocessor(Sam3Config config)
        : this((config ?? throw new ArgumentNullException(nameof(config))).ImageSize, config.ImageMean, config.ImageStd)
    {
    }

    /// <param name="imageSize">S, the side of the square model input.</param>
    /// <param name="mean">Per-channel (R, G, B) mean, on the [0, 1] scale.</param>
    /// <param name="std">Per-channel (R, G, B) standard deviation, on the [0, 1] scale; non-zero.</param>
    public ImagePreprocessor(int imageSize, IReadOnlyList<double> mean, IReadOnlyList<double> std)
    {
        ArgumentNullException.ThrowIfNull(mean);
        ArgumentNullException.ThrowIfNull(std);
        if (imageSize <= 0) throw new Sam3ConfigException($"image size must be positive, got {imageSize}");
        if (mean.Count != 3 || std.Count != 3)
            throw new Sam3ConfigException($"image mean and std need 3 values (R, G, B), got {mean.Count} and {std.Count}");
        if (mean.Any(v => !double.IsFinite(v)) || std.Any(v => !double.IsFinite(v) || v == 0))
            throw new Sam3ConfigException($"image mean must be finite and std finite and non-zero, got mean [{string.Join(", ", mean)}], std [{string.Join(", ", std)}]");
        ImageSize = imageSize;
        _mean = mean.Select(v => (float)v).ToArray();
        _std = std.Select(v => (float)v).ToArray();
    }

    /// <summary>S: the output is S×S.</summary>
    public int ImageSize { get; }

    /// <summary>Per-channel mean, as used (float32).</summary>
    public IReadOnlyList<float> Mean => _mean;

    /// <summary>Per-channel std, as used (float32).</summary>
    public IReadOnlyList<float> Std => _std;

    /// <summary>Resizes one image to uint8 [3, S, S] (CPU).</summary>
    public Tensor ResizeUint8(RgbImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        using var scope = NewDisposeScope();
        return ResizeUint8(image.ToTensor(ImageTensorLayout.Chw)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Resizes uint8 [3, H, W] or [B, 3, H, W] to uint8 [3, S, S] or [B, 3, S, S] on the CPU (an input on another
    /// device is copied to the CPU first). Antialiased bilinear, align_corners = false.
    /// </summary>
    public Tensor ResizeUint8(Tensor image)
    {
        CheckUint8Image(image, nameof(image));
        using var scope = NewDisposeScope();
        bool single = image.dim() == 3;
        var x = single ? image.unsqueeze(0) : image;
        if (x.device_type != DeviceType.CPU) x = x.cpu();
        x = x.contiguous();
        var resized = nn.functional.interpolate(x, size: [ImageSize, ImageSize], mode: InterpolationMode.Bilinear,
            align_corners: false, antialias: true);
        if (single) resized = resized.squeeze(0);
        return resized.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// uint8 [3, H, W] or [B, 3, H, W] (any size; normally the resized image) → float32 of the same shape and device:
    /// <c>(u · (1/255) − mean) / std</c> per channel.
    /// </summary>
    public Tensor Normalize(Tensor imageUint8)
    {
        CheckUint8Image(imageUint8, nameof(imageUint8));
        using var scope = NewDisposeScope();
        var device = imageUint8.device;
        var mean = tensor(_mean, dtype: ScalarType.Float32, device: device).view(3, 1, 1);
        var std = tensor(_std, dtype: ScalarType.Float32, device: device).view(3, 1, 1);
        var x = imageUint8.to(ScalarType.Float32).mul(1.0 / 255.0); // ToDtype(float32, scale=True)
        return x.sub(mean).div(std).MoveToOuterDisposeScope();      // Normalize(mean, std)
    }

    /// <summary>One image → float32 [1, 3, S, S] on <paramref name="device"/> (default CPU).</summary>
    public Tensor Preprocess(RgbImage image, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        return Preprocess([image], device);
    }

    /// <summary>A batch of images (any sizes, each resized on its own) → float32 [B, 3, S, S] on <paramref name="device"/>.</summary>
    public Tensor Preprocess(IReadOnlyList<RgbImage> images, Device? device = null)
    {
        using var batch = PreprocessWithIntermediates(images, device);
        using var scope = NewDisposeScope();
        return batch.Input.alias().MoveToOuterDisposeScope();
    }

    /// <summary>uint8 [3, H, W] or [B, 3, H, W] → float32 [B, 3, S, S] on <paramref name="device"/> (default: the input's device).</summary>
    public Tensor Preprocess(Tensor imageUint8, Device? device = null)
    {
        CheckUint8Image(imageUint8, nameof(imageUint8));
        using var scope = NewDisposeScope();
        var target = device ?? imageUint8.device;
        var resized = ResizeUint8(imageUint8);
        if (resized.dim() == 3) resized = resized.unsqueeze(0);
        return Normalize(resized.to(target)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// A batch of images → the model input (float32 [B, 3, S, S] on <paramref name="device"/>, default CPU), the
    /// resized uint8 images (CPU) and the original sizes.
    /// </summary>
    public PreprocessedImages PreprocessWithIntermediates(IReadOnlyList<RgbImage> images, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (images.Count == 0) throw new Sam3ImageException("the image batch is empty");
        for (int i = 0; i < images.Count; i++)
            if (images[i] is null) throw new Sam3ImageException($"image {i} of the batch is null");
        using var scope = NewDisposeScope();
        var resized = stack(images.Select(ResizeUint8).ToArray(), 0);
        var input = Normalize(resized.to(device ?? CPU));
        var sizes = images.Select(im => (im.Height, im.Width)).ToArray();
        return new PreprocessedImages(input.MoveToOuterDisposeScope(), resized.MoveToOuterDisposeScope(), sizes);
    }

    private static void CheckUint8Image(Tensor image, string name)
    {
        ArgumentNullException.ThrowIfNull(image, name);
        if (image.dtype != ScalarType.Byte)
            throw new Sam3ImageException($"{name}: expected a uint8 image tensor, got {image.dtype}");
        long rank = image.dim();
        if (rank is not (3 or 4) || image.shape[rank - 3] != 3)
            throw new Sam3ImageException($"{name}: expected shape [3,H,W] or [B,3,H,W], got [{string.Join(",", image.shape)}]");
        if (image.shape[rank - 1] == 0 || image.shape[rank - 2] == 0 || (rank == 4 && image.shape[0] == 0))
            throw new Sam3ImageException($"{name}: empty image tensor [{string.Join(",", image.shape)}]");
    }
}
