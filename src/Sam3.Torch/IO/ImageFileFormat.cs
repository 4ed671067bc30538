namespace Sam3.Torch.IO;

/// <summary>
/// Container formats recognised from a file's leading bytes. Only <see cref="Jpeg"/>, <see cref="Png"/>,
/// <see cref="Bmp"/> and <see cref="WebP"/> are decoded (see <see cref="ImageHeader.SupportedFormats"/>); the others
/// are recognised so that the error can name them.
/// </summary>
internal enum ImageFileFormat
{
    /// <summary>No known signature.</summary>
    Unknown,
    Jpeg,
    Png,
    Bmp,
    WebP,
    Gif,
    Tiff,
    /// <summary>ISO base media image (HEIC, HEIF, AVIF).</summary>
    Heif,
    Jpeg2000,
    JpegXl,
    Ico,
    Psd,
    Pdf,
    /// <summary>The leading bytes are printable text (for instance a text or HTML file renamed to .jpg).</summary>
    Text,
}
