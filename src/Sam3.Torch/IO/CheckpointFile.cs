using System.Buffers.Binary;

namespace Sam3.Torch.IO;

/// <summary>
/// Entry point for reading checkpoints of either format: <see cref="DetectFormat(string)"/> looks at the magic bytes,
/// <see cref="Open"/> returns the matching <see cref="ICheckpoint"/> (<see cref="SafetensorsFile"/> or
/// <see cref="TorchCheckpointReader"/>). Unreadable files raise a <see cref="Sam3CheckpointException"/> that says why.
/// </summary>
internal static class CheckpointFile
{
    /// <summary>Detects the format from the first bytes (the file name is not consulted).</summary>
    public static CheckpointFormat DetectFormat(string path)
    {
        switch (PathIdentity.Stat(path).Kind)
        {
            case FileKind.Directory: throw new Sam3CheckpointException($"{path} is a folder, not a checkpoint file");
            case FileKind.Other: throw new Sam3CheckpointException($"{path} is not a regular file (a device, pipe or socket), not a checkpoint");
        }
        if (!File.Exists(path)) throw new Sam3CheckpointException($"checkpoint not found: {path}");
        try
        {
            long length = FileLength.Of(path);
            var head = new byte[16];
            int n;
            using (var fs = File.OpenRead(path)) n = fs.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
            return DetectFormat(head.AsSpan(0, n), length);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new Sam3CheckpointException($"{path}: cannot read the checkpoint ({ex.Message})", ex);
        }
    }

    /// <summary>Detects the format of a file of <paramref name="fileLength"/> bytes that starts with <paramref name="head"/>.</summary>
    public static CheckpointFormat DetectFormat(ReadOnlySpan<byte> head, long fileLength)
    {
        // zip local file header, or an empty zip's end record
        if (head.Length >= 4 && head[0] == (byte)'P' && head[1] == (byte)'K' &&
            ((head[2] == 3 && head[3] == 4) || (head[2] == 5 && head[3] == 6)))
            return CheckpointFormat.TorchZip;
        // pickle stream (PROTO opcode): the legacy torch.save format starts with PROTO 2 and a LONG1 magic number
        if (head.Length >= 2 && head[0] == 0x80 && head[1] is >= 2 and <= 5)
            return CheckpointFormat.TorchLegacy;
        // safetensors: u64-LE header size, then the JSON header, which starts with '{'
        if (head.Length >= 9 && head[8] == (byte)'{')
        {
            ulong headerSize = BinaryPrimitives.ReadUInt64LittleEndian(head);
            if (headerSize >= 2) return CheckpointFormat.Safetensors; // size problems are reported by SafetensorsFile.Open
        }
        return CheckpointFormat.Unknown;
    }

    /// <summary>Opens a checkpoint of either supported format (tensor data is read lazily).</summary>
    public static ICheckpoint Open(string path)
    {
        var format = DetectFormat(path);
        try
        {
            return format switch
            {
                CheckpointFormat.Safetensors => SafetensorsFile.Open(path),
                CheckpointFormat.TorchZip => TorchCheckpointReader.Open(path),
                CheckpointFormat.TorchLegacy => throw LegacyError(path),
                _ => throw UnknownError(path),
            };
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new Sam3CheckpointException($"{path}: cannot read the checkpoint ({ex.Message})", ex);
        }
    }

    internal static Sam3CheckpointException LegacyError(string path) => new(
        $"{path}: this is PyTorch's legacy (pre-1.6, non-zip) torch.save format, which is not supported. " +
        "Convert it once in Python: torch.save(torch.load(path, map_location='cpu'), 'converted.pt') " +
        "(PyTorch >= 1.6 writes the zip format), or save a safetensors file with " +
        "safetensors.torch.save_file(state_dict, 'model.safetensors') (complex tensors: store torch.view_as_real(t)).");

    private static Sam3CheckpointException UnknownError(string path)
    {
        long length = FileLength.Of(path);
        if (length == 0) return new Sam3CheckpointException($"{path}: empty file, not a checkpoint");
        var head = new byte[Math.Min(8, length)];
        using (var fs = File.OpenRead(path)) fs.ReadExactly(head);
        return new Sam3CheckpointException(
            $"{path}: unrecognised checkpoint format (first bytes {Convert.ToHexString(head)}); expected a PyTorch zip checkpoint (.pt, starts with 'PK') " +
            "or a safetensors file (8-byte header size followed by '{')");
    }
}
