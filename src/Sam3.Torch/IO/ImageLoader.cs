using System.Runtime.InteropServices;
using OpenCvSharp;
using SixLabors.ImageSharp.PixelFormats;
using ImageSharpImage = SixLabors.ImageSharp.Image;

using Sam3.Torch.IO;
using Sam3.Torch.Processing;

namespace Sam3.Torch;

/// <summary>
/// Turns image files and in-memory images into <see cref="RgbImage"/> (8-bit RGB, HWC).
/// </summary>
/// <remarks>
/// <para>Files (JPEG, PNG, BMP, WebP; see <see cref="ImageHeader.SupportedFormats"/>) are decoded with OpenCV
/// (<c>imdecode</c>, colour, EXIF orientation ignored) and converted BGR → RGB. On the parity images this is
/// pixel-identical to the reference's PIL <c>Image.open(path).convert("RGB")</c>; ImageSharp's JPEG decoder is not
/// (it differs by up to 42 levels), so ImageSharp is only accepted for images already decoded by the caller.</para>
/// <para>Conversions follow PIL's <c>convert("RGB")</c>: grayscale is replicated to three channels, an alpha channel
/// is dropped (not composited), palette images are expanded. 16-bit PNGs are reduced to 8 bits by OpenCV (high byte).</para>
/// <para>Before decoding, the header is checked (<see cref="ImageHeader.Inspect"/>) and the stored size is checked
/// against <see cref="ImageLoadOptions.MaxSide"/> and <see cref="ImageLoadOptions.MaxPixels"/>. OpenCV's own limit
/// (2^30 pixels unless <c>OPENCV_IO_MAX_IMAGE_PIXELS</c> is set) still applies above those.</para>
/// <para>Every failure is a <see cref="Sam3ImageException"/> whose message names the source and the reason.</para>
/// </remarks>
public static class ImageLoader
{
    /// <summary>Reads and decodes the image file at <paramref name="path"/>.</summary>
    public static RgbImage Load(string path, ImageLoadOptions? options = null)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new Sam3ImageException("image path is empty");
        if (Directory.Exists(path)) throw new Sam3ImageException($"{path}: is a directory, not an image file");
        if (!File.Exists(path)) throw new Sam3ImageException($"image not found: {path}");
        // a device or pipe (/dev/zero, /dev/stdin) would be read without end
        if (PathIdentity.Stat(path).Kind == FileKind.Other) throw new Sam3ImageException($"{path} is not a regular file (a device, pipe or socket), not an image");
        byte[] data;
        try
        {
            data = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            throw new Sam3ImageException($"{path}: cannot read the file ({e.Message})", e);
        }
        return Decode(data, options, path);
    }

    /// <summary>Decodes an encoded image (the bytes of a JPEG, PNG, BMP or WebP file).</summary>
    /// <param name="data">The whole file.</param>
    /// <param name="options">Orientation and size limits; <see cref="ImageLoadOptions.Default"/> when null.</param>
    /// <param name="sourceName">Name used in error messages (a path, a URL); defaults to "image bytes".</param>
    public static RgbImage Decode(byte[] data, ImageLoadOptions? options = null, string? sourceName = null)
    {
        ArgumentNullException.ThrowIfNull(data);
        options ??= ImageLoadOptions.Default;
        string source = sourceName ?? "image bytes";
        var info = ImageHeader.Inspect(data, source);
        CheckSize(info.Width, info.Height, options, source, ImageHeader.Describe(info.Format) + " image");

        var mode = ImreadModes.Color;
        if (!options.ApplyExifOrientation) mode |= ImreadModes.IgnoreOrientation; // PIL ignores EXIF orientation
        Mat bgr;
        try
        {
            bgr = Cv2.ImDecode(data, mode);
        }
        catch (OpenCVException e)
        {
            throw new Sam3ImageException($"{source}: corrupt {ImageHeader.Describe(info.Format)} data ({e.Message})", e);
        }
        catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or EntryPointNotFoundException or BadImageFormatException)
        {
            throw NativeMissing(e);
        }
        using (bgr)
        {
            if (bgr.Empty())
                throw new Sam3ImageException($"{source}: the {ImageHeader.Describe(info.Format)} data could not be decoded (corrupt file?)");
            return FromDecodedMat(bgr, options, source);
        }
    }

    /// <summary>Reads <paramref name="stream"/> to its end and decodes it like <see cref="Decode(byte[], ImageLoadOptions?, string?)"/>.</summary>
    public static RgbImage Decode(Stream stream, ImageLoadOptions? options = null, string? sourceName = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        string source = sourceName ?? "image stream";
        byte[] data;
        try
        {
            using var buffer = new MemoryStream();
            stream.CopyTo(buffer);
            data = buffer.ToArray();
        }
        catch (Exception e) when (e is IOException or NotSupportedException or ObjectDisposedException)
        {
            throw new Sam3ImageException($"{source}: cannot read the stream ({e.Message})", e);
        }
        return Decode(data, options, source);
    }

    /// <summary>
    /// Converts an OpenCV matrix, assumed to be in OpenCV's <b>BGR</b> order (what <c>imread</c>/<c>VideoCapture</c>
    /// give): 8-bit with 3 channels (BGR), 1 channel (grayscale, replicated) or 4 channels (BGRA, alpha dropped).
    /// The matrix is not modified or kept; it may be a non-contiguous region of interest.
    /// </summary>
    public static RgbImage FromMat(Mat bgr, ImageLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(bgr);
        options ??= ImageLoadOptions.Default;
        const string source = "OpenCV Mat";
        if (bgr.IsDisposed) throw new Sam3ImageException($"{source}: the matrix is disposed");
        if (bgr.Empty() || bgr.Rows == 0 || bgr.Cols == 0) throw new Sam3ImageException($"{source}: zero-size image ({bgr.Cols}x{bgr.Rows})");
        if (bgr.Dims != 2) throw new Sam3ImageException($"{source}: expected a 2-D image matrix, got {bgr.Dims} dimensions");
        if (bgr.Depth() != MatType.CV_8U)
            throw new Sam3ImageException($"{source}: expected 8-bit pixels (CV_8U), got {bgr.Type()}; convert with Mat.ConvertTo first");
        if (bgr.Channels() is not (1 or 3 or 4))
            throw new Sam3ImageException($"{source}: expected 1, 3 (BGR) or 4 (BGRA) channels, got {bgr.Channels()}");
        return FromDecodedMat(bgr, options, source);
    }

    /// <summary>Copies an ImageSharp RGB image.</summary>
    public static RgbImage FromImageSharp(SixLabors.ImageSharp.Image<Rgb24> image, ImageLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        options ??= ImageLoadOptions.Default;
        const string source = "ImageSharp image";
        CheckSize(image.Width, image.Height, options, source, "image");
        var data = new byte[3L * image.Width * image.Height];
        image.CopyPixelDataTo(data);
        return new RgbImage(image.Width, image.Height, data);
    }

    /// <summary>
    /// Copies an ImageSharp image of any pixel type, converted to <see cref="Rgb24"/> by ImageSharp (alpha dropped,
    /// gray replicated).
    /// </summary>
    public static RgbImage FromImageSharp(ImageSharpImage image, ImageLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (image is SixLabors.ImageSharp.Image<Rgb24> rgb) return FromImageSharp(rgb, options);
        CheckSize(image.Width, image.Height, options ?? ImageLoadOptions.Default, "ImageSharp image", "image");
        using var converted = image.CloneAs<Rgb24>();
        return FromImageSharp(converted, options);
    }

    /// <summary>Copies raw 8-bit RGB pixels in HWC order (row-major, R G B interleaved, no row padding).</summary>
    public static RgbImage FromRgbBytes(ReadOnlySpan<byte> hwc, int width, int height, ImageLoadOptions? options = null)
    {
        options ??= ImageLoadOptions.Default;
        const string source = "raw RGB bytes";
        CheckSize(width, height, options, source, "image");
        long expected = 3L * width * height;
        if (hwc.Length != expected)
            throw new Sam3ImageException($"{source}: a {width}x{height} RGB image needs {expected} bytes (H*W*3), got {hwc.Length}");
        return new RgbImage(width, height, hwc.ToArray());
    }

    /// <summary>Throws <see cref="Sam3ImageException"/> when the size is zero or above the limits of <paramref name="options"/>.</summary>
    public static void CheckSize(long width, long height, ImageLoadOptions options, string source, string what = "image")
    {
        ArgumentNullException.ThrowIfNull(options);
        if (width <= 0 || height <= 0) throw new Sam3ImageException($"{source}: zero-size {what} ({width}x{height})");
        if (width > options.MaxSide || height > options.MaxSide)
            throw new Sam3ImageException($"{source}: {what} of {width}x{height} exceeds the limit of {options.MaxSide} pixels per side (ImageLoadOptions.MaxSide)");
        if (width * height > options.MaxPixels)
            throw new Sam3ImageException($"{source}: {what} of {width}x{height} = {width * height} pixels exceeds the limit of {options.MaxPixels} (ImageLoadOptions.MaxPixels)");
    }

    private static RgbImage FromDecodedMat(Mat mat, ImageLoadOptions options, string source)
    {
        CheckSize(mat.Cols, mat.Rows, options, source, "decoded image");
        var code = mat.Channels() switch
        {
            1 => ColorConversionCodes.GRAY2RGB,
            3 => ColorConversionCodes.BGR2RGB,
            4 => ColorConversionCodes.BGRA2RGB,
            var c => throw new Sam3ImageException($"{source}: unexpected {c}-channel decoded image"),
        };
        using var rgb = new Mat();
        try
        {
            Cv2.CvtColor(mat, rgb, code);
        }
        catch (OpenCVException e)
        {
            throw new Sam3ImageException($"{source}: colour conversion failed ({e.Message})", e);
        }
        if (!rgb.IsContinuous() || rgb.Type() != MatType.CV_8UC3)
            throw new Sam3ImageException($"{source}: unexpected converted matrix {rgb.Type()}");
        var data = new byte[3L * rgb.Rows * rgb.Cols];
        Marshal.Copy(rgb.Data, data, 0, data.Length);
        return new RgbImage(rgb.Cols, rgb.Rows, data);
    }

    private static Sam3Exception NativeMissing(Exception e) => new(
        "the OpenCV native library (libOpenCvSharpExtern) could not be loaded; on Linux it needs GTK3 and libatomic " +
        $"(apt-get install -y libgtk-3-0 libatomic1) and the OpenCvSharp4 runtime package of this platform ({e.Message})", e);
}
