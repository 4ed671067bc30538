using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace Sam3.Torch.IO;

/// <summary>One member of a zip archive, as described by its central-directory record.</summary>
/// <param name="Name">Member name (UTF-8 or CP437 decoded; PyTorch writes ASCII names).</param>
/// <param name="Method">0 = stored, 8 = deflate.</param>
/// <param name="CompressedSize">Bytes of member data in the file.</param>
/// <param name="UncompressedSize">Bytes after decompression (equal to <paramref name="CompressedSize"/> when stored).</param>
/// <param name="LocalHeaderOffset">Offset of the member's local file header.</param>
/// <param name="DataOffset">Absolute offset of the member's data (after the local header, its name and extra field).</param>
internal sealed record ZipMember(string Name, int Method, long CompressedSize, long UncompressedSize, long LocalHeaderOffset, long DataOffset)
{
    public bool IsStored => Method == 0;
}

/// <summary>
/// Minimal reader of a zip archive's central directory (incl. Zip64), sufficient for PyTorch's <c>torch.save</c> files:
/// it yields, for each member, the absolute file offset of its data so that stored (uncompressed) members can be
/// memory-mapped in place. <see cref="System.IO.Compression.ZipArchive"/> does not expose these offsets.
/// Sizes come from the central directory (PyTorch sets the "data descriptor" flag and writes zero sizes into the
/// local headers); the local header is read only for the length of its name and extra field (PyTorch pads the extra
/// field so that data starts on a 64-byte boundary). Any inconsistency is a <see cref="Sam3CheckpointException"/>.
/// </summary>
internal sealed class ZipDirectory
{
    private const uint LocalHeaderSignature = 0x04034b50;
    private const uint CentralHeaderSignature = 0x02014b50;
    private const uint EndOfCentralDirectorySignature = 0x06054b50;
    private const uint Zip64LocatorSignature = 0x07064b50;
    private const uint Zip64EndSignature = 0x06064b50;
    private const int EndOfCentralDirectoryLength = 22;
    private const int MaxCommentLength = 65535;

    public string Path { get; }
    public long FileLength { get; }
    /// <summary>Members in central-directory order.</summary>
    public IReadOnlyList<ZipMember> Members { get; }
    private readonly Dictionary<string, ZipMember> _byName;

    private ZipDirectory(string path, long fileLength, List<ZipMember> members)
    {
        Path = path;
        FileLength = fileLength;
        Members = members;
        _byName = new Dictionary<string, ZipMember>(StringComparer.Ordinal);
        foreach (var m in members) _byName.TryAdd(m.Name, m); // first wins, as most zip readers do
    }

    public bool TryGet(string name, out ZipMember member) => _byName.TryGetValue(name, out member!);

    /// <summary>Reads and validates the central directory of <paramref name="path"/>. No member data is read.</summary>
    public static ZipDirectory Open(string path)
    {
        if (!File.Exists(path)) throw new Sam3CheckpointException($"checkpoint not found: {path}");
        try
        {
            return OpenCore(path);
        }
        catch (Exception ex) when (ex is OverflowException or EndOfStreamException or ArgumentOutOfRangeException)
        {
            throw Corrupt(path, ex.Message, ex);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new Sam3CheckpointException($"{path}: cannot read the checkpoint ({ex.Message})", ex);
        }
    }

    private static ZipDirectory OpenCore(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.RandomAccess);
        long length = fs.Length;
        if (length < EndOfCentralDirectoryLength)
            throw Corrupt(path, $"file is only {length} bytes, too small for a zip archive");

        // The end-of-central-directory record is in the last 22 + 65535 bytes (its comment can be up to 64 KiB).
        int tailLength = (int)Math.Min(length, EndOfCentralDirectoryLength + MaxCommentLength);
        var tail = new byte[tailLength];
        fs.Position = length - tailLength;
        fs.ReadExactly(tail);
        int eocd = -1;
        for (int i = tailLength - EndOfCentralDirectoryLength; i >= 0; i--)
        {
            if (BinaryPrimitives.ReadUInt32LittleEndian(tail.AsSpan(i)) != EndOfCentralDirectorySignature) continue;
            int commentLength = BinaryPrimitives.ReadUInt16LittleEndian(tail.AsSpan(i + 20));
            if (i + EndOfCentralDirectoryLength + commentLength == tailLength) { eocd = i; break; }
        }
        if (eocd < 0)
            throw Corrupt(path, "end-of-central-directory record not found (truncated or not a zip archive)");
        long eocdOffset = length - tailLength + eocd;
        var e = tail.AsSpan(eocd);
        long entryCount = BinaryPrimitives.ReadUInt16LittleEndian(e[10..]);
        long cdSize = BinaryPrimitives.ReadUInt32LittleEndian(e[12..]);
        long cdOffset = BinaryPrimitives.ReadUInt32LittleEndian(e[16..]);
        if (BinaryPrimitives.ReadUInt16LittleEndian(e[4..]) != 0 && BinaryPrimitives.ReadUInt16LittleEndian(e[4..]) != 0xFFFF)
            throw Corrupt(path, "multi-disk zip archives are not supported");

