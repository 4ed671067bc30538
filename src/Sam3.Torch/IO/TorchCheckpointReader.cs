using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// Reader for PyTorch zip-format checkpoints (<c>torch.save</c>, PyTorch ≥ 1.6) that needs neither Python nor
/// TorchSharp.PyBridge. Opening parses the zip central directory and unpickles <c>data.pkl</c> (no tensor data is
/// touched); <see cref="Load"/> returns a view of the storage record <c>&lt;archive&gt;/data/&lt;key&gt;</c>:
/// memory-mapped straight from the .pt file (<c>torch.from_file</c>, private copy-on-write mapping) when the member is
/// stored uncompressed and its offset is a multiple of the element size (PyTorch aligns members to 64 bytes), otherwise
/// read on demand. Shared storages, storage offsets and arbitrary strides are honoured (<c>as_strided</c>).
/// Complex storages (the ViT's <c>*.attn.freqs_cis</c>, complex64) are returned as real tensors with a trailing
/// dimension of 2 (<c>view_as_real</c> layout).
/// The state dict is the top-level dict, or <c>ckpt["model"]</c> when that is a dict (as
/// <c>model_builder._load_checkpoint</c> does), or else <c>ckpt["state_dict"]</c> when the top level holds no tensors.
/// </summary>
internal sealed class TorchCheckpointReader : ICheckpoint
{
    /// <summary>Largest <c>data.pkl</c> accepted (the full SAM3 checkpoint's is ~100 KB).</summary>
    public const long MaxPickleBytes = 512L * 1024 * 1024;

    /// <summary>A storage record referenced by the pickle.</summary>
    /// <param name="Key">Storage key; its bytes are the zip member <c>&lt;prefix&gt;data/&lt;Key&gt;</c>.</param>
    /// <param name="StorageType">Python storage class, e.g. <c>FloatStorage</c>.</param>
    /// <param name="DType">Element dtype (complex for complex storages); null for an untyped storage.</param>
    /// <param name="Location">Device the storage was saved from (e.g. "cpu", "cuda:0"); ignored, everything loads to the CPU.</param>
    /// <param name="Numel">Element count as recorded (bytes for an untyped storage).</param>
    internal sealed record StorageRef(string Key, string StorageType, ScalarType? DType, string Location, long Numel);

    /// <summary>A tensor as described by <c>torch._utils._rebuild_tensor_v2/v3</c>.</summary>
    internal sealed record TensorRef(StorageRef Storage, ScalarType DType, long StorageOffset, long[] Sizes, long[] Strides)
    {
        public bool IsContiguous
        {
            get
            {
                long expected = 1;
                for (int i = Sizes.Length - 1; i >= 0; i--)
                {
                    if (Sizes[i] != 1 && Strides[i] != expected) return false;
                    expected *= Sizes[i];
                }
                return true;
            }
        }
    }

    private readonly ZipDirectory _zip;
    private readonly string _prefix;
    private readonly Dictionary<string, TensorRef> _tensors;
    private readonly Dictionary<string, CheckpointTensorInfo> _infos;
    private readonly Dictionary<ScalarType, Tensor> _maps = new();
    private bool _disposed;

