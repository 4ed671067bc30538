using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>Options of <see cref="StrictLoader.Load"/>.</summary>
internal sealed class StrictLoadOptions
{
    /// <summary>Checkpoint key → model key pairs (e.g. <see cref="StateDictMapper.ForImageModel"/>); null = identity.</summary>
    public IReadOnlyList<KeyMapping>? Mapping { get; init; }
    /// <summary>Cast every floating tensor to this dtype (e.g. BFloat16). Complex buffers are never cast.</summary>
    public ScalarType? CastTo { get; init; }
    /// <summary>Cast every tensor whose dtype differs from the expected one to the expected dtype (after <see cref="CastTo"/>).</summary>
    public bool CastToExpectedDType { get; init; }
    /// <summary>Model-side keys that may be in the checkpoint without being used (e.g. <see cref="StateDictMapper.IsSam2NeckKey"/>).</summary>
    public Func<string, bool>? IgnoreUnexpected { get; init; }
    /// <summary>Model-side keys treated as complex buffers (default: <c>*.freqs_cis</c>).</summary>
    public Func<string, bool>? IsComplexBuffer { get; init; }
    /// <summary>Called for each complex buffer (float [..., 2] view) so the model can compare it with its recomputed table.</summary>
    public Action<ComplexBuffer>? OnComplexBuffer { get; init; }
    /// <summary>Progress after each loaded tensor: (done, total, model key).</summary>
    public IProgress<(int done, int total, string key)>? Progress { get; init; }
    /// <summary>Longest list per kind in the error message (all keys are in the exception's properties).</summary>
    public int MaxListedPerKind { get; init; } = 50;
}

/// <summary>
/// Strict checkpoint loading: the checkpoint (after key mapping) must provide exactly the keys the model expects,
/// with the same shapes. Otherwise ONE <see cref="Sam3CheckpointMismatchException"/> lists every missing, unexpected,
/// wrongly shaped and wrongly typed key. The reference image builder loads with <c>strict=False</c> and only prints
/// missing keys; strictness here is deliberate (silently random weights are the worst failure), and
/// <see cref="StrictLoadOptions.IgnoreUnexpected"/> states what may legitimately stay unused.
/// Complex buffers (<c>*.freqs_cis</c>) are not loaded into the model: they are returned in
/// <see cref="LoadedStateDict.ComplexBuffers"/> (and passed to <see cref="StrictLoadOptions.OnComplexBuffer"/>) for
/// verification against the model's recomputed tables.
/// </summary>
internal static class StrictLoader
{
    /// <summary>
    /// Loads <paramref name="checkpoint"/> strictly into <paramref name="module"/>: the expected list is the module's
    /// state dict (<see cref="ExpectedTensor.FromModule"/>), every tensor is copied into the module's parameter or
    /// buffer (dtype converted to the module's) — or, for a module built on <c>meta</c>, adopted as that parameter or
    /// buffer without a copy (<see cref="ParameterAdoption.Adopt"/>) —, and the complex buffers are returned for verification (the caller
    /// disposes them).
    /// </summary>
    public static IReadOnlyList<ComplexBuffer> LoadInto(nn.Module module, ICheckpoint checkpoint, StrictLoadOptions? options = null)
    {
        var expected = ExpectedTensor.FromModule(module);
        using var loaded = Load(checkpoint, expected, options);
        if (ParameterAdoption.HasMetaTensors(module))
        {
            // Built on meta (Sam3ModelLoader): the checkpoint's (memory-mapped) tensors become the parameters, no copy.
            ParameterAdoption.Adopt(module, loaded.Tensors);
        }
        else
        {
            var target = module.state_dict();
            using (torch.no_grad())
            {
                foreach (var (key, t) in loaded.Tensors) target[key].copy_(t);
            }
        }
        // hand the complex buffers over: they must outlive `loaded`
        var buffers = loaded.ComplexBuffers.Select(b => b with { AsReal = b.AsReal.alias().DetachFromDisposeScope() }).ToList();
        return buffers;
    }

    /// <summary>Compares without loading anything.</summary>
    public static StateDictComparison Compare(ICheckpoint checkpoint, IReadOnlyList<ExpectedTensor> expected, StrictLoadOptions? options = null)
    {
        options ??= new StrictLoadOptions();
        var mapping = options.Mapping ?? StateDictMapper.Identity(checkpoint.Names);
        return StateDictComparison.Compare(checkpoint.Info, mapping, expected, options.IgnoreUnexpected, options.IsComplexBuffer);
    }

    /// <summary>
    /// Checks the checkpoint against <paramref name="expected"/> (throwing one exception listing every problem), then
    /// loads the tensors in the expected order.
    /// </summary>
    public static LoadedStateDict Load(ICheckpoint checkpoint, IReadOnlyList<ExpectedTensor> expected, StrictLoadOptions? options = null)
    {
        options ??= new StrictLoadOptions();
        var comparison = Compare(checkpoint, expected, options);
        if (!comparison.IsMatch) throw comparison.ToException(checkpoint.Path, options.MaxListedPerKind);

        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var complex = new List<ComplexBuffer>();
        int total = comparison.Matched.Count + comparison.ComplexBuffers.Count;
        int done = 0;
        try
        {
            foreach (var (map, exp) in comparison.Matched)
            {
                using (var scope = NewDisposeScope())
                {
                    var t = checkpoint.Load(map.Source);
                    if (options.CastTo is { } castTo && CheckpointDTypes.IsFloating(t.dtype) && t.dtype != castTo) t = t.to(castTo);
                    if (options.CastToExpectedDType && t.dtype != exp.DType) t = t.to(exp.DType);
                    t = t.MoveToOuterDisposeScope();
                    t.DetachFromDisposeScope();
                    tensors[map.Target] = t;
                }
                options.Progress?.Report((++done, total, map.Target));
            }
            foreach (var map in comparison.ComplexBuffers)
            {
                Tensor t;
                using (var scope = NewDisposeScope())
                {
                    t = checkpoint.Load(map.Source).MoveToOuterDisposeScope();
                }
                t.DetachFromDisposeScope();
                var buffer = new ComplexBuffer(map.Target, map.Source, t);
                complex.Add(buffer);
                options.OnComplexBuffer?.Invoke(buffer);
                options.Progress?.Report((++done, total, map.Target));
            }
        }
        catch
        {
            foreach (var t in tensors.Values) t.Dispose();
            foreach (var c in complex) c.AsReal.Dispose();
            throw;
        }
        return new LoadedStateDict(tensors, complex, comparison.Ignored.Select(m => m.Target).ToList());
    }
}
