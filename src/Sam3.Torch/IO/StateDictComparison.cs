using System.Text;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// Comparison of a (mapped) checkpoint key set against the keys, shapes and dtypes a model expects: missing,
/// unexpected, wrongly shaped and wrongly typed keys, plus the complex buffers (<c>*.freqs_cis</c>) that are handed to
/// the model for verification instead of being loaded.
/// </summary>
internal sealed class StateDictComparison
{
    internal sealed record ShapeMismatch(string Key, string SourceKey, long[] CheckpointShape, long[] ExpectedShape, string Note = "");
    internal sealed record DTypeMismatch(string Key, string SourceKey, ScalarType CheckpointDType, ScalarType ExpectedDType);

    /// <summary>Expected entries the checkpoint does not provide.</summary>
    public List<ExpectedTensor> Missing { get; } = new();
    /// <summary>Checkpoint entries (after mapping) the model does not expect.</summary>
    public List<KeyMapping> Unexpected { get; } = new();
    public List<ShapeMismatch> WrongShape { get; } = new();
    public List<DTypeMismatch> WrongDType { get; } = new();
    /// <summary>Entries to load (in the expected list's order).</summary>
    public List<(KeyMapping Map, ExpectedTensor Expected)> Matched { get; } = new();
    /// <summary>Complex buffers of the checkpoint (verified by the model, not loaded into it).</summary>
    public List<KeyMapping> ComplexBuffers { get; } = new();
    /// <summary>Unexpected entries that the caller allowed to be unused.</summary>
    public List<KeyMapping> Ignored { get; } = new();

    public bool IsMatch => Missing.Count == 0 && Unexpected.Count == 0 && WrongShape.Count == 0 && WrongDType.Count == 0;

    /// <summary>Default complex-buffer rule: the ViT RoPE tables, <c>*.freqs_cis</c>.</summary>
    public static bool IsFreqsCis(string key) => key == "freqs_cis" || key.EndsWith(".freqs_cis", StringComparison.Ordinal);

    /// <summary>Compares; never throws for mismatches (see <see cref="ToException"/>).</summary>
    /// <param name="info">Shape/dtype of a checkpoint (source) key.</param>
    /// <param name="mapping">Checkpoint key → model key pairs (only mapped checkpoint keys take part).</param>
    /// <param name="expected">The model's entries.</param>
    /// <param name="ignoreUnexpected">Model-side keys that may be present in the checkpoint but unused.</param>
    /// <param name="isComplexBuffer">Model-side keys handled as complex buffers (default <see cref="IsFreqsCis"/>).</param>
    public static StateDictComparison Compare(Func<string, CheckpointTensorInfo> info, IReadOnlyList<KeyMapping> mapping,
        IReadOnlyList<ExpectedTensor> expected, Func<string, bool>? ignoreUnexpected = null, Func<string, bool>? isComplexBuffer = null)
    {
        isComplexBuffer ??= IsFreqsCis;
        var result = new StateDictComparison();
        var expectedByKey = new Dictionary<string, ExpectedTensor>(StringComparer.Ordinal);
        foreach (var e in expected)
            if (!expectedByKey.TryAdd(e.Key, e)) throw new Sam3CheckpointException($"expected key '{e.Key}' is listed twice");
        var provided = new Dictionary<string, KeyMapping>(StringComparer.Ordinal);
        foreach (var m in mapping) provided[m.Target] = m;

        foreach (var m in mapping)
        {
            if (!ReferenceEquals(provided[m.Target], m)) continue; // a later source won this target (dict semantics)
            var ci = info(m.Source);
            expectedByKey.TryGetValue(m.Target, out var exp);
            if (ci.ComplexAsReal || isComplexBuffer(m.Target))
            {
                bool looksComplex = ci.ComplexAsReal || (CheckpointDTypes.IsFloating(ci.DType) && ci.Shape.Length > 0 && ci.Shape[^1] == 2);
                if (!looksComplex)
                {
                    result.WrongShape.Add(new ShapeMismatch(m.Target, m.Source, ci.Shape, exp?.Shape ?? [], "expected a complex table (complex64, or float [..., 2] view_as_real)"));
                    continue;
                }
                if (exp != null)
                {
                    long[] logical = ci.Shape[..^1];
                    bool ok = CheckpointDTypes.IsComplex(exp.DType) ? logical.SequenceEqual(exp.Shape) : ci.Shape.SequenceEqual(exp.Shape);
                    if (!ok)
                    {
                        result.WrongShape.Add(new ShapeMismatch(m.Target, m.Source, CheckpointDTypes.IsComplex(exp.DType) ? logical : ci.Shape, exp.Shape, "complex buffer"));
                        continue;
                    }
                }
                result.ComplexBuffers.Add(m);
                continue;
            }
            if (exp == null)
            {
                if (ignoreUnexpected != null && ignoreUnexpected(m.Target)) result.Ignored.Add(m);
                else result.Unexpected.Add(m);
                continue;
            }
            if (!ci.Shape.SequenceEqual(exp.Shape))
            {
                result.WrongShape.Add(new ShapeMismatch(m.Target, m.Source, ci.Shape, exp.Shape));
                continue;
            }
            if (CheckpointDTypes.IsFloating(ci.DType) != CheckpointDTypes.IsFloating(exp.DType) || CheckpointDTypes.IsComplex(exp.DType))
            {
                result.WrongDType.Add(new DTypeMismatch(m.Target, m.Source, ci.DType, exp.DType));
                continue;
            }
        }
        foreach (var e in expected)
        {
            if (!provided.TryGetValue(e.Key, out var m)) { result.Missing.Add(e); continue; }
            if (result.ComplexBuffers.Contains(m)) continue;
            bool bad = result.WrongShape.Any(w => w.Key == e.Key) || result.WrongDType.Any(w => w.Key == e.Key);
            if (!bad) result.Matched.Add((m, e));
        }
        return result;
    }