    public string Path { get; }
    public CheckpointFormat Format => CheckpointFormat.TorchZip;
    public IReadOnlyList<string> Names { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>The unpickled top-level object (tensors appear as <see cref="TensorRef"/>).</summary>
    public object? Root { get; }
    /// <summary>Where the state dict was found: "" (top level), "model" or "state_dict".</summary>
    public string StateDictPath { get; }
    /// <summary>Entries of the state dict that are not tensors (key, description); they are not loadable.</summary>
    public IReadOnlyList<(string Key, string Value)> SkippedEntries { get; }
    /// <summary>Tensor descriptions by name.</summary>
    public IReadOnlyDictionary<string, TensorRef> TensorRefs => _tensors;

    private TorchCheckpointReader(string path, ZipDirectory zip, string prefix, object? root, string stateDictPath,
        List<(string, TensorRef)> tensors, List<(string, string)> skipped, Dictionary<string, string> metadata)
    {
        Path = path;
        _zip = zip;
        _prefix = prefix;
        Root = root;
        StateDictPath = stateDictPath;
        Names = tensors.Select(t => t.Item1).ToList();
        _tensors = tensors.ToDictionary(t => t.Item1, t => t.Item2);
        _infos = tensors.ToDictionary(t => t.Item1, t => MakeInfo(t.Item1, t.Item2));
        SkippedEntries = skipped;
        Metadata = metadata;
    }

    private static CheckpointTensorInfo MakeInfo(string name, TensorRef t) =>
        CheckpointDTypes.IsComplex(t.DType)
            ? new CheckpointTensorInfo(name, [.. t.Sizes, 2], CheckpointDTypes.RealOf(t.DType), true)
            : new CheckpointTensorInfo(name, t.Sizes, t.DType, false);

    /// <summary>Opens <paramref name="path"/>, reads the zip directory and the pickle, and validates every tensor's extent.</summary>
    public static TorchCheckpointReader Open(string path)
    {
        var format = CheckpointFile.DetectFormat(path);
        if (format == CheckpointFormat.TorchLegacy) throw CheckpointFile.LegacyError(path);
        if (format != CheckpointFormat.TorchZip)
            throw new Sam3CheckpointException($"{path}: not a PyTorch zip checkpoint (detected format: {format})");

        var zip = ZipDirectory.Open(path);
        var pkl = zip.Members.Where(m => m.Name == "data.pkl" || (m.Name.EndsWith("/data.pkl", StringComparison.Ordinal) && m.Name.IndexOf('/') == m.Name.Length - 9)).ToList();
        if (pkl.Count == 0)
            throw new Sam3CheckpointException($"{path}: zip archive has no '<name>/data.pkl' member, so it is not a torch.save checkpoint (members: {string.Join(", ", zip.Members.Take(5).Select(m => m.Name))})");
        if (pkl.Count > 1)
            throw new Sam3CheckpointException($"{path}: zip archive has several data.pkl members ({string.Join(", ", pkl.Select(m => m.Name))})");
        string prefix = pkl[0].Name[..^"data.pkl".Length];

        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["archive"] = prefix.TrimEnd('/') };
        if (zip.TryGet(prefix + "version", out var versionMember) && versionMember.UncompressedSize < 64)
            metadata["version"] = Encoding.ASCII.GetString(zip.ReadAll(versionMember)).Trim();
        if (zip.TryGet(prefix + "byteorder", out var byteorderMember) && byteorderMember.UncompressedSize < 64)
        {
            string order = Encoding.ASCII.GetString(zip.ReadAll(byteorderMember)).Trim();
            metadata["byteorder"] = order;
            if (order != "little")
                throw new Sam3CheckpointException($"{path}: storages are '{order}'-endian; only little-endian checkpoints are supported");
        }

        var bytes = zip.ReadAll(pkl[0], MaxPickleBytes);
        var storages = new Dictionary<string, StorageRef>(StringComparer.Ordinal);
        var reader = new PickleReader(bytes, $"{path}:{pkl[0].Name}")
        {
            PersistentLoad = pid => LoadStorage(pid, storages),
            Reduce = ReduceTorch,
        };
        object? root = reader.Load();

        var (stateDict, where) = SelectStateDict(path, root);
        var tensors = new List<(string, TensorRef)>();
        var skipped = new List<(string, string)>();
        foreach (var (k, v) in stateDict)
        {
            string key = k as string ?? throw new Sam3CheckpointException($"{path}: state dict key {PickleReader.Describe(k)} is not a string");
            switch (v)
            {
                case TensorRef t:
                    Validate(path, zip, prefix, key, t);
                    tensors.Add((key, t));
                    break;
                case PickleOpaque o:
                    throw new Sam3CheckpointException($"{path}: state dict entry '{key}' is a '{o.Callable.FullName}' object, which this reader does not support " +
                                                     "(only dense CPU tensors rebuilt by torch._utils._rebuild_tensor_v2 are)");
                default:
                    skipped.Add((key, PickleReader.Describe(v)));
                    break;
            }
        }
        return new TorchCheckpointReader(path, zip, prefix, root, where, tensors, skipped, metadata);
    }

