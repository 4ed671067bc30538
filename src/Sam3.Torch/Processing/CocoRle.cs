using System.Buffers;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Serialization;
using TorchSharp;
using static TorchSharp.torch;

using Sam3.Torch.IO;
using Sam3.Torch.Processing;

namespace Sam3.Torch;

/// <summary>
/// A binary mask in COCO's compressed run-length encoding, as pycocotools' <c>mask.encode</c> returns it and COCO
/// result files store it: <c>{"size": [h, w], "counts": "..."}</c>.
/// <para>
/// The runs are taken over the mask flattened in <b>column-major</b> (Fortran) order, i.e. pixel (row y, column x) is
/// element <c>x * h + y</c>; they alternate background/foreground and the first run counts background pixels (0 when
/// the first pixel is foreground). The string packs each count in 5-bit groups, least significant first, one
/// character per group (value + 48, so '0'..'o'); bit 0x20 of a group says another group follows, and the last group's
/// bit 0x10 is the sign. From the fourth count on (index &gt; 2) what is stored is the difference to the count two
/// places earlier (the previous run of the same kind). This is byte for byte pycocotools' <c>rleToString</c> /
/// <c>rleFrString</c>.
/// </para>
/// <para>
/// An instance is always valid: the constructor parses <see cref="Counts"/> and checks that the runs cover exactly
/// h × w pixels, throwing <see cref="Sam3Exception"/> otherwise. Serialise with System.Text.Json directly
/// (<see cref="ToJson"/> / <see cref="FromJson"/> are shortcuts). Equality compares size and counts.
/// </para>
/// </summary>
public sealed record CocoRle
{
    /// <summary>Largest number of 5-bit groups one count may take (a 64-bit value); pycocotools' own counts need at most 7.</summary>
    private const int MaxGroupsPerCount = 13;

    private readonly int[] _runs;

    /// <summary>Parses and validates a compressed RLE: <paramref name="size"/> is [height, width].</summary>
    [JsonConstructor]
    public CocoRle(int[] size, string counts)
    {
        if (size is null) throw new Sam3Exception("COCO RLE: 'size' is missing");
        if (size.Length != 2) throw new Sam3Exception($"COCO RLE: 'size' must be [height, width], got {size.Length} values");
        if (size[0] < 0 || size[1] < 0) throw new Sam3Exception($"COCO RLE: negative size [{size[0]}, {size[1]}]");
        if (counts is null) throw new Sam3Exception("COCO RLE: 'counts' is missing");
        long pixels = (long)size[0] * size[1];
        if (pixels > Array.MaxLength) throw new Sam3Exception($"COCO RLE: a {size[0]}x{size[1]} mask has more pixels than an array can hold");
        Height = size[0];
        Width = size[1];
        Counts = counts;
        _runs = DecompressCounts(counts);
        CheckRunsCover(_runs, pixels, $"COCO RLE [{Height}, {Width}]");
    }

    /// <summary>Wraps already validated runs (and their string) without parsing again.</summary>
    private CocoRle(int height, int width, int[] runs, string counts)
    {
        Height = height;
        Width = width;
        _runs = runs;
        Counts = counts;
    }

    /// <summary>[height, width] (a new array each call), as pycocotools' "size".</summary>
    [JsonPropertyName("size")]
    [JsonPropertyOrder(0)]
    public int[] Size => [Height, Width];

    /// <summary>The compressed counts string ('0'..'o' characters).</summary>
    [JsonPropertyName("counts")]
    [JsonPropertyOrder(1)]
    public string Counts { get; }

    [JsonIgnore] public int Height { get; }
    [JsonIgnore] public int Width { get; }

    /// <summary>Number of runs (pycocotools' <c>m</c>).</summary>
    [JsonIgnore] public int RunCount => _runs.Length;

    // ------------------------------------------------------------------------------------------------ encoding

