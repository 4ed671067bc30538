using System.Collections;

namespace Sam3.Torch.IO;

/// <summary>A Python global (<c>module.name</c>) named by a pickle. It is only a name: nothing is ever imported or run.</summary>
internal sealed record PickleGlobal(string Module, string Name)
{
    public string FullName => $"{Module}.{Name}";
    public override string ToString() => FullName;
}

/// <summary>
/// The result of calling (REDUCE / NEWOBJ) a global the reader does not know. It keeps the callable, the arguments
/// and any BUILD state and items, so a caller can report exactly what the file contained.
/// </summary>
internal sealed class PickleOpaque
{
    public PickleOpaque(PickleGlobal callable, object?[] args) { Callable = callable; Args = args; }
    public PickleGlobal Callable { get; }
    public object?[] Args { get; }
    public object? State { get; set; }
    public List<object?> ListItems { get; } = new();
    public PickleDict DictItems { get; } = new();
    public override string ToString() => $"<{Callable.FullName} object>";
}

/// <summary>
/// Insertion-ordered dictionary for unpickled <c>dict</c>/<c>OrderedDict</c>. Keys are compared structurally
/// (strings, integers, floats, tuples as <c>object?[]</c>). A later SETITEM on an existing key replaces the value
/// and keeps the key's first position, as Python does.
/// </summary>
internal sealed class PickleDict : IEnumerable<KeyValuePair<object, object?>>
{
    private readonly List<object> _keys = new();
    private readonly Dictionary<object, object?> _values = new(KeyComparer.Instance);

    /// <summary>Attributes set by a BUILD opcode (e.g. a state_dict's <c>_metadata</c>), or null.</summary>
    public object? State { get; set; }

    public int Count => _keys.Count;
    public IReadOnlyList<object> Keys => _keys;

    public void Set(object? key, object? value)
    {
        if (key is null) key = NoneKey.Instance;
        if (!_values.ContainsKey(key)) _keys.Add(key);
        _values[key] = value;
    }

    public bool TryGetValue(object key, out object? value) => _values.TryGetValue(key, out value);
    public bool ContainsKey(object key) => _values.ContainsKey(key);
    public object? this[object key] => _values[key];

    public IEnumerator<KeyValuePair<object, object?>> GetEnumerator()
    {
        foreach (var k in _keys) yield return new KeyValuePair<object, object?>(k, _values[k]);
    }

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>Python's <c>None</c> used as a dictionary key.</summary>
    internal sealed class NoneKey
    {
        public static readonly NoneKey Instance = new();
        public override string ToString() => "None";
    }

    private sealed class KeyComparer : IEqualityComparer<object>
    {
        public static readonly KeyComparer Instance = new();

        public new bool Equals(object? x, object? y)
        {
            if (x is object?[] a && y is object?[] b)
            {
                if (a.Length != b.Length) return false;
                for (int i = 0; i < a.Length; i++)
                    if (!(a[i] is null ? b[i] is null : b[i] is not null && Equals(a[i], b[i]))) return false;
                return true;
            }
            return object.Equals(x, y);
        }

        public int GetHashCode(object obj)
        {
            if (obj is object?[] a)
            {
                var h = new HashCode();
                foreach (var e in a) h.Add(e is null ? 0 : GetHashCode(e));
                return h.ToHashCode();
            }
            return obj.GetHashCode();
        }
    }
}