    private static (PickleDict Dict, string Where) SelectStateDict(string path, object? root)
    {
        switch (root)
        {
            case PickleDict d:
                // Reference rule (model_builder._load_checkpoint): if "model" in ckpt and isinstance(ckpt["model"], dict).
                if (d.TryGetValue("model", out var m) && m is PickleDict md) return (md, "model");
                if (!d.Any(kv => kv.Value is TensorRef) && d.TryGetValue("state_dict", out var s) && s is PickleDict sd) return (sd, "state_dict");
                return (d, "");
            case TensorRef:
                throw new Sam3CheckpointException($"{path}: the checkpoint holds a single tensor, not a state dict");
            case PickleOpaque o:
                throw new Sam3CheckpointException($"{path}: the checkpoint holds a pickled '{o.Callable.FullName}' object, not a state dict " +
                                                 "(it was probably written with torch.save(model); save model.state_dict() instead)");
            default:
                throw new Sam3CheckpointException($"{path}: the checkpoint holds a {PickleReader.Describe(root)}, not a state dict");
        }
    }

    private static object LoadStorage(object? pid, Dictionary<string, StorageRef> storages)
    {
        // ('storage', storage_type, key, location, numel)
        if (pid is not object?[] { Length: >= 5 } t || t[0] as string != "storage")
            throw new Sam3CheckpointException($"unsupported persistent id {PickleReader.Describe(pid)} (expected a ('storage', ...) tuple)");
        string storageType = t[1] switch
        {
            PickleGlobal g when g.Module == "torch" => g.Name,
            PickleGlobal g => throw new Sam3CheckpointException($"unsupported storage type '{g.FullName}'"),
            var x => throw new Sam3CheckpointException($"storage type is a {PickleReader.Describe(x)}, not a torch storage class"),
        };
        string key = t[2]?.ToString() ?? throw new Sam3CheckpointException("storage without a key");
        string location = t[3] as string ?? "";
        long numel = t[4] is long n && n >= 0 ? n : throw new Sam3CheckpointException($"storage '{key}' has an invalid element count {PickleReader.Describe(t[4])}");
        ScalarType? dtype = storageType switch
        {
            "FloatStorage" => ScalarType.Float32,
            "DoubleStorage" => ScalarType.Float64,
            "HalfStorage" => ScalarType.Float16,
            "BFloat16Storage" => ScalarType.BFloat16,
            "LongStorage" => ScalarType.Int64,
            "IntStorage" => ScalarType.Int32,
            "ShortStorage" => ScalarType.Int16,
            "CharStorage" => ScalarType.Int8,
            "ByteStorage" => ScalarType.Byte,
            "BoolStorage" => ScalarType.Bool,
            "ComplexFloatStorage" => ScalarType.ComplexFloat32,
            "ComplexDoubleStorage" => ScalarType.ComplexFloat64,
            "UntypedStorage" => null,
            _ => throw new Sam3CheckpointException($"unsupported storage type 'torch.{storageType}' (storage '{key}')"),
        };
        if (storages.TryGetValue(key, out var existing))
        {
            if (existing.DType != dtype)
                throw new Sam3CheckpointException($"storage '{key}' is referenced with two different types ({existing.StorageType}, {storageType})");
            return existing;
        }
        var s = new StorageRef(key, storageType, dtype, location, numel);
        storages[key] = s;
        return s;
    }

