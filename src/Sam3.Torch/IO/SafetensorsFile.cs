using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>One tensor entry of a safetensors header.</summary>
internal sealed record SafetensorsEntry(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long NumElements => Shape.Aggregate(1L, (a, b) => checked(a * b));
}

/// <summary>
/// Reader for the safetensors format (u64-LE header size, JSON header, little-endian data). Tensors are
/// memory-mapped (<c>torch.from_file</c> views, no copy) where their offset is aligned to the element size,
/// and read eagerly otherwise. The header is validated on open: any entry outside the file, with an unknown
/// dtype or a size that disagrees with its shape is a <see cref="Sam3CheckpointException"/> naming it.
/// Tensors named in <c>__metadata__</c> with the value <see cref="ComplexAsRealTag"/> are complex tensors stored as
/// float32 <c>view_as_real</c> tensors (trailing dimension 2); <see cref="Info"/> flags them.
/// </summary>
internal sealed class SafetensorsFile : ICheckpoint
{
    /// <summary>Metadata value marking a tensor as a complex64 tensor stored in view_as_real layout.</summary>
    public const string ComplexAsRealTag = "complex64_as_real";

    /// <summary>Largest header accepted (the format's own limit is 100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly Dictionary<ScalarType, Tensor> _maps = new();
    private readonly long _fileLength;
    private bool _disposed;

