using static TorchSharp.torch;

namespace Sam3.Torch.Training.Losses;

/// <summary>
/// An ordered loss dict (name → 0-d tensor), in the insertion order of upstream's Python dicts. Weighted terms and
/// logged metrics alike; the weighted sum is kept separately as the core loss.
/// </summary>
internal sealed class LossValues
{
    private readonly List<KeyValuePair<string, Tensor>> _items = [];
    private readonly Dictionary<string, int> _index = [];

    public IReadOnlyList<KeyValuePair<string, Tensor>> Items => _items;
    public IEnumerable<string> Keys => _items.Select(p => p.Key);
    public int Count => _items.Count;
    public bool Contains(string key) => _index.ContainsKey(key);

    public Tensor this[string key]
    {
        get => _index.TryGetValue(key, out int i) ? _items[i].Value : throw new KeyNotFoundException($"no loss entry '{key}'");
        set
        {
            if (_index.TryGetValue(key, out int i)) _items[i] = new(key, value);
            else { _index[key] = _items.Count; _items.Add(new(key, value)); }
        }
    }

    /// <summary>Adds every entry of <paramref name="other"/> with <paramref name="suffix"/> appended to its name.</summary>
    public void AddAll(LossValues other, string suffix = "")
    {
        foreach (var (k, v) in other._items)
        {
            if (_index.ContainsKey(k + suffix)) throw new InvalidOperationException($"duplicate loss entry '{k + suffix}'");
            this[k + suffix] = v;
        }
    }

    /// <summary>Moves every tensor out of the current dispose scope.</summary>
    public LossValues MoveToOuterDisposeScope()
    {
        foreach (var (_, v) in _items) v.MoveToOuterDisposeScope();
        return this;
    }
}
