using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace Sam3.Torch.Tests.IO;

/// <summary>
/// Writes minimal PyTorch zip checkpoints by hand, byte for byte in the layout <c>torch.save</c> (PyTorch 1.13, pickle
/// protocol 2) produces: members <c>&lt;stem&gt;/data.pkl</c>, <c>&lt;stem&gt;/data/&lt;key&gt;</c>, <c>&lt;stem&gt;/version</c>;
/// local headers with the data-descriptor flag (0x808), zero sizes and an "FB" extra field of 'Z' padding that puts
/// every member's data on a 64-byte boundary; data descriptors; a Zip64 end record + locator before the classic end
/// record. The pickle mirrors the opcodes and memo numbering of Python's pickler for a state dict (see the
/// structure check in the tests). Options produce variants: misaligned data, deflated members, forced Zip64 fields.
/// </summary>
internal sealed class TorchPtBuilder
{
    internal sealed record Storage(string Key, string StorageType, byte[] Data, long Numel);
    internal sealed record TensorEntry(string Name, string StorageKey, long Offset, long[] Sizes, long[] Strides, string RebuildFunction = "_rebuild_tensor_v2");

    private readonly List<Storage> _storages = new();
    private readonly List<TensorEntry> _tensors = new();
    private readonly List<(string Key, Action<PickleEmitter> Emit)> _extraTopLevel = new();

    /// <summary>Wrap the state dict as {"model": state_dict} (the released checkpoint may be either).</summary>
    public bool WrapInModel { get; set; }
    /// <summary>Give the state dict a <c>_metadata</c> attribute (BUILD), as module.state_dict() does.</summary>
    public bool WithStateDictMetadata { get; set; } = true;
    /// <summary>Pad so that every member's data starts at an odd offset (≡ 1 mod 4): nothing can be memory-mapped.</summary>
    public bool Misalign { get; set; }
    /// <summary>Compress storage members with deflate (method 8).</summary>
    public bool DeflateStorages { get; set; }
    /// <summary>Write 0xFFFF/0xFFFFFFFF in the classic records and the real values in Zip64 fields.</summary>
    public bool ForceZip64 { get; set; }
    /// <summary>Storage keys whose <c>data/&lt;key&gt;</c> member is left out of the archive.</summary>
    public HashSet<string> OmitStorageMembers { get; } = new();

    public TorchPtBuilder AddStorage(string key, string storageType, byte[] data, long numel)
    {
        _storages.Add(new Storage(key, storageType, data, numel));
        return this;
    }

