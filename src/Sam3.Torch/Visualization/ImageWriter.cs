using OpenCvSharp;
using Sam3.Torch.IO;

namespace Sam3.Torch.Visualization;

/// <summary>Encodes and saves <see cref="RgbImage"/>s as PNG or JPEG (OpenCV codecs).</summary>
internal static class ImageWriter
{
    /// <summary>JPEG quality used when none is given.</summary>
    public const int DefaultJpegQuality = 95;

    /// <summary>A PNG file's bytes (lossless, 8-bit RGB).</summary>
    public static byte[] EncodePng(RgbImage image) => Encode(image, ".png", []);

    /// <summary>A JPEG file's bytes at <paramref name="quality"/> (1..100).</summary>
    public static byte[] EncodeJpeg(RgbImage image, int quality = DefaultJpegQuality)
    {
        if (quality < 1 || quality > 100) throw new Sam3Exception($"JPEG quality must be in [1, 100], got {quality}");
        return Encode(image, ".jpg", [(int)ImwriteFlags.JpegQuality, quality]);
    }

    /// <summary>
    /// Writes <paramref name="image"/> to <paramref name="path"/>, PNG or JPEG by the extension (.png, .jpg, .jpeg;
    /// any case). An existing file is never replaced unless <paramref name="overwrite"/> is true: by default the call
    /// throws <see cref="Sam3Exception"/> (so an input image cannot be clobbered by accident). The folder must exist.
    /// </summary>
    public static void Save(RgbImage image, string path, bool overwrite = false, int jpegQuality = DefaultJpegQuality)
    {
        ArgumentNullException.ThrowIfNull(image);
        if (string.IsNullOrWhiteSpace(path)) throw new Sam3Exception("output path is empty");
        string ext = Path.GetExtension(path).ToLowerInvariant();
        byte[] bytes = ext switch
        {
            ".png" => EncodePng(image),
            ".jpg" or ".jpeg" => EncodeJpeg(image, jpegQuality),
            _ => throw new Sam3Exception($"cannot tell the image format of '{path}': use a .png, .jpg or .jpeg extension"),
        };
        string full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new Sam3Exception($"'{path}' is a folder, not a file");
        if (!overwrite && File.Exists(full))
            throw new Sam3Exception($"'{path}' already exists; refusing to overwrite it (pass overwrite: true to replace it)");
        string? dir = Path.GetDirectoryName(full);
        if (dir != null && !Directory.Exists(dir)) throw new Sam3Exception($"cannot save '{path}': folder '{dir}' does not exist");
        // Written under a temporary name in the same folder, then renamed: a reader never sees a half-written file, and
        // a failed write (full disk) leaves any previous file untouched.
        string temp = Path.Combine(dir ?? ".", $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                fs.Write(bytes);
                fs.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite);
        }
        catch (IOException ex) when (!overwrite && File.Exists(full))
        {
            throw new Sam3Exception($"'{path}' already exists; refusing to overwrite it (pass overwrite: true to replace it)", ex);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new Sam3Exception($"cannot save '{path}': {ex.Message}", ex);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    private static byte[] Encode(RgbImage image, string ext, int[] parameters)
    {
        ArgumentNullException.ThrowIfNull(image);
        using var bgr = image.ToMat();
        if (!Cv2.ImEncode(ext, bgr, out byte[] buffer, parameters))
            throw new Sam3ImageException($"OpenCV could not encode a {image.Width}x{image.Height} image as {ext}");
        return buffer;
    }
}
