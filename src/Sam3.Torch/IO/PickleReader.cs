using System.Buffers.Binary;
using System.Globalization;
using System.Numerics;
using System.Text;

namespace Sam3.Torch.IO;

/// <summary>
/// Minimal, side-effect-free unpickler (protocols 0–5) for PyTorch checkpoints. It never imports or calls Python
/// code: GLOBAL/STACK_GLOBAL produce <see cref="PickleGlobal"/> names, and calls (REDUCE, NEWOBJ) are resolved by
/// the <see cref="ReduceHandler"/> given by the caller, by a few built-in containers (<c>collections.OrderedDict</c>,
/// <c>builtins.dict/list/set/tuple</c>, <c>_codecs.encode</c>, <c>torch.Size</c>), or kept as
/// <see cref="PickleOpaque"/> objects. Persistent ids (PyTorch's storage references) go to <see cref="PersistentLoad"/>.
/// Values: <c>None</c> → null, bool, long (BigInteger when larger), double, string, byte[], tuple → <c>object?[]</c>,
/// list → <c>List&lt;object?&gt;</c>, dict → <see cref="PickleDict"/>. Malformed input is a
/// <see cref="Sam3CheckpointException"/> naming the byte offset.
/// </summary>
internal sealed class PickleReader
{
    /// <summary>Resolves a call of <paramref name="callable"/> with <paramref name="args"/>; false = not handled.</summary>
    internal delegate bool ReduceHandler(PickleGlobal callable, object?[] args, out object? result);

    private readonly byte[] _data;
    private readonly string _source;
    private int _pos;
    private readonly List<object?> _stack = new();
    private readonly Stack<List<object?>> _metastack = new();
    private readonly Dictionary<long, object?> _memo = new();

    public Func<object?, object?>? PersistentLoad { get; init; }
    public ReduceHandler? Reduce { get; init; }

    /// <param name="data">The pickle bytes.</param>
    /// <param name="source">Name used in error messages (file and member).</param>
    public PickleReader(byte[] data, string source)
    {
        _data = data;
        _source = source;
    }

    /// <summary>Unpickles the first object (up to STOP).</summary>
    public object? Load()
    {
        int opcodeAt = 0;
        try
        {
            while (true)
            {
                opcodeAt = _pos;
                byte op = ReadByte();
                if (op == (byte)'.') // STOP
                {
                    if (_stack.Count != 1) throw Bad($"STOP with {_stack.Count} items on the stack");
                    return _stack[0];
                }
                Dispatch(op);
            }
        }
        catch (Sam3CheckpointException ex) when (ex.Data.Contains("pickle-offset"))
        {
            throw;
        }
        catch (Sam3CheckpointException ex)
        {
            var wrapped = new Sam3CheckpointException($"{_source}: {ex.Message} (pickle offset {opcodeAt})", ex.InnerException ?? ex);
            wrapped.Data["pickle-offset"] = opcodeAt;
            throw wrapped;
        }
        catch (Exception ex) when (ex is InvalidCastException or ArgumentException or IndexOutOfRangeException
                                       or OverflowException or FormatException or InvalidOperationException
                                       or NullReferenceException or KeyNotFoundException or DecoderFallbackException)
        {
            var wrapped = new Sam3CheckpointException($"{_source}: corrupt pickle at offset {opcodeAt} ({ex.GetType().Name}: {ex.Message})", ex);
            wrapped.Data["pickle-offset"] = opcodeAt;
            throw wrapped;
        }
    }