    public TorchPtBuilder AddFloatStorage(string key, params float[] values)
    {
        var b = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(4 * i), values[i]);
        return AddStorage(key, "FloatStorage", b, values.Length);
    }

    public TorchPtBuilder AddTensor(string name, string storageKey, long offset, long[] sizes, long[]? strides = null, string rebuild = "_rebuild_tensor_v2")
    {
        _tensors.Add(new TensorEntry(name, storageKey, offset, sizes, strides ?? ContiguousStrides(sizes), rebuild));
        return this;
    }

    /// <summary>Adds a top-level (non-state-dict) entry next to "model", e.g. an epoch counter or an unknown object.</summary>
    public TorchPtBuilder AddTopLevel(string key, Action<PickleEmitter> emit)
    {
        _extraTopLevel.Add((key, emit));
        return this;
    }

    public static long[] ContiguousStrides(long[] sizes)
    {
        var s = new long[sizes.Length];
        long acc = 1;
        for (int i = sizes.Length - 1; i >= 0; i--) { s[i] = acc; acc *= sizes[i]; }
        return s;
    }

    /// <summary>The data.pkl bytes.</summary>
    public byte[] BuildPickle()
    {
        var p = new PickleEmitter();
        p.Proto(2);
        if (WrapInModel || _extraTopLevel.Count > 0)
        {
            p.EmptyDict();
            if (_extraTopLevel.Count > 0 || !WrapInModel) p.Mark();
            if (WrapInModel)
            {
                p.Unicode("model");
                EmitStateDict(p);
            }
            foreach (var (k, emit) in _extraTopLevel)
            {
                p.Unicode(k);
                emit(p);
            }
            if (_extraTopLevel.Count > 0 || !WrapInModel) p.Op('u'); else p.Op('s');
        }
        else
        {
            EmitStateDict(p);
        }
        p.Op('.');
        return p.ToArray();
    }

    private void EmitStateDict(PickleEmitter p)
    {
        p.Global("collections", "OrderedDict");
        p.EmptyTuple();
        p.Reduce();
        if (_tensors.Count == 1) { EmitItem(p, _tensors[0]); p.Op('s'); }
        else if (_tensors.Count > 1)
        {
            p.Mark();
            foreach (var t in _tensors) EmitItem(p, t);
            p.Op('u');
        }
        if (WithStateDictMetadata)
        {
            // {'_metadata': OrderedDict([('', {'version': 1})])} applied with BUILD
            p.EmptyDict();
            p.Unicode("_metadata");
            p.Global("collections", "OrderedDict");
            p.EmptyTuple();
            p.Reduce();
            p.Unicode("");
            p.EmptyDict();
            p.Unicode("version");
            p.Int(1);
            p.Op('s');
            p.Op('s');
            p.Op('s');
            p.Op('b');
        }
    }

    private void EmitItem(PickleEmitter p, TensorEntry t)
    {
        var s = _storages.Single(x => x.Key == t.StorageKey);
        p.Unicode(t.Name);
        p.Global("torch._utils", t.RebuildFunction);
        p.Mark();
        p.Mark();
        p.Unicode("storage");
        p.Global("torch", s.StorageType);
        p.Unicode(s.Key);
        p.Unicode("cpu");
        p.Int(s.Numel);
        p.TupleFromMark();
        p.Op('Q'); // BINPERSID
        p.Int(t.Offset);
        p.Tuple(t.Sizes);
        p.Tuple(t.Strides);
        p.Op(0x89); // NEWFALSE
        p.Global("collections", "OrderedDict");
        p.EmptyTuple();
        p.Reduce();
        p.TupleFromMark();
        p.Reduce();
    }

    /// <summary>Writes the checkpoint; the archive folder is the file's stem, as torch.save names it.</summary>
    public void Write(string path)
    {
        string stem = Path.GetFileNameWithoutExtension(path);
        var members = new List<(string name, byte[] data, bool deflate)>
        {
            ($"{stem}/data.pkl", BuildPickle(), false),
        };
        foreach (var s in _storages)
            if (!OmitStorageMembers.Contains(s.Key)) members.Add(($"{stem}/data/{s.Key}", s.Data, DeflateStorages));
        members.Add(($"{stem}/version", Encoding.ASCII.GetBytes("3\n"), false));
        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        WriteZip(fs, members);
    }

    /// <summary>Streams the archive (storages are written from their arrays; one array may back several storages).</summary>
    private void WriteZip(Stream ms, List<(string name, byte[] data, bool deflate)> members)
    {
        var w = new BinaryWriter(ms);
        var crcs = new Dictionary<byte[], uint>(ReferenceEqualityComparer.Instance);
        var central = new List<(string name, uint crc, long comp, long uncomp, long offset, int method)>();
        foreach (var (name, data, deflate) in members)
        {
            byte[] stored = data;
            if (deflate)
            {
                using var cms = new MemoryStream();
                using (var d = new DeflateStream(cms, CompressionLevel.Optimal, leaveOpen: true)) d.Write(data);
                stored = cms.ToArray();
            }
            long offset = ms.Position;
            var nameBytes = Encoding.ASCII.GetBytes(name);
            long dataStart = offset + 30 + nameBytes.Length + 4;
            int extraLength = Misalign
                ? 4 + (int)(((1 - dataStart) % 4 + 4) % 4)
                : 4 + (int)((64 - dataStart % 64) % 64);
            w.Write(0x04034b50u);
            w.Write((ushort)0);       // version needed (torch writes 0)
            w.Write((ushort)0x0808);  // data descriptor + UTF-8 names
            w.Write((ushort)(deflate ? 8 : 0));
            w.Write((ushort)0); w.Write((ushort)0); // time, date
            w.Write(0u); w.Write(0u); w.Write(0u);  // crc, sizes: in the data descriptor
            w.Write((ushort)nameBytes.Length);
            w.Write((ushort)extraLength);
            w.Write(nameBytes);
            if (extraLength > 0)
            {
                w.Write((ushort)0x4246); // "FB"
                w.Write((ushort)(extraLength - 4));
                for (int i = 0; i < extraLength - 4; i++) w.Write((byte)'Z');
            }
            w.Write(stored);
            if (!crcs.TryGetValue(data, out uint crc)) crcs[data] = crc = Crc32(data);
            w.Write(0x08074b50u);
            w.Write(crc);
            w.Write((uint)stored.Length);
            w.Write((uint)data.Length);
            central.Add((name, crc, stored.Length, data.Length, offset, deflate ? 8 : 0));
        }
        long cdStart = ms.Position;
        foreach (var (name, crc, comp, uncomp, offset, method) in central)
        {
            var nameBytes = Encoding.ASCII.GetBytes(name);
            w.Write(0x02014b50u);
            w.Write((ushort)0); w.Write((ushort)0);
            w.Write((ushort)0x0808);
            w.Write((ushort)method);
            w.Write((ushort)0); w.Write((ushort)0);
            w.Write(crc);
            w.Write(ForceZip64 ? 0xFFFFFFFFu : (uint)comp);
            w.Write(ForceZip64 ? 0xFFFFFFFFu : (uint)uncomp);
            w.Write((ushort)nameBytes.Length);
            w.Write((ushort)(ForceZip64 ? 28 : 0));
            w.Write((ushort)0); w.Write((ushort)0); w.Write((ushort)0);
            w.Write(0u);
            w.Write(ForceZip64 ? 0xFFFFFFFFu : (uint)offset);
            w.Write(nameBytes);
            if (ForceZip64)
            {
                w.Write((ushort)0x0001);
                w.Write((ushort)24);
                w.Write((ulong)uncomp);
                w.Write((ulong)comp);
                w.Write((ulong)offset);
            }
        }
        long cdEnd = ms.Position;
        // Zip64 end of central directory record + locator (torch always writes them)
        long z64 = ms.Position;
        w.Write(0x06064b50u);
        w.Write((ulong)44);
        w.Write((ushort)0x031e); w.Write((ushort)45);
        w.Write(0u); w.Write(0u);
        w.Write((ulong)central.Count); w.Write((ulong)central.Count);
        w.Write((ulong)(cdEnd - cdStart)); w.Write((ulong)cdStart);
        w.Write(0x07064b50u);
        w.Write(0u);
        w.Write((ulong)z64);
        w.Write(1u);
        // classic end record
        w.Write(0x06054b50u);
        w.Write((ushort)0); w.Write((ushort)0);
        w.Write(ForceZip64 ? (ushort)0xFFFF : (ushort)central.Count);
        w.Write(ForceZip64 ? (ushort)0xFFFF : (ushort)central.Count);
        w.Write(ForceZip64 ? 0xFFFFFFFFu : (uint)(cdEnd - cdStart));
        w.Write(ForceZip64 ? 0xFFFFFFFFu : (uint)cdStart);
        w.Write((ushort)0);
        w.Flush();
    }

    private static readonly uint[] CrcTable = Enumerable.Range(0, 256).Select(n =>
    {
        uint c = (uint)n;
        for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        return c;
    }).ToArray();

    private static uint Crc32(byte[] data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data) crc = CrcTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return ~crc;
    }
}

