using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Sam3.Torch.Processing;
using TorchSharp;

namespace Sam3.Torch.Visualization;

/// <summary>
/// A binary H×W mask for drawing: <see cref="Data"/> holds Height × Width bytes, row-major (<c>[y * Width + x]</c>),
/// each 0 or 1. Every factory copies its input. A mask may also be held compactly as its COCO RLE (the image predictor's
/// <c>CompactMasks</c> option): then <see cref="Data"/> is decoded on first access and kept.
/// </summary>
public sealed class BinaryMask
{
    private byte[]? _data;
    private readonly CocoRle? _rle;

    private BinaryMask(int width, int height, byte[] normalised)
    {
        Width = width;
        Height = height;
        _data = normalised;
    }

    private BinaryMask(CocoRle rle)
    {
        Width = rle.Width;
        Height = rle.Height;
        _rle = rle;
    }

    public int Width { get; }
    public int Height { get; }

    /// <summary>Row-major 0/1 bytes. The mask owns the array.</summary>
    public byte[] Data => _data ??= _rle!.Decode();

    /// <summary>The COCO RLE the mask was stored as (compact masks), or null when it holds bytes.</summary>
    internal CocoRle? StoredRle => _rle;

    /// <summary>Whether pixel (x, y) is foreground.</summary>
    public bool this[int x, int y]
    {
        get
        {
            if ((uint)x >= (uint)Width || (uint)y >= (uint)Height) throw new ArgumentOutOfRangeException(nameof(x), $"pixel ({x},{y}) outside {Width}x{Height}");
            return Data[y * Width + x] != 0;
        }
    }

    /// <summary>Number of foreground pixels.</summary>
    public long Area()
    {
        if (_data is null && _rle is not null) return _rle.Area();
        long n = Data.Length - Data.AsSpan().Count((byte)0);
        return n;
    }

    /// <summary>
    /// The tight box of the foreground as xyxy pixel coordinates with inclusive ends (what torchvision's
    /// <c>masks_to_boxes</c> returns), or null for an empty mask.
    /// </summary>
    public (int X0, int Y0, int X1, int Y1)? Bounds()
    {
        int x0 = int.MaxValue, y0 = int.MaxValue, x1 = -1, y1 = -1;
        for (int y = 0; y < Height; y++)
        {
            var row = Data.AsSpan(y * Width, Width);
            int first = row.IndexOf((byte)1);
            if (first < 0) continue;
            int last = row.LastIndexOf((byte)1);
            if (y0 == int.MaxValue) y0 = y;
            y1 = y;
            x0 = Math.Min(x0, first);
            x1 = Math.Max(x1, last);
        }
        return x1 < 0 ? null : (x0, y0, x1, y1);
    }

    /// <summary>From row-major bytes (<c>[y * width + x]</c>); nonzero is foreground.</summary>
    public static BinaryMask FromBytes(ReadOnlySpan<byte> rowMajor, int width, int height)
    {
        CheckSize(rowMajor.Length, width, height);
        var data = new byte[rowMajor.Length];
        for (int i = 0; i < data.Length; i++) data[i] = rowMajor[i] != 0 ? (byte)1 : (byte)0;
        return new BinaryMask(width, height, data);
    }

    /// <summary>From row-major bytes already 0 or 1 (a bool tensor's storage): one copy, no normalisation.</summary>
    internal static BinaryMask FromZeroOne(ReadOnlySpan<byte> zeroOne, int width, int height)
    {
        CheckSize(zeroOne.Length, width, height);
        return new BinaryMask(width, height, zeroOne.ToArray());
    }

    /// <summary>Takes ownership of row-major bytes already 0 or 1 (no copy): the caller must not keep or change the array.</summary>
    internal static BinaryMask Own(byte[] zeroOne, int width, int height)
    {
        ArgumentNullException.ThrowIfNull(zeroOne);
        CheckSize(zeroOne.Length, width, height);
        return new BinaryMask(width, height, zeroOne);
    }

