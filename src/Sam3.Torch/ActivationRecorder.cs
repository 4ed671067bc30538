using static TorchSharp.torch;

namespace Sam3.Torch;

/// <summary>
/// Captures named intermediate tensors of a <see cref="Sam3Model"/>'s calls (create it with
/// <see cref="Sam3Model.Record(Func{string, bool}?)"/>; dispose it to stop recording and free what it kept). Names are
/// those of the parity fixtures, e.g. <c>backbone.vit.block3</c>, <c>enc.layer0</c>, <c>dec.layer2.out</c>,
/// <c>grounding.out.pred_logits</c>, <c>sam.mask_decoder.0</c>; a name produced again gets a suffix <c>#2</c>, <c>#3</c>, ...
/// Only calls made on the async flow that created it (and tasks that flow starts) are recorded, so a recorder sees one
/// caller's work even when unrelated callers share the model.
/// </summary>
public sealed class ActivationRecorder : IDisposable
{
    private readonly Sam3Model _model;
    private readonly Func<string, bool>? _filter;
    private readonly Action<string, Tensor>? _observer;
    private readonly Dictionary<string, Tensor> _captured = new(StringComparer.Ordinal);
    private readonly List<string> _names = new();
    private readonly Dictionary<string, int> _repeats = new(StringComparer.Ordinal);
    private bool _disposed;

    internal ActivationRecorder(Sam3Model model, Func<string, bool>? filter, Action<string, Tensor>? observer)
    {
        _model = model;
        _filter = filter;
        _observer = observer;
    }

    internal ActivationRecorder? Previous { get; set; }
    internal bool IsActive => !_disposed;

    /// <summary>Names recorded so far, in the order they were produced.</summary>
    public IReadOnlyList<string> Names => _names;

    /// <summary>A kept tensor (CPU copy, owned by the recorder: valid until it is disposed).</summary>
    /// <exception cref="KeyNotFoundException">Nothing of that name was recorded.</exception>
    public Tensor this[string name]
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _captured.TryGetValue(name, out var t) ? t
                : throw new KeyNotFoundException($"no tensor named '{name}' was recorded (recorded: {_names.Count})");
        }
    }

    /// <summary>Whether a tensor of that name was kept.</summary>
    public bool Contains(string name) => _captured.ContainsKey(name);

    internal void Offer(string name, Tensor tensor)
    {
        if (_disposed) return;
        int k = _repeats.TryGetValue(name, out var c) ? c + 1 : 1;
        _repeats[name] = k;
        string key = k == 1 ? name : $"{name}#{k}";
        if (_filter is not null && !_filter(key)) return;
        _names.Add(key);
        if (_observer is not null)
        {
            _observer(key, tensor);
            return;
        }
        using var scope = NewDisposeScope();
        var copy = tensor.detach().cpu().clone();
        _captured[key] = copy.DetachFromDisposeScope();
    }

    /// <summary>Stops recording and frees the kept tensors.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _model.Detach(this);
        foreach (var t in _captured.Values) t.Dispose();
        _captured.Clear();
    }
}