    /// <summary>
    /// Encodes a row-major H×W mask (<c>mask[y * width + x]</c>); any nonzero byte is foreground. (pycocotools expects
    /// 0/1 values and would start a new run at a change between two nonzero values; for 0/1 masks the results agree.)
    /// </summary>
    public static CocoRle Encode(ReadOnlySpan<byte> mask, int height, int width)
    {
        long pixels = CheckMaskSize(mask.Length, height, width, "mask");
        if (pixels == 0) return EncodeColumnMajor(ReadOnlySpan<byte>.Empty, height, width);
        byte[] scratch = ArrayPool<byte>.Shared.Rent((int)pixels);
        try
        {
            var columnMajor = scratch.AsSpan(0, (int)pixels);
            Transpose(mask, columnMajor, height, width);
            return EncodeColumnMajor(columnMajor, height, width);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    /// <summary>Encodes a row-major H×W boolean mask (<c>mask[y * width + x]</c>).</summary>
    public static CocoRle Encode(ReadOnlySpan<bool> mask, int height, int width) => Encode(MemoryMarshal.AsBytes(mask), height, width);

    /// <summary>Encodes a [height, width] boolean mask.</summary>
    public static CocoRle Encode(bool[,] mask)
    {
        ArgumentNullException.ThrowIfNull(mask);
        int h = mask.GetLength(0), w = mask.GetLength(1);
        if (mask.Length == 0) return EncodeColumnMajor(ReadOnlySpan<byte>.Empty, h, w);
        var bytes = MemoryMarshal.CreateReadOnlySpan(ref Unsafe.As<bool, byte>(ref mask[0, 0]), mask.Length);
        return Encode(bytes, h, w);
    }

    /// <summary>
    /// Encodes a mask already flattened in column-major order (<c>mask[x * height + y]</c>, what
    /// <c>np.asfortranarray(m).ravel(order="F")</c> holds); any nonzero byte is foreground.
    /// </summary>
    public static CocoRle EncodeColumnMajor(ReadOnlySpan<byte> mask, int height, int width)
    {
        long pixels = CheckMaskSize(mask.Length, height, width, "column-major mask");
        var runs = new List<int>(64);
        int pos = 0;
        bool foreground = false;
        while (pos < mask.Length)
        {
            var rest = mask[pos..];
            // Vectorised search for the end of the current run.
            int len = foreground ? rest.IndexOf((byte)0) : rest.IndexOfAnyExcept((byte)0);
            if (len < 0) len = rest.Length;
            runs.Add(len);
            pos += len;
            foreground = !foreground;
        }
        if (runs.Count == 0) runs.Add(0); // an empty mask: pycocotools stores a single zero run
        int[] array = runs.ToArray();
        return new CocoRle(height, width, array, CompressCounts(array));
    }

    /// <summary>
    /// Encodes a mask tensor [H, W] (bool, or an integer type where nonzero is foreground; any device, any strides).
    /// Floating-point masks are refused: threshold them first (e.g. <c>probs &gt; 0.5</c>).
    /// </summary>
    internal static CocoRle Encode(Tensor mask)
    {
        ArgumentNullException.ThrowIfNull(mask);
        if (mask.dim() != 2) throw new Sam3Exception($"COCO RLE: expected a [H, W] mask tensor, got shape [{string.Join(", ", mask.shape)}]");
        if (mask.shape[0] * mask.shape[1] > Array.MaxLength) throw new Sam3Exception($"COCO RLE: a {mask.shape[0]}x{mask.shape[1]} mask is too large");
        if (mask.numel() == 0) return EncodeColumnMajor(ReadOnlySpan<byte>.Empty, (int)mask.shape[0], (int)mask.shape[1]);
        using var scope = NewDisposeScope();
        // Column-major order of [H, W] is the row-major order of its transpose [W, H].
        var columnMajor = AsByteMask(mask, "COCO RLE").t().contiguous();
        return EncodeColumnMajor(ContiguousBytes(columnMajor), (int)mask.shape[0], (int)mask.shape[1]);
    }

    /// <summary>Encodes every mask of a [N, H, W] or [N, 1, H, W] tensor (the layout of the processor's output masks).</summary>
    internal static CocoRle[] EncodeMany(Tensor masks)
    {
        ArgumentNullException.ThrowIfNull(masks);
        using var scope = NewDisposeScope();
        var m = masks;
        if (m.dim() == 4 && m.shape[1] == 1) m = m.squeeze(1);
        if (m.dim() != 3) throw new Sam3Exception($"COCO RLE: expected masks of shape [N, H, W] or [N, 1, H, W], got [{string.Join(", ", masks.shape)}]");
        if (m.numel() > Array.MaxLength) throw new Sam3Exception($"COCO RLE: masks of shape [{string.Join(", ", masks.shape)}] are too large");
        int h = (int)m.shape[1], w = (int)m.shape[2];
        if (m.numel() == 0)
            return Enumerable.Range(0, (int)m.shape[0]).Select(_ => EncodeColumnMajor(ReadOnlySpan<byte>.Empty, h, w)).ToArray();
        var columnMajor = AsByteMask(m, "COCO RLE").transpose(1, 2).contiguous();
        var all = ContiguousBytes(columnMajor);
        var result = new CocoRle[m.shape[0]];
        int pixels = h * w;
        for (int i = 0; i < result.Length; i++) result[i] = EncodeColumnMajor(all.Slice(i * pixels, pixels), h, w);
        return result;
    }

    /// <summary>
    /// Builds the compressed form from uncompressed run lengths (COCO's <c>{"counts": [..]}</c> form, what
    /// pycocotools' <c>frPyObjects</c> accepts); they must be non-negative and sum to height × width.
    /// </summary>
    public static CocoRle FromCounts(ReadOnlySpan<int> counts, int height, int width)
    {
        if (height < 0 || width < 0) throw new Sam3Exception($"COCO RLE: negative size [{height}, {width}]");
        int[] runs = counts.ToArray();
        CheckRunsCover(runs, (long)height * width, $"COCO RLE counts for [{height}, {width}]");
        return new CocoRle(height, width, runs, CompressCounts(runs));
    }

    // ------------------------------------------------------------------------------------------------ decoding

    /// <summary>The uncompressed run lengths (a copy), first run = background.</summary>
    public int[] GetCounts() => (int[])_runs.Clone();

    /// <summary>The mask as a new row-major byte array (<c>[y * Width + x]</c>), 0 or 1.</summary>
    public byte[] Decode()
    {
        var result = new byte[(long)Height * Width];
        DecodeInto(result);
        return result;
    }

    /// <summary>Writes the mask into <paramref name="destination"/> (row-major, Height × Width bytes, 0 or 1).</summary>
    public void DecodeInto(Span<byte> destination)
    {
        int pixels = Height * Width;
        if (destination.Length != pixels) throw new Sam3Exception($"COCO RLE: destination holds {destination.Length} bytes, the {Height}x{Width} mask needs {pixels}");
        if (pixels == 0) return;
        byte[] scratch = ArrayPool<byte>.Shared.Rent(pixels);
        try
        {
            var columnMajor = scratch.AsSpan(0, pixels);
            DecodeColumnMajorInto(columnMajor);
            Transpose(columnMajor, destination, Width, Height);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    /// <summary>The mask as a [Height, Width] boolean array.</summary>
    public bool[,] DecodeToArray()
    {
        var result = new bool[Height, Width];
        if (result.Length > 0)
            DecodeInto(MemoryMarshal.CreateSpan(ref Unsafe.As<bool, byte>(ref result[0, 0]), result.Length));
        return result;
    }

    /// <summary>Writes the mask in column-major order (<c>[x * Height + y]</c>, what pycocotools' decode fills), 0 or 1.</summary>
    public void DecodeColumnMajorInto(Span<byte> destination)
    {
        if (destination.Length != Height * Width)
            throw new Sam3Exception($"COCO RLE: destination holds {destination.Length} bytes, the {Height}x{Width} mask needs {Height * Width}");
        int pos = 0;
        byte value = 0;
        foreach (int run in _runs)
        {
            destination.Slice(pos, run).Fill(value);
            pos += run;
            value ^= 1;
        }
    }

    /// <summary>The mask as a new bool tensor [Height, Width] on the CPU (owned by the caller's dispose scope).</summary>
    internal Tensor ToTensor()
    {
        using var scope = NewDisposeScope();
        var columnMajor = empty(new long[] { Width, Height }, ScalarType.Bool);
        if (Height * Width > 0) DecodeColumnMajorInto(ContiguousBytes(columnMajor));
        return columnMajor.t().contiguous().MoveToOuterDisposeScope();
    }

    // ------------------------------------------------------------------------------------------------ measures

    /// <summary>Number of foreground pixels (pycocotools' <c>area</c>: the sum of the odd-indexed runs).</summary>
    public long Area()
    {
        long area = 0;
        for (int j = 1; j < _runs.Length; j += 2) area += _runs[j];
        return area;
    }

    /// <summary>
    /// The tight bounding box [x, y, width, height] of the foreground in pixels (pycocotools' <c>toBbox</c>:
    /// x = first column, width = last column − first + 1, same for rows), [0, 0, 0, 0] for an empty mask.
    /// Zero-length foreground runs are skipped (pycocotools' fixed <c>rleToBbox</c>; older versions mis-handled them).
    /// </summary>
    public double[] ToBbox()
    {
        if (Height == 0 || Width == 0) return new double[4];
        long pos = 0;
        long xs = long.MaxValue, xe = -1, ys = long.MaxValue, ye = -1;
        for (int j = 0; j < _runs.Length; j++)
        {
            long start = pos;
            pos += _runs[j];
            if ((j & 1) == 0 || _runs[j] == 0) continue;
            long end = pos - 1;
            long xStart = start / Height, yStart = start % Height;
            long xEnd = end / Height, yEnd = end % Height;
            xs = Math.Min(xs, xStart);
            xe = Math.Max(xe, xEnd);
            if (xStart < xEnd)
            {
                // The run wraps to the next column: it holds the bottom of one column and the top of the next.
                ys = 0;
                ye = Height - 1;
            }
            else
            {
                ys = Math.Min(ys, yStart);
                ye = Math.Max(ye, yEnd);
            }
        }
        if (xe < 0) return new double[4];
        return [xs, ys, xe - xs + 1, ye - ys + 1];
    }

    // ------------------------------------------------------------------------------------------------ JSON

    /// <summary><c>{"size":[h,w],"counts":"..."}</c>.</summary>
    public string ToJson() => JsonSerializer.Serialize(this);

    /// <summary>Parses <c>{"size":[h,w],"counts":"..."}</c>; malformed or inconsistent input is a <see cref="Sam3Exception"/>.</summary>
    public static CocoRle FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        try
        {
            return JsonSerializer.Deserialize<CocoRle>(json) ?? throw new Sam3Exception("COCO RLE JSON is null");
        }
        catch (JsonException ex)
        {
            throw new Sam3Exception($"COCO RLE JSON is malformed: {ex.Message}", ex);
        }
    }

    // ------------------------------------------------------------------------------------------------ the string form

    /// <summary>
    /// pycocotools' <c>rleToString</c>: each count (from index 3 on, minus the count two places earlier) is written
    /// as 5-bit groups, least significant first; a group gets bit 0x20 when more follow; the sequence stops once the
    /// remaining value is just the sign extension of the last group's bit 0x10; each group is stored as char(group + 48).
    /// </summary>
    public static string CompressCounts(ReadOnlySpan<int> counts)
    {
        if (counts.Length == 0) return string.Empty;
        // A delta of two 32-bit counts needs at most 33 significant bits + sign: 7 groups.
        int capacity = counts.Length * 7;
        char[]? rented = capacity > 1024 ? ArrayPool<char>.Shared.Rent(capacity) : null;
        Span<char> buffer = rented != null ? rented : stackalloc char[capacity];
        try
        {
            int p = 0;
            for (int i = 0; i < counts.Length; i++)
            {
                long x = counts[i];
                if (i > 2) x -= counts[i - 2];
                bool more = true;
                while (more)
                {
                    int c = (int)(x & 0x1f);
                    x >>= 5; // arithmetic shift, as C's on a signed long
                    more = (c & 0x10) != 0 ? x != -1 : x != 0;
                    if (more) c |= 0x20;
                    buffer[p++] = (char)(c + 48);
                }
            }
            return new string(buffer[..p]);
        }
        finally
        {
            if (rented != null) ArrayPool<char>.Shared.Return(rented);
        }
    }

    /// <summary>
    /// pycocotools' <c>rleFrString</c>: the inverse of <see cref="CompressCounts"/>. Characters outside '0'..'o', a
    /// string that ends inside a count, or a count that comes out negative or above int.MaxValue are a
    /// <see cref="Sam3Exception"/> (pycocotools does not check these).
    /// </summary>
    public static int[] DecompressCounts(string counts)
    {
        ArgumentNullException.ThrowIfNull(counts);
        var runs = new List<int>(counts.Length);
        int p = 0;
        while (p < counts.Length)
        {
            long x = 0;
            int k = 0;
            bool more = true;
            while (more)
            {
                if (p >= counts.Length) throw new Sam3Exception($"COCO RLE counts string ends inside a count (at character {p})");
                int c = counts[p] - 48;
                if (c < 0 || c > 63)
                    throw new Sam3Exception($"COCO RLE counts string has an invalid character '{counts[p]}' at {p} (allowed: '0'..'o')");
                if (k >= MaxGroupsPerCount) throw new Sam3Exception($"COCO RLE counts string has a count longer than {MaxGroupsPerCount} characters (at {p})");
                x |= (long)(c & 0x1f) << (5 * k);
                more = (c & 0x20) != 0;
                p++;
                k++;
                if (!more && (c & 0x10) != 0) x |= -1L << (5 * k); // negative: sign-extend
            }
            int m = runs.Count;
            if (m > 2) x += runs[m - 2];
            if (x < 0 || x > int.MaxValue)
                throw new Sam3Exception($"COCO RLE counts string decodes to an invalid run length {x.ToString(CultureInfo.InvariantCulture)} (run {m})");
            runs.Add((int)x);
        }
        return runs.ToArray();
    }

    // ------------------------------------------------------------------------------------------------ record members

    public bool Equals(CocoRle? other) =>
        other is not null && Height == other.Height && Width == other.Width && string.Equals(Counts, other.Counts, StringComparison.Ordinal);

    public override int GetHashCode() => HashCode.Combine(Height, Width, StringComparer.Ordinal.GetHashCode(Counts));

    public override string ToString()
    {
        string c = Counts.Length > 48 ? Counts[..45] + "..." : Counts;
        return $"CocoRle {{ Size = [{Height}, {Width}], Counts = \"{c}\" }}";
    }

    // ------------------------------------------------------------------------------------------------ helpers

    private static long CheckMaskSize(int length, int height, int width, string what)
    {
        if (height < 0 || width < 0) throw new Sam3Exception($"COCO RLE: negative mask size {height}x{width}");
        long pixels = (long)height * width;
        if (length != pixels) throw new Sam3Exception($"COCO RLE: a {height}x{width} {what} needs {pixels} values, got {length}");
        return pixels;
    }

    private static void CheckRunsCover(int[] runs, long pixels, string what)
    {
        long total = 0;
        foreach (int r in runs)
        {
            if (r < 0) throw new Sam3Exception($"{what}: negative run length {r}");
            total += r;
        }
        if (total != pixels) throw new Sam3Exception($"{what}: the runs cover {total} pixels, the mask has {pixels}");
    }

    /// <summary>
    /// dst[x * rows + y] = src[y * cols + x] for a rows × cols row-major source, in cache-friendly 64×64 blocks
    /// (pointer code: it is the hot loop of encoding and decoding, and must stay fast in Debug builds too).
    /// </summary>
    private static unsafe void Transpose(ReadOnlySpan<byte> src, Span<byte> dst, int rows, int cols)
    {
        const int Block = 64;
        if (src.Length < (long)rows * cols || dst.Length < (long)rows * cols) throw new ArgumentException("transpose buffers too small");
        fixed (byte* s = src)
        fixed (byte* d = dst)
        {
            for (int y0 = 0; y0 < rows; y0 += Block)
            {
                int y1 = Math.Min(y0 + Block, rows);
                for (int x0 = 0; x0 < cols; x0 += Block)
                {
                    int x1 = Math.Min(x0 + Block, cols);
                    for (int x = x0; x < x1; x++)
                    {
                        byte* from = s + (long)y0 * cols + x;
                        byte* to = d + (long)x * rows + y0;
                        byte* end = d + (long)x * rows + y1;
                        while (to < end)
                        {
                            *to++ = *from;
                            from += cols;
                        }
                    }
                }
            }
        }
    }

    /// <summary>A uint8/bool view of a mask tensor on the CPU (nonzero = foreground); floating point is refused.</summary>
    internal static Tensor AsByteMask(Tensor mask, string who)
    {
        if (mask.dtype == ScalarType.Bool || mask.dtype == ScalarType.Byte) return mask.cpu();
        if (mask.is_floating_point() || mask.is_complex())
            throw new Sam3Exception($"{who}: mask tensors must be bool or integer, got {mask.dtype} (threshold probabilities first, e.g. probs > 0.5)");
        return mask.cpu().ne(0);
    }

    /// <summary>The bytes of a contiguous 1-byte-per-element CPU tensor (a view of its memory; the tensor must stay alive).</summary>
    internal static Span<byte> ContiguousBytes(Tensor t)
    {
        if (!t.is_contiguous() || t.device_type != DeviceType.CPU || t.element_size() != 1)
            throw new InvalidOperationException("expected a contiguous 1-byte CPU tensor");
        return t.bytes;
    }
}