    private void Dispatch(byte op)
    {
        switch (op)
        {
            // ---- framing / protocol
            case 0x80: ReadByte(); break;                        // PROTO n
            case 0x95: ReadBytes(8); break;                      // FRAME (length only; data follows inline)
            // ---- stack manipulation
            case (byte)'(': _metastack.Push(new List<object?>(_stack)); _stack.Clear(); break; // MARK
            case (byte)'0': Pop(); break;                        // POP
            case (byte)'1': PopMark(); break;                    // POP_MARK
            case (byte)'2': Push(Peek()); break;                 // DUP
            // ---- constants
            case (byte)'N': Push(null); break;                   // NONE
            case 0x88: Push(true); break;                        // NEWTRUE
            case 0x89: Push(false); break;                       // NEWFALSE
            // ---- integers
            case (byte)'J': Push((long)BinaryPrimitives.ReadInt32LittleEndian(ReadBytes(4))); break;  // BININT
            case (byte)'K': Push((long)ReadByte()); break;                                             // BININT1
            case (byte)'M': Push((long)BinaryPrimitives.ReadUInt16LittleEndian(ReadBytes(2))); break; // BININT2
            case 0x8a: Push(DecodeLong(ReadBytes(ReadByte()))); break;                                 // LONG1
            case 0x8b:                                                                                 // LONG4
            {
                int n = BinaryPrimitives.ReadInt32LittleEndian(ReadBytes(4));
                if (n < 0) throw Bad("negative LONG4 length");
                Push(DecodeLong(ReadBytes(n)));
                break;
            }
            case (byte)'I':                                                                            // INT (text)
            {
                string s = ReadLine();
                if (s == "00") Push(false);
                else if (s == "01") Push(true);
                else Push(ParseInteger(s));
                break;
            }
            case (byte)'L': Push(ParseInteger(ReadLine().TrimEnd('L'))); break;                       // LONG (text)
            // ---- floats
            case (byte)'G': Push(BinaryPrimitives.ReadDoubleBigEndian(ReadBytes(8))); break;          // BINFLOAT
            case (byte)'F': Push(double.Parse(ReadLine(), NumberStyles.Float, CultureInfo.InvariantCulture)); break; // FLOAT
            // ---- strings and bytes
            case (byte)'X': Push(Utf8(ReadBytes(ReadLength32()))); break;                             // BINUNICODE
            case 0x8c: Push(Utf8(ReadBytes(ReadByte()))); break;                                      // SHORT_BINUNICODE
            case 0x8d: Push(Utf8(ReadBytes(ReadLength64()))); break;                                  // BINUNICODE8
            case (byte)'T': Push(Encoding.Latin1.GetString(ReadBytes(ReadLength32()))); break;         // BINSTRING
            case (byte)'U': Push(Encoding.Latin1.GetString(ReadBytes(ReadByte()))); break;             // SHORT_BINSTRING
            case (byte)'B': Push(ReadBytes(ReadLength32()).ToArray()); break;                          // BINBYTES
            case (byte)'C': Push(ReadBytes(ReadByte()).ToArray()); break;                              // SHORT_BINBYTES
            case 0x8e: Push(ReadBytes(ReadLength64()).ToArray()); break;                               // BINBYTES8
            case 0x96: Push(ReadBytes(ReadLength64()).ToArray()); break;                               // BYTEARRAY8
            case (byte)'S': Push(ParseQuotedString(ReadLine())); break;                                // STRING (text)
            case (byte)'V': Push(RawUnicodeEscape(ReadLine())); break;                                 // UNICODE (text)
            // ---- tuples
            case (byte)')': Push(Array.Empty<object?>()); break;                                      // EMPTY_TUPLE
            case (byte)'t': Push(PopMark().ToArray()); break;                                          // TUPLE
            case 0x85: { var a = Pop(); Push(new[] { a }); break; }                                    // TUPLE1
            case 0x86: { var b = Pop(); var a = Pop(); Push(new[] { a, b }); break; }                  // TUPLE2
            case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); Push(new[] { a, b, c }); break; } // TUPLE3
            // ---- lists and sets
            case (byte)']': Push(new List<object?>()); break;                                         // EMPTY_LIST
            case (byte)'l': Push(PopMark()); break;                                                    // LIST
            case (byte)'a': { var v = Pop(); AppendTo(Peek(), [v]); break; }                           // APPEND
            case (byte)'e': { var items = PopMark(); AppendTo(Peek(), items); break; }                 // APPENDS
            case 0x8f: Push(new List<object?>()); break;                                               // EMPTY_SET
            case 0x90: { var items = PopMark(); AppendTo(Peek(), items); break; }                      // ADDITEMS
            case 0x91: Push(PopMark()); break;                                                          // FROZENSET
            // ---- dicts
            case (byte)'}': Push(new PickleDict()); break;                                             // EMPTY_DICT
            case (byte)'d':                                                                            // DICT
            {
                var items = PopMark();
                var d = new PickleDict();
                SetItems(d, items);
                Push(d);
                break;
            }
            case (byte)'s': { var v = Pop(); var k = Pop(); SetItems(Peek(), [k, v]); break; }         // SETITEM
            case (byte)'u': { var items = PopMark(); SetItems(Peek(), items); break; }                 // SETITEMS
            // ---- memo
            case (byte)'q': _memo[ReadByte()] = Peek(); break;                                         // BINPUT
            case (byte)'r': _memo[BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4))] = Peek(); break; // LONG_BINPUT
            case (byte)'p': _memo[long.Parse(ReadLine(), CultureInfo.InvariantCulture)] = Peek(); break;  // PUT
            case 0x94: _memo[_memo.Count] = Peek(); break;                                              // MEMOIZE
            case (byte)'h': Push(GetMemo(ReadByte())); break;                                          // BINGET
            case (byte)'j': Push(GetMemo(BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4)))); break; // LONG_BINGET
            case (byte)'g': Push(GetMemo(long.Parse(ReadLine(), CultureInfo.InvariantCulture))); break;  // GET
            // ---- globals and calls
            case (byte)'c':                                                                            // GLOBAL
            {
                string module = ReadLine();
                string name = ReadLine();
                Push(new PickleGlobal(module, name));
                break;
            }
            case 0x93:                                                                                 // STACK_GLOBAL
            {
                var name = Pop() as string ?? throw Bad("STACK_GLOBAL name is not a string");
                var module = Pop() as string ?? throw Bad("STACK_GLOBAL module is not a string");
                Push(new PickleGlobal(module, name));
                break;
            }
            case (byte)'R':                                                                            // REDUCE
            {
                var args = Pop() as object?[] ?? throw Bad("REDUCE arguments are not a tuple");
                var callable = Pop();
                Push(Call(callable, args));
                break;
            }
            case 0x81:                                                                                 // NEWOBJ
            {
                var args = Pop() as object?[] ?? throw Bad("NEWOBJ arguments are not a tuple");
                var cls = Pop();
                Push(Call(cls, args));
                break;
            }
            case 0x92:                                                                                 // NEWOBJ_EX
            {
                Pop(); // kwargs
                var args = Pop() as object?[] ?? throw Bad("NEWOBJ_EX arguments are not a tuple");
                var cls = Pop();
                Push(Call(cls, args));
                break;
            }
            case (byte)'b':                                                                            // BUILD
            {
                var state = Pop();
                switch (Peek())
                {
                    case PickleDict d: d.State = state; break;
                    case PickleOpaque o: o.State = state; break;
                    default: break; // state of values we represent natively (e.g. tensors) is not needed
                }
                break;
            }
            // ---- persistent ids
            case (byte)'Q': Push(LoadPersistent(Pop())); break;                                        // BINPERSID
            case (byte)'P': Push(LoadPersistent(ReadLine())); break;                                   // PERSID
            case (byte)'i':                                                                            // INST (protocol 0)
            {
                var g = new PickleGlobal(ReadLine(), ReadLine());
                Push(Call(g, PopMark().ToArray()));
                break;
            }
            case (byte)'o':                                                                            // OBJ (protocol 0/1)
            {
                var items = PopMark();
                if (items.Count == 0) throw Bad("OBJ without a class");
                Push(Call(items[0], items.Skip(1).ToArray()));
                break;
            }
            default:
                throw Bad($"unsupported pickle opcode 0x{op:x2}");
        }
    }

    private object? LoadPersistent(object? pid)
    {
        if (PersistentLoad == null) throw Bad("persistent id found but no persistent loader is set");
        return PersistentLoad(pid);
    }

    private object? Call(object? callable, object?[] args)
    {
        if (callable is not PickleGlobal g)
            throw Bad($"call of a non-global ({Describe(callable)})");
        if (Reduce != null && Reduce(g, args, out var handled)) return handled;
        switch (g.FullName)
        {
            case "collections.OrderedDict":
            case "builtins.dict":
            case "__builtin__.dict":
            {
                var d = new PickleDict();
                if (args.Length > 0 && args[0] is IEnumerable<object?> pairs)
                    foreach (var p in pairs)
                        if (p is object?[] { Length: 2 } kv) d.Set(kv[0], kv[1]);
                return d;
            }
            case "builtins.list":
            case "builtins.set":
            case "builtins.frozenset":
            case "__builtin__.set":
                return args.Length > 0 && args[0] is IEnumerable<object?> items ? items.ToList() : new List<object?>();
            case "builtins.tuple":
                return args.Length > 0 && args[0] is IEnumerable<object?> t ? t.ToArray() : Array.Empty<object?>();
            case "torch.Size":
                return args.Length > 0 ? args[0] : Array.Empty<object?>();
            case "_codecs.encode":
                // protocol 2 writes bytes as _codecs.encode(text, 'latin1')
                if (args.Length >= 1 && args[0] is string s) return Encoding.Latin1.GetBytes(s);
                break;
        }
        return new PickleOpaque(g, args);
    }

    private static void AppendTo(object? target, List<object?> items)
    {
        switch (target)
        {
            case List<object?> list: list.AddRange(items); break;
            case PickleOpaque o: o.ListItems.AddRange(items); break;
            default: throw new Sam3CheckpointException($"APPEND to a {Describe(target)}");
        }
    }

    private static void SetItems(object? target, List<object?> items)
    {
        if (items.Count % 2 != 0) throw new Sam3CheckpointException("SETITEMS with an odd number of items");
        var dict = target switch
        {
            PickleDict d => d,
            PickleOpaque o => o.DictItems,
            _ => throw new Sam3CheckpointException($"SETITEM on a {Describe(target)}"),
        };
        for (int i = 0; i < items.Count; i += 2) dict.Set(items[i], items[i + 1]);
    }

    internal static string Describe(object? v) => v switch
    {
        null => "None",
        string s => $"str '{s}'",
        object?[] t => $"tuple of {t.Length}",
        List<object?> l => $"list of {l.Count}",
        PickleDict d => $"dict of {d.Count}",
        _ => v.ToString() ?? v.GetType().Name,
    };

    // ---------------------------------------------------------------- stack helpers
    private void Push(object? v) => _stack.Add(v);

    private object? Pop()
    {
        if (_stack.Count == 0) throw Bad("stack underflow");
        var v = _stack[^1];
        _stack.RemoveAt(_stack.Count - 1);
        return v;
    }

    private object? Peek()
    {
        if (_stack.Count == 0) throw Bad("stack underflow");
        return _stack[^1];
    }

    private List<object?> PopMark()
    {
        if (_metastack.Count == 0) throw Bad("MARK missing");
        var items = new List<object?>(_stack);
        _stack.Clear();
        _stack.AddRange(_metastack.Pop());
        return items;
    }

    private object? GetMemo(long key) =>
        _memo.TryGetValue(key, out var v) ? v : throw Bad($"memo key {key} was never stored");

    // ---------------------------------------------------------------- byte helpers
    private byte ReadByte()
    {
        if (_pos >= _data.Length) throw Bad("unexpected end of pickle data (truncated?)");
        return _data[_pos++];
    }

    private ReadOnlySpan<byte> ReadBytes(long n)
    {
        if (n < 0 || n > _data.Length - _pos) throw Bad($"unexpected end of pickle data: {n} bytes needed, {_data.Length - _pos} left (truncated?)");
        var span = _data.AsSpan(_pos, (int)n);
        _pos += (int)n;
        return span;
    }

    private int ReadLength32()
    {
        uint n = BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4));
        if (n > int.MaxValue) throw Bad($"length {n} too large");
        return (int)n;
    }

    private long ReadLength64()
    {
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(ReadBytes(8));
        if (n > int.MaxValue) throw Bad($"length {n} too large");
        return (long)n;
    }

    private string ReadLine()
    {
        int end = Array.IndexOf(_data, (byte)'\n', _pos);
        if (end < 0) throw Bad("unterminated text field (truncated?)");
        string s = Encoding.Latin1.GetString(_data, _pos, end - _pos);
        _pos = end + 1;
        return s;
    }

    private static string Utf8(ReadOnlySpan<byte> b) => new UTF8Encoding(false, true).GetString(b);

    private static object DecodeLong(ReadOnlySpan<byte> b)
    {
        if (b.Length == 0) return 0L;
        if (b.Length <= 8)
        {
            long v = 0;
            for (int i = b.Length - 1; i >= 0; i--) v = (v << 8) | b[i];
            int shift = 64 - 8 * b.Length;
            return shift == 0 ? v : (v << shift) >> shift; // sign-extend two's complement
        }
        var big = new BigInteger(b, isUnsigned: false, isBigEndian: false);
        return big >= long.MinValue && big <= long.MaxValue ? (long)big : big;
    }

    private static object ParseInteger(string s)
    {
        if (long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long v)) return v;
        return BigInteger.Parse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
    }

    private static string ParseQuotedString(string s)
    {
        if (s.Length >= 2 && (s[0] == '\'' || s[0] == '"') && s[^1] == s[0]) s = s[1..^1];
        return s.Contains('\\') ? System.Text.RegularExpressions.Regex.Unescape(s) : s;
    }

    private static string RawUnicodeEscape(string s) =>
        s.Contains("\\u") || s.Contains("\\U") ? System.Text.RegularExpressions.Regex.Unescape(s) : s;

    private Sam3CheckpointException Bad(string what) => new(what);
}