    /// <summary>A multi-line report listing every problem (each kind capped at <paramref name="cap"/> lines with a count).</summary>
    public string Describe(string source, int cap = 50)
    {
        var sb = new StringBuilder();
        sb.Append($"checkpoint {source} does not match the model: {Missing.Count} missing, {Unexpected.Count} unexpected, " +
                  $"{WrongShape.Count} wrongly shaped, {WrongDType.Count} wrongly typed key(s)");
        void Section<T>(string title, IReadOnlyList<T> items, Func<T, string> line)
        {
            if (items.Count == 0) return;
            sb.Append($"\n{title} ({items.Count}):");
            foreach (var it in items.Take(cap)) sb.Append("\n  ").Append(line(it));
            if (items.Count > cap) sb.Append($"\n  ... and {items.Count - cap} more");
        }
        static string Shape(long[] s) => $"[{string.Join(", ", s)}]";
        static string From(string key, string source) => key == source ? "" : $" (checkpoint key '{source}')";
        Section("missing keys", Missing, e => e.ToString());
        Section("unexpected keys", Unexpected, m => m.Target + From(m.Target, m.Source));
        Section("wrongly shaped keys", WrongShape, w => $"{w.Key}{From(w.Key, w.SourceKey)}: checkpoint {Shape(w.CheckpointShape)}, model {Shape(w.ExpectedShape)}" + (w.Note.Length > 0 ? $" ({w.Note})" : ""));
        Section("wrongly typed keys", WrongDType, w => $"{w.Key}{From(w.Key, w.SourceKey)}: checkpoint {CheckpointDTypes.ToPythonName(w.CheckpointDType)}, model {CheckpointDTypes.ToPythonName(w.ExpectedDType)}");
        return sb.ToString();
    }

    public Sam3CheckpointMismatchException ToException(string source, int cap = 50) =>
        new(Describe(source, cap), Missing.Select(e => e.Key).ToList(), Unexpected.Select(m => m.Target).ToList(),
            WrongShape.Select(w => w.Key).ToList(), WrongDType.Select(w => w.Key).ToList());
}