    private static bool ReduceTorch(PickleGlobal g, object?[] args, out object? result)
    {
        result = null;
        switch (g.FullName)
        {
            case "torch._utils._rebuild_tensor_v2":
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if (args.Length < 4) throw new Sam3CheckpointException($"{g.FullName} with {args.Length} arguments");
                result = MakeTensor(args[0], null, args[1], args[2], args[3]);
                return true;
            case "torch._utils._rebuild_tensor_v3":
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
                if (args.Length < 7) throw new Sam3CheckpointException($"{g.FullName} with {args.Length} arguments");
                var dt = args[6] is PickleGlobal dg && dg.Module == "torch"
                    ? CheckpointDTypes.FromPythonName(dg.Name)
                    : throw new Sam3CheckpointException($"{g.FullName}: dtype argument is a {PickleReader.Describe(args[6])}");
                result = MakeTensor(args[0], dt, args[1], args[2], args[3]);
                return true;
            case "torch._utils._rebuild_tensor":
                // old signature (storage, storage_offset, size, stride)
                if (args.Length < 4) throw new Sam3CheckpointException($"{g.FullName} with {args.Length} arguments");
                result = MakeTensor(args[0], null, args[1], args[2], args[3]);
                return true;
            case "torch._utils._rebuild_parameter":
            case "torch._utils._rebuild_parameter_with_state":
                // (data, requires_grad, backward_hooks[, state]): a Parameter is its data here
                result = args.Length > 0 ? args[0] : null;
                return true;
            case "torch._tensor._rebuild_from_type_v2":
            case "torch._tensor._rebuild_from_type":
                // (func, new_type, args, state): rebuild with func, ignore the subclass
                if (args.Length >= 3 && args[0] is PickleGlobal f && args[2] is object?[] inner && ReduceTorch(f, inner, out result)) return true;
                return false;
            default:
                return false;
        }
    }

    private static TensorRef MakeTensor(object? storage, ScalarType? dtypeOverride, object? offset, object? size, object? stride)
    {
        if (storage is not StorageRef s) throw new Sam3CheckpointException($"tensor storage is a {PickleReader.Describe(storage)}, not a storage reference");
        long off = offset is long o ? o : throw new Sam3CheckpointException($"tensor storage offset is a {PickleReader.Describe(offset)}");
        long[] sizes = ToLongs(size, "size");
        long[] strides = ToLongs(stride, "stride");
        if (sizes.Length != strides.Length) throw new Sam3CheckpointException($"tensor has {sizes.Length} sizes but {strides.Length} strides");
        ScalarType dtype = dtypeOverride ?? s.DType ?? throw new Sam3CheckpointException($"untyped storage '{s.Key}' used without a dtype");
        if (s.DType != null && dtypeOverride != null && s.DType != dtypeOverride)
            throw new Sam3CheckpointException($"storage '{s.Key}' of type {s.StorageType} used as {dtypeOverride}");
        return new TensorRef(s, dtype, off, sizes, strides);
    }

    private static long[] ToLongs(object? v, string what) => v switch
    {
        object?[] t => t.Select(x => x is long l ? l : throw new Sam3CheckpointException($"tensor {what} contains a {PickleReader.Describe(x)}")).ToArray(),
        List<object?> l => l.Select(x => x is long i ? i : throw new Sam3CheckpointException($"tensor {what} contains a {PickleReader.Describe(x)}")).ToArray(),
        _ => throw new Sam3CheckpointException($"tensor {what} is a {PickleReader.Describe(v)}"),
    };

    /// <summary>Number of elements of the storage (untyped storages record bytes).</summary>
    private static long StorageElements(TensorRef t) =>
        t.Storage.DType == null ? t.Storage.Numel / CheckpointDTypes.ElementSize(t.DType) : t.Storage.Numel;

    private static void Validate(string path, ZipDirectory zip, string prefix, string key, TensorRef t)
    {
        try
        {
            ValidateCore(path, zip, prefix, key, t);
        }
        catch (OverflowException)
        {
            throw new Sam3CheckpointException($"{path}: tensor '{key}' has an element count, size or stride that overflows");
        }
    }