        if (entryCount == 0xFFFF || cdSize == 0xFFFFFFFF || cdOffset == 0xFFFFFFFF)
        {
            // Zip64: a locator immediately precedes the end-of-central-directory record.
            if (eocdOffset < 20) throw Corrupt(path, "Zip64 locator missing");
            var loc = new byte[20];
            fs.Position = eocdOffset - 20;
            fs.ReadExactly(loc);
            if (BinaryPrimitives.ReadUInt32LittleEndian(loc) != Zip64LocatorSignature)
                throw Corrupt(path, "Zip64 end-of-central-directory locator missing");
            long z64Offset = checked((long)BinaryPrimitives.ReadUInt64LittleEndian(loc.AsSpan(8)));
            if (z64Offset < 0 || z64Offset + 56 > eocdOffset) throw Corrupt(path, "Zip64 end-of-central-directory record lies outside the file");
            var z = new byte[56];
            fs.Position = z64Offset;
            fs.ReadExactly(z);
            if (BinaryPrimitives.ReadUInt32LittleEndian(z) != Zip64EndSignature)
                throw Corrupt(path, "Zip64 end-of-central-directory record has a bad signature");
            entryCount = checked((long)BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(32)));
            cdSize = checked((long)BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(40)));
            cdOffset = checked((long)BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(48)));
        }
        if (cdOffset < 0 || cdSize < 0 || cdOffset + cdSize > eocdOffset)
            throw Corrupt(path, $"central directory ({cdSize} bytes at {cdOffset}) lies outside the file (truncated?)");
        if (cdSize > int.MaxValue) throw Corrupt(path, "central directory larger than 2 GB");
        if (entryCount > cdSize / 46) throw Corrupt(path, $"central directory too small for {entryCount} entries");

        var cd = new byte[cdSize];
        fs.Position = cdOffset;
        fs.ReadExactly(cd);
        var members = new List<ZipMember>((int)entryCount);
        var localHeader = new byte[30];
        int p = 0;
        for (long n = 0; n < entryCount; n++)
        {
            if (p + 46 > cd.Length || BinaryPrimitives.ReadUInt32LittleEndian(cd.AsSpan(p)) != CentralHeaderSignature)
                throw Corrupt(path, $"central directory entry {n} is damaged");
            var h = cd.AsSpan(p);
            int flags = BinaryPrimitives.ReadUInt16LittleEndian(h[8..]);
            int method = BinaryPrimitives.ReadUInt16LittleEndian(h[10..]);
            long compressed = BinaryPrimitives.ReadUInt32LittleEndian(h[20..]);
            long uncompressed = BinaryPrimitives.ReadUInt32LittleEndian(h[24..]);
            int nameLength = BinaryPrimitives.ReadUInt16LittleEndian(h[28..]);
            int extraLength = BinaryPrimitives.ReadUInt16LittleEndian(h[30..]);
            int commentLength = BinaryPrimitives.ReadUInt16LittleEndian(h[32..]);
            long localOffset = BinaryPrimitives.ReadUInt32LittleEndian(h[42..]);
            if (p + 46 + nameLength + extraLength + commentLength > cd.Length)
                throw Corrupt(path, $"central directory entry {n} runs past the directory");
            var nameBytes = h.Slice(46, nameLength);
            string name = (flags & 0x800) != 0 ? Encoding.UTF8.GetString(nameBytes) : Encoding.Latin1.GetString(nameBytes);
            var extra = h.Slice(46 + nameLength, extraLength);
            // Zip64 extended information: only the fields that are 0xFFFFFFFF in the fixed record are present, in this order.
            for (int x = 0; x + 4 <= extra.Length;)
            {
                int id = BinaryPrimitives.ReadUInt16LittleEndian(extra[x..]);
                int size = BinaryPrimitives.ReadUInt16LittleEndian(extra[(x + 2)..]);
                if (x + 4 + size > extra.Length) break;
                if (id == 0x0001)
                {
                    var z = extra.Slice(x + 4, size);
                    int q = 0;
                    if (uncompressed == 0xFFFFFFFF && q + 8 <= z.Length) { uncompressed = checked((long)BinaryPrimitives.ReadUInt64LittleEndian(z[q..])); q += 8; }
                    if (compressed == 0xFFFFFFFF && q + 8 <= z.Length) { compressed = checked((long)BinaryPrimitives.ReadUInt64LittleEndian(z[q..])); q += 8; }
                    if (localOffset == 0xFFFFFFFF && q + 8 <= z.Length) { localOffset = checked((long)BinaryPrimitives.ReadUInt64LittleEndian(z[q..])); }
                }
                x += 4 + size;
            }
            p += 46 + nameLength + extraLength + commentLength;

            if (localOffset < 0 || localOffset + 30 > cdOffset)
                throw Corrupt(path, $"member '{name}' has its local header outside the file");
            fs.Position = localOffset;
            fs.ReadExactly(localHeader);
            if (BinaryPrimitives.ReadUInt32LittleEndian(localHeader) != LocalHeaderSignature)
                throw Corrupt(path, $"member '{name}' has a damaged local header");
            int localName = BinaryPrimitives.ReadUInt16LittleEndian(localHeader.AsSpan(26));
            int localExtra = BinaryPrimitives.ReadUInt16LittleEndian(localHeader.AsSpan(28));
            long dataOffset = localOffset + 30 + localName + localExtra;
            if (compressed < 0 || uncompressed < 0 || dataOffset + compressed > cdOffset)
                throw Corrupt(path, $"member '{name}' ({compressed} bytes at {dataOffset}) lies outside the file (truncated?)");
            if (method == 0 && compressed != uncompressed)
                throw Corrupt(path, $"stored member '{name}' has compressed size {compressed} != uncompressed size {uncompressed}");
            if ((flags & 0x1) != 0)
                throw new Sam3CheckpointException($"{path}: member '{name}' is encrypted; encrypted archives are not supported");
            members.Add(new ZipMember(name, method, compressed, uncompressed, localOffset, dataOffset));
        }
        return new ZipDirectory(path, length, members);
    }

    /// <summary>Reads a whole member into memory (stored or deflated). For small members such as <c>data.pkl</c>.</summary>
    public byte[] ReadAll(ZipMember m, long maxBytes = int.MaxValue)
    {
        if (m.UncompressedSize > maxBytes || m.UncompressedSize > Array.MaxLength)
            throw new Sam3CheckpointException($"{Path}: member '{m.Name}' is too large to read into memory ({m.UncompressedSize} bytes)");
        var result = new byte[m.UncompressedSize];
        using var fs = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        fs.Position = m.DataOffset;
        CopyMember(fs, m, result);
        return result;
    }

    /// <summary>Copies member <paramref name="m"/> (whose data starts at the stream's position) into <paramref name="destination"/>.</summary>
    internal void CopyMember(Stream fs, ZipMember m, Span<byte> destination)
    {
        try
        {
            switch (m.Method)
            {
                case 0:
                    fs.ReadExactly(destination);
                    break;
                case 8:
                {
                    using var bounded = new BoundedStream(fs, m.CompressedSize);
                    using var inflate = new DeflateStream(bounded, CompressionMode.Decompress, leaveOpen: true);
                    inflate.ReadExactly(destination);
                    break;
                }
                default:
                    throw new Sam3CheckpointException($"{Path}: member '{m.Name}' uses zip compression method {m.Method}; only stored (0) and deflate (8) are supported");
            }
        }
        catch (Exception ex) when (ex is EndOfStreamException or InvalidDataException)
        {
            throw Corrupt(Path, $"member '{m.Name}' could not be read ({ex.Message})", ex);
        }
    }

    private static Sam3CheckpointException Corrupt(string path, string what, Exception? inner = null) =>
        new($"{path}: corrupt zip archive: {what}", inner);

    /// <summary>Read-only window of <c>length</c> bytes from the current position of an underlying stream.</summary>
    private sealed class BoundedStream(Stream inner, long length) : Stream
    {
        private long _left = length;
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
        public override int Read(Span<byte> buffer)
        {
            if (_left <= 0) return 0;
            int n = inner.Read(buffer[..(int)Math.Min(buffer.Length, _left)]);
            _left -= n;
            return n;
        }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
