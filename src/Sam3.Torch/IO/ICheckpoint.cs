using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>File formats a checkpoint can have, detected from its first bytes.</summary>
internal enum CheckpointFormat
{
    /// <summary>Not recognised.</summary>
    Unknown,
    /// <summary>safetensors: u64-LE header length followed by a JSON object.</summary>
    Safetensors,
    /// <summary>PyTorch ≥ 1.6 <c>torch.save</c>: a zip archive ("PK\x03\x04") with <c>data.pkl</c> and <c>data/N</c> storages.</summary>
    TorchZip,
    /// <summary>PyTorch's legacy (pre-1.6, <c>_use_new_zipfile_serialization=False</c>) format: a bare pickle stream. Not supported.</summary>
    TorchLegacy,
}

/// <summary>
/// Shape and dtype of one checkpoint tensor as <see cref="ICheckpoint.Load"/> returns it. Complex tensors are exposed
/// as real tensors with a trailing dimension of 2 (<c>view_as_real</c> layout), flagged by <see cref="ComplexAsReal"/>.
/// </summary>
internal sealed record CheckpointTensorInfo(string Name, long[] Shape, ScalarType DType, bool ComplexAsReal)
{
    public long NumElements => Shape.Aggregate(1L, (a, b) => checked(a * b));

    /// <summary>Element count of the original tensor (half of <see cref="NumElements"/> for complex-as-real tensors).</summary>
    public long LogicalNumElements => ComplexAsReal ? NumElements / 2 : NumElements;

    /// <summary>Shape of the original tensor (without the trailing 2 of a complex-as-real tensor).</summary>
    public long[] LogicalShape => ComplexAsReal ? Shape[..^1] : Shape;

    public long ByteSize => NumElements * CheckpointDTypes.ElementSize(DType);
}

/// <summary>
/// A readable checkpoint, whatever its file format: the tensors' names (file order), their shapes and dtypes
/// (no data read), lazy loading of a tensor (memory-mapped where possible), and free-form metadata.
/// Tensors returned by <see cref="Load"/> are CPU tensors owned by the caller (and its dispose scope); memory-mapped
/// views stay valid after the checkpoint is disposed (LibTorch keeps the mapping alive while a view references it).
/// </summary>
internal interface ICheckpoint : IDisposable
{
    string Path { get; }
    CheckpointFormat Format { get; }
    /// <summary>Tensor names in file order.</summary>
    IReadOnlyList<string> Names { get; }
    /// <summary>Format-level metadata (safetensors <c>__metadata__</c>; for .pt files: <c>format</c>, <c>version</c>, <c>byteorder</c>).</summary>
    IReadOnlyDictionary<string, string> Metadata { get; }
    bool Contains(string name);
    /// <summary>Shape and dtype of <paramref name="name"/>; a <see cref="Sam3CheckpointException"/> when absent.</summary>
    CheckpointTensorInfo Info(string name);
    /// <summary>The tensor <paramref name="name"/> (CPU; a memory-mapped view when possible, else read on demand).</summary>
    Tensor Load(string name);
}
