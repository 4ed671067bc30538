using System.Text;

namespace Sam3.Torch.IO;

/// <summary>Counts describing a checkpoint or a manifest.</summary>
/// <param name="KeyCount">Number of tensors.</param>
/// <param name="ParameterKeyCount">Tensors that are parameters (not buffers).</param>
/// <param name="ParameterCount">Elements of the parameters (complex tensors count one per complex element).</param>
/// <param name="BufferKeyCount">Tensors that are buffers.</param>
/// <param name="BufferElementCount">Elements of the buffers.</param>
/// <param name="TotalBytes">Bytes of tensor data.</param>
/// <param name="DTypeHistogram">Logical dtype name (complex-as-real tensors count as complex64) → (tensors, elements).</param>
/// <param name="Layout">Key layout.</param>
internal sealed record CheckpointSummary(int KeyCount, int ParameterKeyCount, long ParameterCount, int BufferKeyCount, long BufferElementCount,
    long TotalBytes, IReadOnlyDictionary<string, (int Keys, long Elements)> DTypeHistogram, CheckpointLayout Layout)
{
    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"layout: {Layout}");
        sb.AppendLine($"keys: {KeyCount:N0} ({ParameterKeyCount:N0} parameters, {BufferKeyCount:N0} buffers)");
        sb.AppendLine($"parameters: {ParameterCount:N0} elements; buffers: {BufferElementCount:N0} elements; data: {TotalBytes:N0} bytes");
        foreach (var (dtype, (keys, elements)) in DTypeHistogram.OrderByDescending(kv => kv.Value.Elements))
            sb.AppendLine($"  {dtype,-10} {keys,6:N0} tensors {elements,16:N0} elements");
        return sb.ToString().TrimEnd();
    }
}

/// <summary>
/// Inspection of checkpoints: counts (keys, parameters without buffers, dtype histogram), comparison with an expected
/// key/shape list, and conversion to safetensors.
/// </summary>
internal static class CheckpointInspector
{
    /// <summary>
    /// The persistent buffers of SAM3's state dicts (guide §1.1, <c>sam3-state-dict-video.tsv</c>: 33 of 1,465 keys):
    /// the ViT RoPE tables <c>*.attn.freqs_cis</c> and the prompt encoder's random Fourier matrix
    /// <c>*.pe_layer.positional_encoding_gaussian_matrix</c>. Excluding exactly these gives 860,055,224 parameters.
    /// </summary>
    public static bool IsKnownBuffer(string key) =>
        StateDictComparison.IsFreqsCis(key) || key.EndsWith("pe_layer.positional_encoding_gaussian_matrix", StringComparison.Ordinal);

    public static CheckpointSummary Summarize(ICheckpoint checkpoint, Func<string, bool>? isBuffer = null) =>
        Summarize(checkpoint.Names.Select(n =>
        {
            var i = checkpoint.Info(n);
            return (n, i.LogicalShape, i.ComplexAsReal ? (i.DType == TorchSharp.torch.ScalarType.Float64 ? "complex128" : "complex64") : CheckpointDTypes.ToPythonName(i.DType), i.ByteSize);
        }), isBuffer);

    /// <summary>Counts for a manifest (e.g. to check the key and parameter counts without the checkpoint).</summary>
    public static CheckpointSummary Summarize(IEnumerable<ExpectedTensor> entries, Func<string, bool>? isBuffer = null) =>
        Summarize(entries.Select(e => (e.Key, e.Shape, CheckpointDTypes.ToPythonName(e.DType), e.NumElements * CheckpointDTypes.ElementSize(e.DType))), isBuffer);

    private static CheckpointSummary Summarize(IEnumerable<(string key, long[] shape, string dtype, long bytes)> entries, Func<string, bool>? isBuffer)
    {
        isBuffer ??= IsKnownBuffer;
        int keys = 0, paramKeys = 0, bufferKeys = 0;
        long parameters = 0, bufferElements = 0, bytes = 0;
        var hist = new Dictionary<string, (int, long)>();
        var names = new List<string>();
        foreach (var (key, shape, dtype, b) in entries)
        {
            long n = shape.Aggregate(1L, (x, y) => checked(x * y));
            keys++;
            bytes += b;
            names.Add(key);
            if (isBuffer(key)) { bufferKeys++; bufferElements += n; }
            else { paramKeys++; parameters += n; }
            hist.TryGetValue(dtype, out var h);
            hist[dtype] = (h.Item1 + 1, h.Item2 + n);
        }
        return new CheckpointSummary(keys, paramKeys, parameters, bufferKeys, bufferElements, bytes, hist, StateDictMapper.DetectLayout(names));
    }

    /// <summary>
    /// Compares a checkpoint with an expected key/shape/dtype list (e.g. a manifest: <see cref="ManifestFile"/>).
    /// Without <paramref name="mapping"/>, keys are compared as they are.
    /// </summary>
    public static StateDictComparison Compare(ICheckpoint checkpoint, IReadOnlyList<ExpectedTensor> expected, IReadOnlyList<KeyMapping>? mapping = null) =>
        StateDictComparison.Compare(checkpoint.Info, mapping ?? StateDictMapper.Identity(checkpoint.Names), expected);

    /// <summary>
    /// Converts any readable checkpoint (.pt or safetensors) into a safetensors file with the same keys, one tensor at a
    /// time. Complex tensors become float32 [..., 2] marked "complex64_as_real"; metadata records "format": "pt" (as the
    /// parity fixtures do) and the key layout.
    /// </summary>
    public static void Convert(string sourcePath, string safetensorsPath, IProgress<(int done, int total, string key)>? progress = null)
    {
        if (Path.GetFullPath(sourcePath) == Path.GetFullPath(safetensorsPath))
            throw new Sam3CheckpointException($"cannot convert {sourcePath} onto itself");
        using var source = CheckpointFile.Open(sourcePath);
        if (source.Names.Count == 0) throw new Sam3CheckpointException($"{sourcePath}: the checkpoint holds no tensors; nothing to convert");
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal) { ["format"] = "pt" };
        if (StateDictMapper.DetectLayout(source.Names) == CheckpointLayout.Released)
            metadata["layout"] = "released sam3.pt checkpoint layout (detector.*, tracker.*)";
        metadata["converted_from"] = Path.GetFileName(sourcePath);
        var items = new List<SafetensorsWriter.Item>();
        foreach (var name in source.Names)
        {
            var info = source.Info(name);
            if (info.ComplexAsReal) metadata[name] = SafetensorsFile.ComplexAsRealTag;
            items.Add(new SafetensorsWriter.Item(name, info.Shape, info.DType, () => source.Load(name)));
        }
        SafetensorsWriter.Write(safetensorsPath, items, metadata, progress);
    }
}