    public string Path { get; }
    public CheckpointFormat Format => CheckpointFormat.Safetensors;
    public long DataStart { get; }
    public IReadOnlyDictionary<string, SafetensorsEntry> Entries { get; }
    /// <summary>Names in file order.</summary>
    public IReadOnlyList<string> Names { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    private SafetensorsFile(string path, long fileLength, long dataStart, List<SafetensorsEntry> entries, Dictionary<string, string> metadata)
    {
        Path = path;
        _fileLength = fileLength;
        DataStart = dataStart;
        Names = entries.Select(e => e.Name).ToList();
        Entries = entries.ToDictionary(e => e.Name);
        Metadata = metadata;
    }

    public static int ElementSize(string dtype) => dtype switch
    {
        "F64" or "I64" or "U64" => 8,
        "F32" or "I32" or "U32" => 4,
        "F16" or "BF16" or "I16" or "U16" => 2,
        "I8" or "U8" or "BOOL" => 1,
        _ => throw new Sam3CheckpointException($"unsupported safetensors dtype '{dtype}'"),
    };

    public static ScalarType ToScalarType(string dtype) => dtype switch
    {
        "F64" => ScalarType.Float64,
        "F32" => ScalarType.Float32,
        "F16" => ScalarType.Float16,
        "BF16" => ScalarType.BFloat16,
        "I64" => ScalarType.Int64,
        "I32" => ScalarType.Int32,
        "I16" => ScalarType.Int16,
        "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte,
        "BOOL" => ScalarType.Bool,
        _ => throw new Sam3CheckpointException($"unsupported safetensors dtype '{dtype}'"),
    };

    public static string FromScalarType(ScalarType t) => t switch
    {
        ScalarType.Float64 => "F64",
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new Sam3CheckpointException($"dtype {t} cannot be stored in safetensors"),
    };

    /// <summary>Opens and validates a safetensors file. No tensor data is read.</summary>
    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new Sam3CheckpointException($"checkpoint not found: {path}");
        long fileLength = FileLength.Of(path);
        if (fileLength < 8) throw new Sam3CheckpointException($"{path}: not a safetensors file (only {fileLength} bytes)");
        byte[] header;
        long headerLength;
        using (var fs = File.OpenRead(path))
        {
            var lenBytes = new byte[8];
            fs.ReadExactly(lenBytes);
            headerLength = BitConverter.ToInt64(lenBytes);
            if (headerLength <= 0 || headerLength > MaxHeaderBytes || 8 + headerLength > fileLength)
                throw new Sam3CheckpointException($"{path}: bad safetensors header size {headerLength} (file is {fileLength} bytes)");
            header = new byte[headerLength];
            fs.ReadExactly(header);
        }
        long dataStart = 8 + headerLength;
        long dataLength = fileLength - dataStart;
        var entries = new List<SafetensorsEntry>();
        var metadata = new Dictionary<string, string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(new UTF8Encoding(false, true).GetString(header).TrimEnd(' ', '\0'));
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new Sam3CheckpointException($"{path}: safetensors header is not a JSON object");
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object) throw new Sam3CheckpointException($"{path}: __metadata__ is not an object");
                    foreach (var m in prop.Value.EnumerateObject()) metadata[m.Name] = m.Value.ToString();
                    continue;
                }
                var v = prop.Value;
                if (v.ValueKind != JsonValueKind.Object) throw new Sam3CheckpointException($"{path}: header entry '{prop.Name}' is not an object");
                if (!seen.Add(prop.Name)) throw new Sam3CheckpointException($"{path}: tensor '{prop.Name}' appears twice in the header");
                string dtype = v.GetProperty("dtype").GetString() ?? "";
                long[] shape = v.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray();
                long[] offs = v.GetProperty("data_offsets").EnumerateArray().Select(x => x.GetInt64()).ToArray();
                if (offs.Length != 2) throw new Sam3CheckpointException($"{path}: tensor '{prop.Name}' has malformed data_offsets");
                var e = new SafetensorsEntry(prop.Name, dtype, shape, offs[0], offs[1]);
                int elementSize;
                try { elementSize = ElementSize(dtype); }
                catch (Sam3CheckpointException) { throw new Sam3CheckpointException($"{path}: tensor '{prop.Name}' has unsupported dtype '{dtype}'"); }
                if (shape.Any(d => d < 0) || e.Begin < 0 || e.End < e.Begin || e.End > dataLength)
                    throw new Sam3CheckpointException($"{path}: tensor '{prop.Name}' lies outside the file (offsets {e.Begin}..{e.End}, data is {dataLength} bytes; truncated file?)");
                if (e.End - e.Begin != e.NumElements * elementSize)
                    throw new Sam3CheckpointException($"{path}: tensor '{prop.Name}' has {e.End - e.Begin} bytes for shape [{string.Join(",", shape)}] of {dtype}");
                entries.Add(e);
            }
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException or KeyNotFoundException or FormatException
                                       or OverflowException or ArgumentException or DecoderFallbackException)
        {
            throw new Sam3CheckpointException($"{path}: corrupt safetensors header ({ex.Message})", ex);
        }
        entries.Sort((a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
        // Tensors may be stored in any order but never share bytes (upstream safetensors refuses overlaps and gaps;
        // a gap is harmless for reading, an overlap means two tensors alias each other's data).
        for (int i = 1; i < entries.Count; i++)
        {
            var (prev, cur) = (entries[i - 1], entries[i]);
            if (cur.Begin < prev.End && cur.End > cur.Begin && prev.End > prev.Begin)
                throw new Sam3CheckpointException(
                    $"{path}: tensors '{prev.Name}' (bytes {prev.Begin}..{prev.End}) and '{cur.Name}' (bytes {cur.Begin}..{cur.End}) overlap (corrupt or crafted header)");
        }
        return new SafetensorsFile(path, fileLength, dataStart, entries, metadata);
    }

    public bool Contains(string name) => Entries.ContainsKey(name);

    /// <summary>True when <c>__metadata__</c> marks <paramref name="name"/> as <see cref="ComplexAsRealTag"/>.</summary>
    public bool IsComplexAsReal(string name) => Metadata.TryGetValue(name, out var v) && v == ComplexAsRealTag;

    public CheckpointTensorInfo Info(string name)
    {
        if (!Entries.TryGetValue(name, out var e)) throw new Sam3CheckpointException($"{Path}: no tensor named '{name}'");
        bool complex = IsComplexAsReal(name);
        if (complex && (e.DType != "F32" || e.Shape.Length == 0 || e.Shape[^1] != 2))
            throw new Sam3CheckpointException($"{Path}: tensor '{name}' is marked {ComplexAsRealTag} but is {e.DType} [{string.Join(",", e.Shape)}] (expected F32 [..., 2])");
        return new CheckpointTensorInfo(name, e.Shape, ToScalarType(e.DType), complex);
    }

    /// <summary>
    /// The tensor <paramref name="name"/> on the CPU. Memory-mapped (copy-on-write private mapping) when aligned, else
    /// read. The returned tensor is owned by the caller's dispose scope; the mapping lives until this file is disposed.
    /// </summary>
    public Tensor Load(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!Entries.TryGetValue(name, out var e)) throw new Sam3CheckpointException($"{Path}: no tensor named '{name}'");
        var st = ToScalarType(e.DType);
        int es = ElementSize(e.DType);
        long absolute = DataStart + e.Begin;
        if (absolute % es == 0)
        {
            if (!_maps.TryGetValue(st, out var map))
            {
                using (NewDisposeScope())
                {
                    map = torch.from_file(Path, shared: false, size: _fileLength / es, dtype: st).MoveToOuterDisposeScope();
                }
                map.DetachFromDisposeScope();
                _maps[st] = map;
            }
            return map.narrow(0, absolute / es, e.NumElements).view(e.Shape);
        }
        // Unaligned offset: read into a fresh tensor (chunked, so tensors over 2 GB work too).
        var t = torch.empty(e.Shape, dtype: st);
        if (e.End > e.Begin)
        {
            using var fs = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            fs.Position = absolute;
            t.ReadBytesFromStream(fs, 1 << 20);
        }
        return t;
    }

    /// <summary>Reads every tensor (as mapped views) into a name → tensor dictionary in file order.</summary>
    public Dictionary<string, Tensor> LoadAll() => Names.ToDictionary(n => n, Load);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var m in _maps.Values) m.Dispose();
        _maps.Clear();
    }
}
