using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// One entry of a model's state dict as a loader expects it: key, shape and dtype (complex buffers keep their
/// complex dtype and logical shape, e.g. <c>freqs_cis</c> complex64 [576, 32]), and whether it is a buffer.
/// </summary>
internal sealed record ExpectedTensor(string Key, long[] Shape, ScalarType DType, bool IsBuffer = false)
{
    public long NumElements => Shape.Aggregate(1L, (a, b) => checked(a * b));

    /// <summary>
    /// The expected list of a TorchSharp module: its <c>state_dict()</c> entries in order, buffers flagged
    /// (a key is a buffer when <c>named_buffers()</c> lists it).
    /// </summary>
    public static IReadOnlyList<ExpectedTensor> FromModule(TorchSharp.torch.nn.Module module)
    {
        var buffers = new HashSet<string>(module.named_buffers().Select(b => b.name), StringComparer.Ordinal);
        return module.state_dict().Select(kv => new ExpectedTensor(kv.Key, kv.Value.shape, kv.Value.dtype, buffers.Contains(kv.Key))).ToList();
    }

    public override string ToString() => $"{Key} [{string.Join(", ", Shape)}] {CheckpointDTypes.ToPythonName(DType)}";
}
