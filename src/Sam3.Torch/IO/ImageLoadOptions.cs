using Sam3.Torch.IO;
using Sam3.Torch.Processing;

namespace Sam3.Torch;

/// <summary>Options of <see cref="ImageLoader"/>.</summary>
public sealed record ImageLoadOptions
{
    /// <summary>Default largest width or height accepted.</summary>
    public const int DefaultMaxSide = 16384;

    /// <summary>Default largest number of pixels (width × height) accepted: 2^28.</summary>
    public const long DefaultMaxPixels = 1L << 28;

    /// <summary>The defaults: EXIF orientation ignored, 16384 pixels per side, 2^28 pixels.</summary>
    public static ImageLoadOptions Default { get; } = new();

    /// <summary>
    /// Apply the EXIF orientation tag (rotate/flip as a photo viewer would). Off by default: the reference pipeline
    /// decodes with PIL's <c>Image.open(...).convert("RGB")</c>, which ignores the tag, and the model saw images in
    /// that orientation. With this option the image is oriented by OpenCV's rules (JPEG EXIF).
    /// </summary>
    public bool ApplyExifOrientation { get; init; }

    /// <summary>Largest width or height accepted; checked from the file header before decoding.</summary>
    public int MaxSide { get; init; } = DefaultMaxSide;

    /// <summary>Largest width × height accepted; checked from the file header before decoding.</summary>
    public long MaxPixels { get; init; } = DefaultMaxPixels;
}
