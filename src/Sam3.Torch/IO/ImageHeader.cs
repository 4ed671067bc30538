using System.Buffers.Binary;

namespace Sam3.Torch.IO;

/// <summary>
/// Reads an image file's signature and header without decoding pixels, so that a bad file is reported with a
/// precise reason (not an image, unsupported format, truncated, zero-size) before the decoder sees it, and so that
/// the size limits are enforced before any large allocation.
/// </summary>
/// <remarks>
/// Structural checks per format: JPEG — the marker segments up to the first scan are walked (lengths must fit in the
/// file, a frame header must come first) and an end-of-image marker must follow the scan data; PNG — the IHDR chunk
/// must come first and the chunk chain must reach IEND; BMP — the pixel array of an uncompressed bitmap must fit in the
/// file; WebP — the RIFF size must fit in the file. Checksums and the entropy-coded data are left to the decoder.
/// </remarks>
internal static class ImageHeader
{
    /// <summary>The formats <see cref="ImageLoader"/> decodes.</summary>
    public static IReadOnlyList<ImageFileFormat> SupportedFormats { get; } =
        [ImageFileFormat.Jpeg, ImageFileFormat.Png, ImageFileFormat.Bmp, ImageFileFormat.WebP];

    /// <summary>"JPEG, PNG, BMP, WebP": for messages.</summary>
    public static string SupportedFormatsText => string.Join(", ", SupportedFormats.Select(Describe));

    /// <summary>True when <paramref name="format"/> is decoded by <see cref="ImageLoader"/>.</summary>
    public static bool IsSupported(ImageFileFormat format) => SupportedFormats.Contains(format);

    /// <summary>Human-readable name of a format.</summary>
    public static string Describe(ImageFileFormat format) => format switch
    {
        ImageFileFormat.Jpeg => "JPEG",
        ImageFileFormat.Png => "PNG",
        ImageFileFormat.Bmp => "BMP",
        ImageFileFormat.WebP => "WebP",
        ImageFileFormat.Gif => "GIF",
        ImageFileFormat.Tiff => "TIFF",
        ImageFileFormat.Heif => "HEIF/HEIC/AVIF",
        ImageFileFormat.Jpeg2000 => "JPEG 2000",
        ImageFileFormat.JpegXl => "JPEG XL",
        ImageFileFormat.Ico => "ICO",
        ImageFileFormat.Psd => "Photoshop PSD",
        ImageFileFormat.Pdf => "PDF",
        ImageFileFormat.Text => "text",
        _ => "unknown",
    };

