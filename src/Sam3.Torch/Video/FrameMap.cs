namespace Sam3.Torch.Video;

/// <summary>
/// Per-frame values of a video session (upstream's per-frame lists such as <c>has_outputs</c>), stored sparsely so that a
/// live stream of unknown length costs only the frames that hold a non-default value; frames a stream has left behind
/// are forgotten with <see cref="RemoveBefore"/>.
/// </summary>
internal sealed class FrameMap<T>
{
    private readonly SortedDictionary<int, T> _values = new();

    public T? this[int frame]
    {
        get => _values.TryGetValue(frame, out var v) ? v : default;
        set
        {
            if (value is null || EqualityComparer<T>.Default.Equals(value, default!)) _values.Remove(frame);
            else _values[frame] = value;
        }
    }

    /// <summary>Frames holding a non-default value, ascending.</summary>
    public IEnumerable<int> Frames => _values.Keys;

    /// <summary>Number of frames holding a non-default value.</summary>
    public int Count => _values.Count;

    /// <summary>The first frame holding a non-default value, or −1 (<c>list.index(True)</c>).</summary>
    public int First() => _values.Count == 0 ? -1 : _values.Keys.First();

    public void Clear() => _values.Clear();

    /// <summary>Forgets the frames before <paramref name="frame"/>, handing each value dropped to <paramref name="onRemoved"/>.</summary>
    public void RemoveBefore(int frame, Action<T>? onRemoved = null)
    {
        while (_values.Count > 0)
        {
            int k = _values.Keys.First();
            if (k >= frame) break;
            if (_values.Remove(k, out var v)) onRemoved?.Invoke(v);
        }
    }
}