    /// <summary>The compact form: the COCO RLE of row-major bytes (nonzero = foreground), decoded on first use of <see cref="Data"/>.</summary>
    internal static BinaryMask FromRleOf(ReadOnlySpan<byte> rowMajor, int width, int height)
    {
        CheckSize(rowMajor.Length, width, height);
        return new BinaryMask(CocoRle.Encode(rowMajor, height, width));
    }

    /// <summary>From row-major booleans (<c>[y * width + x]</c>).</summary>
    public static BinaryMask FromBools(ReadOnlySpan<bool> rowMajor, int width, int height) => FromBytes(MemoryMarshal.AsBytes(rowMajor), width, height);

    /// <summary>From a [height, width] boolean array.</summary>
    public static BinaryMask FromArray(bool[,] mask)
    {
        ArgumentNullException.ThrowIfNull(mask);
        int h = mask.GetLength(0), w = mask.GetLength(1);
        if (mask.Length == 0) throw new Sam3Exception($"empty mask ({w}x{h})");
        return FromBytes(MemoryMarshal.CreateReadOnlySpan(ref Unsafe.As<bool, byte>(ref mask[0, 0]), mask.Length), w, h);
    }

    /// <summary>From a COCO RLE.</summary>
    public static BinaryMask FromRle(CocoRle rle)
    {
        ArgumentNullException.ThrowIfNull(rle);
        CheckSize((long)rle.Width * rle.Height, rle.Width, rle.Height);
        return new BinaryMask(rle.Width, rle.Height, rle.Decode());
    }

    /// <summary>
    /// From a [H, W] tensor: bool or integer (nonzero = foreground) or floating point (&gt; 0.5 = foreground, the
    /// threshold of the reference's <c>render_masklet_frame</c>). Any device.
    /// </summary>
    internal static BinaryMask FromTensor(torch.Tensor mask)
    {
        ArgumentNullException.ThrowIfNull(mask);
        if (mask.dim() != 2) throw new Sam3Exception($"expected a [H, W] mask tensor, got shape [{string.Join(", ", mask.shape)}]");
        return FromTensorBatch(mask.unsqueeze(0))[0];
    }

    /// <summary>Every mask of a [N, H, W] or [N, 1, H, W] tensor (the processor's output layout); dtypes as <see cref="FromTensor"/>.</summary>
    internal static BinaryMask[] FromTensorBatch(torch.Tensor masks)
    {
        ArgumentNullException.ThrowIfNull(masks);
        using var scope = torch.NewDisposeScope();
        var m = masks;
        if (m.dim() == 4 && m.shape[1] == 1) m = m.squeeze(1);
        if (m.dim() != 3) throw new Sam3Exception($"expected masks of shape [N, H, W] or [N, 1, H, W], got [{string.Join(", ", masks.shape)}]");
        int n = (int)m.shape[0], h = (int)m.shape[1], w = (int)m.shape[2];
        if (n == 0) return [];
        CheckSize((long)h * w, w, h);
        if (m.is_complex()) throw new Sam3Exception($"mask tensors cannot be complex ({m.dtype})");
        var binary = m.dtype == torch.ScalarType.Bool ? m : m.is_floating_point() ? m.gt(0.5) : m.ne(0);
        var bytes = binary.cpu().to(torch.ScalarType.Byte).contiguous();
        var all = bytes.bytes;
        var result = new BinaryMask[n];
        int pixels = h * w;
        for (int i = 0; i < n; i++) result[i] = new BinaryMask(w, h, all.Slice(i * pixels, pixels).ToArray());
        return result;
    }

    private static void CheckSize(long length, int width, int height)
    {
        if (width <= 0 || height <= 0) throw new Sam3Exception($"zero-size mask ({width}x{height})");
        if ((long)width * height > Array.MaxLength) throw new Sam3Exception($"a {width}x{height} mask is too large");
        if (length != (long)width * height) throw new Sam3Exception($"a {width}x{height} mask needs {(long)width * height} values (H*W), got {length}");
    }
}