    /// <summary>The container format from the leading bytes (no validation of the rest).</summary>
    public static ImageFileFormat Identify(ReadOnlySpan<byte> data)
    {
        if (data.Length >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return ImageFileFormat.Jpeg;
        if (data.StartsWith(PngSignature)) return ImageFileFormat.Png;
        if (data.Length >= 2 && data[0] == (byte)'B' && data[1] == (byte)'M') return ImageFileFormat.Bmp;
        if (data.Length >= 12 && data[..4].SequenceEqual("RIFF"u8) && data.Slice(8, 4).SequenceEqual("WEBP"u8)) return ImageFileFormat.WebP;
        if (data.StartsWith("GIF87a"u8) || data.StartsWith("GIF89a"u8)) return ImageFileFormat.Gif;
        if (data.StartsWith("II*\0"u8) || data.StartsWith("MM\0*"u8)) return ImageFileFormat.Tiff;
        if (data.Length >= 12 && data.Slice(4, 4).SequenceEqual("ftyp"u8))
        {
            var brand = data.Slice(8, 4);
            if (brand.SequenceEqual("heic"u8) || brand.SequenceEqual("heix"u8) || brand.SequenceEqual("mif1"u8) ||
                brand.SequenceEqual("msf1"u8) || brand.SequenceEqual("avif"u8) || brand.SequenceEqual("avis"u8) ||
                brand.SequenceEqual("hevc"u8) || brand.SequenceEqual("heim"u8) || brand.SequenceEqual("heis"u8))
                return ImageFileFormat.Heif;
        }
        if (data.StartsWith(Jp2Signature) || data.StartsWith(J2kCodestream)) return ImageFileFormat.Jpeg2000;
        if (data.StartsWith(JxlSignature) || data.StartsWith(JxlCodestream)) return ImageFileFormat.JpegXl;
        if (data.StartsWith(IcoSignature)) return ImageFileFormat.Ico;
        if (data.StartsWith("8BPS"u8)) return ImageFileFormat.Psd;
        if (data.StartsWith("%PDF"u8)) return ImageFileFormat.Pdf;
        if (LooksLikeText(data)) return ImageFileFormat.Text;
        return ImageFileFormat.Unknown;
    }

    /// <summary>
    /// Identifies and checks the file; returns its format and stored size. Throws <see cref="Sam3ImageException"/>
    /// (message starting with <paramref name="source"/>) for an empty file, a file that is not a supported image, a
    /// truncated or structurally corrupt header, or a zero width or height. Size limits are not applied here.
    /// </summary>
    public static ImageHeaderInfo Inspect(ReadOnlySpan<byte> data, string source)
    {
        if (data.Length == 0) throw new Sam3ImageException($"{source}: the file is empty (0 bytes)");
        var format = Identify(data);
        ImageHeaderInfo info = format switch
        {
            ImageFileFormat.Jpeg => InspectJpeg(data, source),
            ImageFileFormat.Png => InspectPng(data, source),
            ImageFileFormat.Bmp => InspectBmp(data, source),
            ImageFileFormat.WebP => InspectWebP(data, source),
            ImageFileFormat.Text => throw new Sam3ImageException(
                $"{source}: not an image: the file starts with text (\"{TextPreview(data)}\"); supported formats: {SupportedFormatsText}"),
            ImageFileFormat.Unknown => throw new Sam3ImageException(
                $"{source}: not a recognised image file (first bytes: {HexPreview(data)}); supported formats: {SupportedFormatsText}"),
            _ => throw new Sam3ImageException(
                $"{source}: {Describe(format)} images are not supported; supported formats: {SupportedFormatsText}"),
        };
        if (info.Width <= 0 || info.Height <= 0)
            throw new Sam3ImageException($"{source}: zero-size {Describe(format)} image ({info.Width}x{info.Height})");
        return info;
    }

    private static ReadOnlySpan<byte> PngSignature => [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];
    private static ReadOnlySpan<byte> Jp2Signature => [0x00, 0x00, 0x00, 0x0C, 0x6A, 0x50, 0x20, 0x20, 0x0D, 0x0A, 0x87, 0x0A];
    private static ReadOnlySpan<byte> J2kCodestream => [0xFF, 0x4F, 0xFF, 0x51];
    private static ReadOnlySpan<byte> JxlSignature => [0x00, 0x00, 0x00, 0x0C, 0x4A, 0x58, 0x4C, 0x20, 0x0D, 0x0A, 0x87, 0x0A];
    private static ReadOnlySpan<byte> JxlCodestream => [0xFF, 0x0A];
    private static ReadOnlySpan<byte> IcoSignature => [0x00, 0x00, 0x01, 0x00];

    private static Sam3ImageException Truncated(string source, string format, string detail) =>
        new($"{source}: truncated {format} file ({detail})");

    private static Sam3ImageException Corrupt(string source, string format, string detail) =>
        new($"{source}: corrupt {format} file ({detail})");

    // ---- JPEG -------------------------------------------------------------------------------------------------

    private static ImageHeaderInfo InspectJpeg(ReadOnlySpan<byte> d, string source)
    {
        const string F = "JPEG";
        int pos = 2;
        long width = -1, height = -1;
        while (true)
        {
            if (pos >= d.Length) throw Truncated(source, F, $"ends at byte {d.Length} inside the header, before any image data");
            if (d[pos] != 0xFF) throw Corrupt(source, F, $"expected a marker at byte {pos}, found 0x{d[pos]:X2}");
            while (pos < d.Length && d[pos] == 0xFF) pos++; // fill bytes
            if (pos >= d.Length) throw Truncated(source, F, "ends inside a marker");
            byte marker = d[pos++];
            if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue; // stand-alone markers
            if (marker == 0xD9) throw Corrupt(source, F, "end-of-image marker before any image data");
            if (marker == 0x00 || marker == 0xD8) throw Corrupt(source, F, $"unexpected marker 0xFF{marker:X2} at byte {pos - 2}");
            if (pos + 2 > d.Length) throw Truncated(source, F, "ends inside a segment length");
            int length = BinaryPrimitives.ReadUInt16BigEndian(d[pos..]);
            if (length < 2) throw Corrupt(source, F, $"segment 0xFF{marker:X2} at byte {pos - 2} has length {length}");
            if (pos + length > d.Length)
                throw Truncated(source, F, $"segment 0xFF{marker:X2} at byte {pos - 2} needs {length} bytes, {d.Length - pos} remain");
            bool isFrame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
            if (isFrame)
            {
                if (length < 8) throw Corrupt(source, F, $"frame header of {length} bytes");
                height = BinaryPrimitives.ReadUInt16BigEndian(d[(pos + 3)..]);
                width = BinaryPrimitives.ReadUInt16BigEndian(d[(pos + 5)..]);
                if (width == 0 || height == 0) return new ImageHeaderInfo(ImageFileFormat.Jpeg, width, height);
            }
            if (marker == 0xDA) // start of scan: entropy-coded data follows, then (more scans and) the end-of-image marker
            {
                if (width < 0) throw Corrupt(source, F, "image data before the frame header");
                var rest = d[(pos + length)..];
                if (rest.IndexOf((ReadOnlySpan<byte>)[0xFF, 0xD9]) < 0)
                    throw Truncated(source, F, $"no end-of-image marker after the image data ({d.Length} bytes)");
                return new ImageHeaderInfo(ImageFileFormat.Jpeg, width, height);
            }
            pos += length;
        }
    }

    // ---- PNG --------------------------------------------------------------------------------------------------

    private static ImageHeaderInfo InspectPng(ReadOnlySpan<byte> d, string source)
    {
        const string F = "PNG";
        const int headerEnd = 8 + 8 + 13 + 4; // signature, IHDR length+type, IHDR data, CRC
        if (d.Length < headerEnd) throw Truncated(source, F, $"{d.Length} bytes, the header alone needs {headerEnd}");
        if (BinaryPrimitives.ReadUInt32BigEndian(d[8..]) != 13 || !d.Slice(12, 4).SequenceEqual("IHDR"u8))
            throw Corrupt(source, F, "the first chunk is not a 13-byte IHDR");
        long width = BinaryPrimitives.ReadUInt32BigEndian(d[16..]);
        long height = BinaryPrimitives.ReadUInt32BigEndian(d[20..]);
        long pos = 8;
        while (pos + 12 <= d.Length)
        {
            long length = BinaryPrimitives.ReadUInt32BigEndian(d[(int)pos..]);
            bool isEnd = d.Slice((int)pos + 4, 4).SequenceEqual("IEND"u8);
            long next = pos + 12 + length;
            if (next > d.Length)
                throw Truncated(source, F, $"chunk '{ChunkName(d.Slice((int)pos + 4, 4))}' at byte {pos} needs {12 + length} bytes, {d.Length - pos} remain");
            if (isEnd) return new ImageHeaderInfo(ImageFileFormat.Png, width, height);
            pos = next;
        }
        throw Truncated(source, F, $"no IEND chunk in {d.Length} bytes");
    }

    private static string ChunkName(ReadOnlySpan<byte> type)
    {
        var chars = new char[type.Length];
        for (int i = 0; i < type.Length; i++) chars[i] = type[i] is >= 0x20 and < 0x7F ? (char)type[i] : '?';
        return new string(chars);
    }

    // ---- BMP --------------------------------------------------------------------------------------------------

    private static ImageHeaderInfo InspectBmp(ReadOnlySpan<byte> d, string source)
    {
        const string F = "BMP";
        if (d.Length < 14 + 12) throw Truncated(source, F, $"{d.Length} bytes, the header needs at least 26");
        long dataOffset = BinaryPrimitives.ReadUInt32LittleEndian(d[10..]);
        uint dibSize = BinaryPrimitives.ReadUInt32LittleEndian(d[14..]);
        long width, height;
        int bitsPerPixel;
        uint compression;
        if (dibSize == 12) // OS/2 BITMAPCOREHEADER
        {
            width = BinaryPrimitives.ReadUInt16LittleEndian(d[18..]);
            height = BinaryPrimitives.ReadUInt16LittleEndian(d[20..]);
            bitsPerPixel = BinaryPrimitives.ReadUInt16LittleEndian(d[24..]);
            compression = 0;
        }
        else if (dibSize >= 40 && dibSize <= 124)
        {
            if (d.Length < 14 + 40) throw Truncated(source, F, $"{d.Length} bytes, the info header needs 54");
            width = BinaryPrimitives.ReadInt32LittleEndian(d[18..]);
            height = BinaryPrimitives.ReadInt32LittleEndian(d[22..]);
            if (width < 0) throw Corrupt(source, F, $"negative width {width}");
            height = Math.Abs(height); // negative height = rows stored top-down
            bitsPerPixel = BinaryPrimitives.ReadUInt16LittleEndian(d[28..]);
            compression = BinaryPrimitives.ReadUInt32LittleEndian(d[30..]);
        }
        else throw Corrupt(source, F, $"unknown info-header size {dibSize}");
        if (width == 0 || height == 0) return new ImageHeaderInfo(ImageFileFormat.Bmp, width, height);
        if (bitsPerPixel is not (1 or 2 or 4 or 8 or 16 or 24 or 32))
            throw Corrupt(source, F, $"{bitsPerPixel} bits per pixel");
        if (dataOffset >= d.Length) throw Truncated(source, F, $"pixel data would start at byte {dataOffset}, the file has {d.Length}");
        if (compression is 0 or 3 or 6) // uncompressed (BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS): rows padded to 4 bytes
        {
            long rowBytes = (bitsPerPixel * width + 31) / 32 * 4;
            long needed = dataOffset + rowBytes * height;
            if (needed > d.Length) throw Truncated(source, F, $"{width}x{height} pixels need {needed} bytes, the file has {d.Length}");
        }
        return new ImageHeaderInfo(ImageFileFormat.Bmp, width, height);
    }

    // ---- WebP -------------------------------------------------------------------------------------------------

    private static ImageHeaderInfo InspectWebP(ReadOnlySpan<byte> d, string source)
    {
        const string F = "WebP";
        long riffSize = BinaryPrimitives.ReadUInt32LittleEndian(d[4..]);
        if (8 + riffSize > d.Length) throw Truncated(source, F, $"RIFF size says {8 + riffSize} bytes, the file has {d.Length}");
        if (d.Length < 30) throw Truncated(source, F, $"{d.Length} bytes, too short for a WebP header");
        var chunk = d.Slice(12, 4);
        if (chunk.SequenceEqual("VP8 "u8))
        {
            if (d[23] != 0x9D || d[24] != 0x01 || d[25] != 0x2A) throw Corrupt(source, F, "bad VP8 start code");
            long w = BinaryPrimitives.ReadUInt16LittleEndian(d[26..]) & 0x3FFF;
            long h = BinaryPrimitives.ReadUInt16LittleEndian(d[28..]) & 0x3FFF;
            return new ImageHeaderInfo(ImageFileFormat.WebP, w, h);
        }
        if (chunk.SequenceEqual("VP8L"u8))
        {
            if (d[20] != 0x2F) throw Corrupt(source, F, "bad VP8L signature");
            uint bits = BinaryPrimitives.ReadUInt32LittleEndian(d[21..]);
            return new ImageHeaderInfo(ImageFileFormat.WebP, (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1);
        }
        if (chunk.SequenceEqual("VP8X"u8))
        {
            long w = d[24] | (d[25] << 8) | (d[26] << 16);
            long h = d[27] | (d[28] << 8) | (d[29] << 16);
            return new ImageHeaderInfo(ImageFileFormat.WebP, w + 1, h + 1);
        }
        throw Corrupt(source, F, $"unknown first chunk '{ChunkName(chunk)}'");
    }

    // ---- helpers ----------------------------------------------------------------------------------------------

    private static bool LooksLikeText(ReadOnlySpan<byte> data)
    {
        var head = data[..Math.Min(data.Length, 512)];
        if (head.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF])) head = head[3..];
        foreach (byte b in head)
            if ((b < 0x20 && b is not (0x09 or 0x0A or 0x0C or 0x0D)) || b == 0x7F) return false;
        return true;
    }

    private static string TextPreview(ReadOnlySpan<byte> data)
    {
        var head = data[..Math.Min(data.Length, 40)];
        var chars = new char[head.Length];
        for (int i = 0; i < head.Length; i++) chars[i] = head[i] is >= 0x20 and < 0x7F ? (char)head[i] : ' ';
        return new string(chars).Trim() + (data.Length > head.Length ? "..." : "");
    }

    private static string HexPreview(ReadOnlySpan<byte> data) =>
        string.Join(" ", data[..Math.Min(data.Length, 8)].ToArray().Select(b => b.ToString("X2")));
}
