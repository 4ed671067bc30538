namespace Sam3.Torch.IO;

/// <summary>
/// What <see cref="ImageHeader.Inspect"/> read from an image file without decoding its pixels: the container format
/// and the stored width and height (before any EXIF orientation).
/// </summary>
internal readonly record struct ImageHeaderInfo(ImageFileFormat Format, long Width, long Height);