    private static void ValidateCore(string path, ZipDirectory zip, string prefix, string key, TensorRef t)
    {
        string member = prefix + "data/" + t.Storage.Key;
        if (!zip.TryGet(member, out var m))
            throw new Sam3CheckpointException($"{path}: tensor '{key}': storage member '{member}' is missing from the archive");
        int es = CheckpointDTypes.ElementSize(t.DType);
        long storageElements = StorageElements(t);
        if (m.UncompressedSize < checked(storageElements * es))
            throw new Sam3CheckpointException($"{path}: tensor '{key}': storage '{member}' has {m.UncompressedSize} bytes, {storageElements * es} expected for {storageElements} elements of {t.DType}");
        if (t.StorageOffset < 0 || t.Sizes.Any(d => d < 0) || t.Strides.Any(d => d < 0))
            throw new Sam3CheckpointException($"{path}: tensor '{key}' has a negative offset, size or stride");
        try
        {
            long numel = 1;
            foreach (var d in t.Sizes) numel = checked(numel * d);
            if (CheckpointDTypes.IsComplex(t.DType)) numel = checked(numel * 2);
        }
        catch (OverflowException)
        {
            throw new Sam3CheckpointException($"{path}: tensor '{key}' has a size [{string.Join(",", t.Sizes)}] whose element count overflows");
        }
        if (t.Sizes.All(d => d > 0))
        {
            long last;
            try
            {
                last = t.StorageOffset;
                for (int i = 0; i < t.Sizes.Length; i++) last = checked(last + (t.Sizes[i] - 1) * t.Strides[i]);
            }
            catch (OverflowException)
            {
                throw new Sam3CheckpointException($"{path}: tensor '{key}' has sizes/strides that overflow");
            }
            if (last >= storageElements)
                throw new Sam3CheckpointException($"{path}: tensor '{key}' (offset {t.StorageOffset}, size [{string.Join(",", t.Sizes)}], stride [{string.Join(",", t.Strides)}]) reaches element {last} of a {storageElements}-element storage");
        }
    }

    public bool Contains(string name) => _tensors.ContainsKey(name);

    public CheckpointTensorInfo Info(string name) =>
        _infos.TryGetValue(name, out var i) ? i : throw new Sam3CheckpointException($"{Path}: no tensor named '{name}'");

    /// <summary>Whether <paramref name="name"/> will be memory-mapped (true) or read into memory (false).</summary>
    public bool IsMemoryMapped(string name)
    {
        var t = _tensors.TryGetValue(name, out var r) ? r : throw new Sam3CheckpointException($"{Path}: no tensor named '{name}'");
        _zip.TryGet(_prefix + "data/" + t.Storage.Key, out var m);
        return m.IsStored && m.DataOffset % CheckpointDTypes.ElementSize(CheckpointDTypes.RealOf(t.DType)) == 0;
    }

    public Tensor Load(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var t = _tensors.TryGetValue(name, out var r) ? r : throw new Sam3CheckpointException($"{Path}: no tensor named '{name}'");
        _zip.TryGet(_prefix + "data/" + t.Storage.Key, out var m);
        bool complex = CheckpointDTypes.IsComplex(t.DType);
        var real = CheckpointDTypes.RealOf(t.DType);
        int realSize = CheckpointDTypes.ElementSize(real);
        int factor = complex ? 2 : 1; // real elements per logical element
        long[] sizes = complex ? [.. t.Sizes, 2] : t.Sizes;
        long[] strides = complex ? [.. t.Strides.Select(s => s * 2), 1] : t.Strides;

        using var scope = NewDisposeScope();
        Tensor result;
        if (m.IsStored && m.DataOffset % realSize == 0)
        {
            var map = GetMap(real);
            result = map.as_strided(sizes, strides, m.DataOffset / realSize + t.StorageOffset * factor);
        }
        else
        {
            // Read on demand: the whole storage record (deflated members, or offsets the element size does not divide).
            long storageReal = StorageElements(t) * factor;
            var storage = torch.empty(storageReal, dtype: real);
            using (var fs = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16))
            {
                fs.Position = m.DataOffset;
                if (m.IsStored)
                {
                    storage.ReadBytesFromStream(fs, 1 << 20);
                }
                else
                {
                    var bytes = new byte[checked(storageReal * realSize)];
                    _zip.CopyMember(fs, m, bytes);
                    storage.bytes = bytes;
                }
            }
            result = storage.as_strided(sizes, strides, t.StorageOffset * factor);
        }
        return result.MoveToOuterDisposeScope();
    }

    private Tensor GetMap(ScalarType real)
    {
        if (_maps.TryGetValue(real, out var map)) return map;
        int es = CheckpointDTypes.ElementSize(real);
        using (NewDisposeScope())
        {
            map = torch.from_file(Path, shared: false, size: _zip.FileLength / es, dtype: real).MoveToOuterDisposeScope();
        }
        map.DetachFromDisposeScope();
        _maps[real] = map;
        return map;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var m in _maps.Values) m.Dispose();
        _maps.Clear();
    }
}