/// <summary>
/// Emits pickle protocol-2 opcodes with Python's memo behaviour (BINPUT after every memoized object; repeated
/// globals and equal strings are fetched back with BINGET, as the pickler does for the same object).
/// </summary>
internal sealed class PickleEmitter
{
    private readonly MemoryStream _ms = new();
    private readonly Dictionary<string, int> _memo = new();
    private int _next;

    public byte[] ToArray() => _ms.ToArray();

    public void Op(int op) => _ms.WriteByte((byte)op);
    public void Op(char op) => _ms.WriteByte((byte)op);

    public void Proto(int v) { Op(0x80); Op(v); }
    public void Mark() => Op('(');
    public void EmptyTuple() => Op(')');

    public void EmptyDict() { Op('}'); Put(); }

    private void Put()
    {
        int id = _next++;
        if (id < 256) { Op('q'); Op(id); }
        else { Op('r'); Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteInt32LittleEndian(b, id); _ms.Write(b); }
    }

    private bool Get(string memoKey)
    {
        if (!_memo.TryGetValue(memoKey, out int id)) return false;
        if (id < 256) { Op('h'); Op(id); }
        else { Op('j'); Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteInt32LittleEndian(b, id); _ms.Write(b); }
        return true;
    }

    public void Unicode(string s)
    {
        if (Get("s:" + s)) return;
        var b = Encoding.UTF8.GetBytes(s);
        Op('X');
        Span<byte> len = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(len, b.Length);
        _ms.Write(len);
        _ms.Write(b);
        _memo["s:" + s] = _next;
        Put();
    }

    public void Global(string module, string name)
    {
        if (Get($"g:{module}.{name}")) return;
        Op('c');
        _ms.Write(Encoding.ASCII.GetBytes($"{module}\n{name}\n"));
        _memo[$"g:{module}.{name}"] = _next;
        Put();
    }

    public void Reduce() { Op('R'); Put(); }

    public void TupleFromMark() { Op('t'); Put(); }

    public void Int(long v)
    {
        if (v >= 0 && v < 256) { Op('K'); Op((int)v); }
        else if (v >= 0 && v < 65536) { Op('M'); Op((int)(v & 0xFF)); Op((int)(v >> 8)); }
        else if (v >= int.MinValue && v <= int.MaxValue)
        {
            Op('J');
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(b, (int)v);
            _ms.Write(b);
        }
        else
        {
            var bytes = new System.Numerics.BigInteger(v).ToByteArray(); // little-endian two's complement, minimal
            Op(0x8a);
            Op(bytes.Length);
            _ms.Write(bytes);
        }
    }

    public void Float(double v)
    {
        Op('G');
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteDoubleBigEndian(b, v);
        _ms.Write(b);
    }

    /// <summary>A tuple of ints, encoded as the pickler does (EMPTY_TUPLE, TUPLE1-3, or MARK ... TUPLE).</summary>
    public void Tuple(long[] items)
    {
        if (items.Length == 0) { EmptyTuple(); return; }
        if (items.Length > 3) Mark();
        foreach (var i in items) Int(i);
        Op(items.Length switch { 1 => 0x85, 2 => 0x86, 3 => 0x87, _ => 't' });
        Put();
    }
}
