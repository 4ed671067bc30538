using System.Runtime.InteropServices;
using OpenCvSharp;
using Sam3.Torch.IO;

namespace Sam3.Torch.Visualization;

/// <summary>
/// A private copy of an image's pixels, pinned, with an OpenCV matrix viewing the same memory. The matrix's channels
/// are in <b>RGB</b> order (not OpenCV's usual BGR), so colours are passed to OpenCV as Scalar(R, G, B).
/// Draw, dispose, then take <see cref="ToImage"/>; the source image is never modified.
/// </summary>
internal sealed class Canvas : IDisposable
{
    private GCHandle _pin;
    private Mat? _mat;

    public Canvas(RgbImage source)
    {
        ArgumentNullException.ThrowIfNull(source);
        Width = source.Width;
        Height = source.Height;
        Data = (byte[])source.Data.Clone();
        _pin = GCHandle.Alloc(Data, GCHandleType.Pinned);
        _mat = Mat.FromPixelData(Height, Width, MatType.CV_8UC3, _pin.AddrOfPinnedObject());
    }

    public int Width { get; }
    public int Height { get; }

    /// <summary>HWC RGB bytes, row-major.</summary>
    public byte[] Data { get; }

    /// <summary>An RGB-ordered 8UC3 view of <see cref="Data"/>; valid until disposal.</summary>
    public Mat Mat => _mat ?? throw new ObjectDisposedException(nameof(Canvas));

    public static Scalar ToScalar(RgbColor c) => new(c.R, c.G, c.B);

    /// <summary>A new image over the (no longer pinned) pixels; call after drawing.</summary>
    public RgbImage ToImage() => new(Width, Height, Data);

    public void Dispose()
    {
        _mat?.Dispose();
        _mat = null;
        if (_pin.IsAllocated) _pin.Free();
    }
}
