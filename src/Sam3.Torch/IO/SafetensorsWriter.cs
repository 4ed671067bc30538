using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// Writes name → tensor dictionaries as safetensors: u64-LE header size, a JSON header padded with spaces to a
/// multiple of 8 bytes, then the tensors' little-endian bytes back to back. Tensor data is streamed one tensor at a
/// time (no file-sized buffer); tensors may be produced lazily (<see cref="Item"/>), so converting a memory-mapped
/// checkpoint touches one tensor at a time. Complex tensors are written as float32/float64 <c>view_as_real</c> tensors
/// (trailing dimension 2) and marked <c>"complex64_as_real"</c> in <c>__metadata__</c>, the convention of the parity
/// fixtures. Tensors are laid out by decreasing element size (stable), so with the 8-aligned header every tensor's
/// offset is a multiple of its element size and can be memory-mapped. The file is written to a temporary name and
/// renamed when complete.
/// </summary>
internal static class SafetensorsWriter
{
    /// <summary>A tensor to write: its declared shape/dtype (used for the header) and a producer called once while writing.</summary>
    internal sealed record Item(string Name, long[] Shape, ScalarType DType, Func<Tensor> Produce);

    /// <summary>Writes the tensors of <paramref name="tensors"/> (in enumeration order, see class remarks).</summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var items = tensors.Select(kv =>
        {
            var t = kv.Value;
            return new Item(kv.Key, t.shape, t.dtype, () => t.alias());
        }).ToList();
        Write(path, items, metadata);
    }

    /// <summary>Writes <paramref name="items"/>; each producer is called once, inside a dispose scope that ends after its tensor is written.</summary>
    public static void Write(string path, IReadOnlyList<Item> items, IReadOnlyDictionary<string, string>? metadata = null,
        IProgress<(int done, int total, string key)>? progress = null)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var it in items)
        {
            if (string.IsNullOrEmpty(it.Name) || it.Name == "__metadata__")
                throw new Sam3CheckpointException($"invalid safetensors tensor name '{it.Name}'");
            if (!names.Add(it.Name)) throw new Sam3CheckpointException($"tensor '{it.Name}' given twice");
            if (it.Shape.Any(d => d < 0)) throw new Sam3CheckpointException($"tensor '{it.Name}' has a negative dimension");
        }

        // Layout: stable sort by decreasing element size keeps every tensor aligned to its element size.
        var layout = items.Select((it, i) => (it, i, stored: StoredForm(it)))
            .OrderByDescending(x => SafetensorsFile.ElementSize(x.stored.dtype)).ThenBy(x => x.i).ToList();

        var meta = new Dictionary<string, string>(StringComparer.Ordinal);
        if (metadata != null) foreach (var (k, v) in metadata) meta[k] = v;
        foreach (var (it, _, stored) in layout)
            if (CheckpointDTypes.IsComplex(it.DType)) meta[it.Name] = it.DType == ScalarType.ComplexFloat32 ? SafetensorsFile.ComplexAsRealTag : "complex128_as_real";

        byte[] header = BuildHeader(layout.Select(x => (x.it.Name, x.stored.dtype, x.stored.shape)).ToList(), meta);
        string directory = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
        Directory.CreateDirectory(directory);
        string temp = System.IO.Path.Combine(directory, $".{System.IO.Path.GetFileName(path)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var fs = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                Span<byte> len = stackalloc byte[8];
                System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
                fs.Write(len);
                fs.Write(header);
                int done = 0;
                foreach (var (it, _, stored) in layout)
                {
                    WriteTensor(fs, it, stored.dtype, stored.shape);
                    progress?.Report((++done, layout.Count, it.Name));
                }
                fs.Flush(flushToDisk: true); // complete on disk before the rename makes it visible
            }
            File.Move(temp, path, overwrite: true);
        }
        catch (ArgumentOutOfRangeException e) when (e.ParamName == "value")
        {
            // .NET's report of EFBIG (a file-size limit, ulimit -f): an I/O failure like a full disk
            try { File.Delete(temp); } catch (IOException) { }
            throw new IOException($"cannot write {path}: the file exceeds the file-size limit or the file system's maximum", e);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { }
            throw;
        }
    }

    private static (string dtype, long[] shape) StoredForm(Item it) =>
        CheckpointDTypes.IsComplex(it.DType)
            ? (SafetensorsFile.FromScalarType(CheckpointDTypes.RealOf(it.DType)), [.. it.Shape, 2])
            : (SafetensorsFile.FromScalarType(it.DType), it.Shape);

    private static byte[] BuildHeader(List<(string name, string dtype, long[] shape)> layout, Dictionary<string, string> meta)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (meta.Count > 0)
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in meta) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, dtype, shape) in layout)
            {
                long bytes = checked(shape.Aggregate(1L, (a, b) => checked(a * b)) * SafetensorsFile.ElementSize(dtype));
                w.WriteStartObject(name);
                w.WriteString("dtype", dtype);
                w.WriteStartArray("shape");
                foreach (var d in shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        var json = ms.ToArray();
        int padded = (json.Length + 7) / 8 * 8;
        var header = new byte[padded];
        json.CopyTo(header, 0);
        for (int i = json.Length; i < padded; i++) header[i] = (byte)' ';
        return header;
    }

    private static void WriteTensor(Stream fs, Item it, string dtype, long[] shape)
    {
        using var scope = NewDisposeScope();
        var t = it.Produce();
        if (t.dtype != it.DType || !t.shape.SequenceEqual(it.Shape))
            throw new Sam3CheckpointException($"tensor '{it.Name}' is {t.dtype} [{string.Join(",", t.shape)}] but was declared {it.DType} [{string.Join(",", it.Shape)}]");
        if (t.device_type != DeviceType.CPU) t = t.cpu();
        if (CheckpointDTypes.IsComplex(t.dtype)) t = t.view_as_real();
        if (!t.is_contiguous()) t = t.contiguous();
        if (t.numel() > 0) t.WriteBytesToStream(fs, 1 << 20);
    }
}
