using System.Runtime.InteropServices;
using OpenCvSharp;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;

using Sam3.Torch.IO;
using Sam3.Torch.Processing;

namespace Sam3.Torch;

/// <summary>
/// A decoded 8-bit RGB image: <see cref="Data"/> holds Height × Width × 3 bytes, row-major, channels interleaved
/// (HWC, R then G then B), exactly what PIL's <c>np.asarray(Image.open(path).convert("RGB"))</c> holds.
/// Created by <see cref="ImageLoader"/>; the array is owned by the image (not copied by the constructor).
/// </summary>
public sealed class RgbImage
{
    /// <summary>Wraps <paramref name="data"/> (HWC RGB, length width × height × 3) without copying.</summary>
    public RgbImage(int width, int height, byte[] data)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (width <= 0 || height <= 0) throw new Sam3ImageException($"zero-size image ({width}x{height})");
        long expected = 3L * width * height;
        if (data.LongLength != expected)
            throw new Sam3ImageException($"RGB data of a {width}x{height} image must hold {expected} bytes (H*W*3), got {data.LongLength}");
        Width = width;
        Height = height;
        Data = data;
    }

    public int Width { get; }
    public int Height { get; }

    /// <summary>HWC RGB bytes, row-major.</summary>
    public byte[] Data { get; }

    /// <summary>(Height, Width), the order the reference keeps original sizes in.</summary>
    public (int Height, int Width) Size => (Height, Width);

    /// <summary>The RGB value of pixel (x, y).</summary>
    public (byte R, byte G, byte B) this[int x, int y]
    {
        get
        {
            if ((uint)x >= (uint)Width || (uint)y >= (uint)Height) throw new ArgumentOutOfRangeException(nameof(x), $"pixel ({x},{y}) outside {Width}x{Height}");
            int i = (y * Width + x) * 3;
            return (Data[i], Data[i + 1], Data[i + 2]);
        }
    }

    /// <summary>
    /// A new uint8 CPU tensor: [3, H, W] for <see cref="ImageTensorLayout.Chw"/> (the default, what the preprocessor
    /// takes) or [H, W, 3] for <see cref="ImageTensorLayout.Hwc"/>. Contiguous; owned by the caller's dispose scope.
    /// </summary>
    internal torch.Tensor ToTensor(ImageTensorLayout layout = ImageTensorLayout.Chw)
    {
        using var scope = torch.NewDisposeScope();
        var hwc = torch.tensor(Data, new long[] { Height, Width, 3 }, dtype: torch.ScalarType.Byte);
        var result = layout == ImageTensorLayout.Chw ? hwc.permute(2, 0, 1).contiguous() : hwc;
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>A new 8-bit 3-channel OpenCV matrix in OpenCV's usual <b>BGR</b> channel order. The caller disposes it.</summary>
    public Mat ToMat()
    {
        var mat = new Mat(Height, Width, MatType.CV_8UC3);
        try
        {
            Marshal.Copy(Data, 0, mat.Data, Data.Length);
            Cv2.CvtColor(mat, mat, ColorConversionCodes.RGB2BGR);
            return mat;
        }
        catch
        {
            mat.Dispose();
            throw;
        }
    }

    /// <summary>A new ImageSharp image with the same pixels. The caller disposes it.</summary>
    public Image<Rgb24> ToImageSharp() => SixLabors.ImageSharp.Image.LoadPixelData<Rgb24>(Data, Width, Height);

    /// <summary>
    /// Writes the image as PNG or JPEG (by the extension). The file is written under a temporary name and renamed when
    /// complete; an existing file is replaced only with <paramref name="overwrite"/>.
    /// </summary>
    public void Save(string path, bool overwrite = false) => Sam3.Torch.Visualization.ImageWriter.Save(this, path, overwrite);

    /// <summary>The image encoded as PNG.</summary>
    public byte[] EncodePng() => Sam3.Torch.Visualization.ImageWriter.EncodePng(this);
}
