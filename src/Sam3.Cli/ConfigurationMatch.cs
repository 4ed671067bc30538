using Sam3.Torch.Loading;
using Sam3.Torch;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Cli;

/// <summary>
/// Does a checkpoint fit the image model of a configuration, as <see cref="Sam3ModelLoader.LoadImageModel"/> would
/// load it? The model (with the interactive heads) is built on the META device, so nothing is allocated; the
/// checkpoint keys are mapped as the loader maps them (released layout → <see cref="StateDictMapper.ForImageModel"/>,
/// image-model layout → identity) and compared with the model's state dict (<see cref="StateDictComparison"/>).
/// The ViT RoPE tables (<c>*.attn.freqs_cis</c>), which the model recomputes rather than registers, are checked as
/// the loader checks them: every table must be present, with the recomputed shape and values.
/// </summary>
internal sealed partial class ConfigurationMatch
{
    /// <summary>The key comparison (null when the key layout itself is not loadable, see <see cref="LayoutProblem"/>).</summary>
    public StateDictComparison? Comparison { get; private init; }
    /// <summary>Why the checkpoint's keys cannot be mapped at all (Hugging Face or unknown layout).</summary>
    public string? LayoutProblem { get; private init; }
    /// <summary>RoPE tables whose values differ from the recomputed ones (key and max |difference|).</summary>
    public List<(string Key, double MaxDifference)> RopeValueMismatches { get; } = new();
    /// <summary>Tensors the model expects, RoPE tables included.</summary>
    public int ExpectedCount { get; private init; }
    /// <summary>Checkpoint keys the mapping leaves out (released layout: keys containing neither "detector" nor "tracker").</summary>
    public List<string> Unmapped { get; } = new();

    public bool IsMatch => LayoutProblem is null && Comparison is { IsMatch: true } && RopeValueMismatches.Count == 0;

    /// <summary>Largest accepted |checkpoint − recomputed| of a RoPE table: the loader's default.</summary>
    public static double RopeTolerance => new Sam3LoadOptions().FreqsCisTolerance;

    /// <summary>Compares <paramref name="checkpoint"/> with the image model of <paramref name="cfg"/> (interactive heads included).</summary>
    public static ConfigurationMatch Check(ICheckpoint checkpoint, Sam3Config cfg)
    {
        if (StateDictMapper.DetectLayout(checkpoint.Names) == CheckpointLayout.HuggingFace) return CheckHuggingFace(checkpoint, cfg);
        using var model = OnMeta(() => Sam3ModelLoader.Build(cfg, enableInstInteractivity: true));
        var expected = ExpectedTensor.FromModule(model);

        IReadOnlyList<KeyMapping> mapping;
        try
        {
            mapping = StateDictMapper.ForImageModel(checkpoint.Names, enableInstInteractivity: true);
        }
        catch (Sam3CheckpointException e)
        {
            return new ConfigurationMatch { LayoutProblem = e.Message, ExpectedCount = expected.Count };
        }

        var comparison = StateDictComparison.Compare(checkpoint.Info, mapping, expected);
        using var scope = NewDisposeScope();
        const string trunkPrefix = "backbone.vision_backbone.trunk.";
        var tables = model.backbone.vision_backbone.trunk.FreqsCisAsReal(CPU)
            .ToDictionary(t => trunkPrefix + t.key, t => t.table, StringComparer.Ordinal);
        var result = new ConfigurationMatch { Comparison = comparison, ExpectedCount = expected.Count + tables.Count };
        var mappedSources = new HashSet<string>(mapping.Select(m => m.Source), StringComparer.Ordinal);
        result.Unmapped.AddRange(checkpoint.Names.Where(n => !mappedSources.Contains(n)));

        // The RoPE tables: what the loader's VerifyRopeTables checks, reported key by key instead of thrown.
        var provided = new HashSet<string>(StringComparer.Ordinal);
        foreach (var m in comparison.ComplexBuffers.ToList())
        {
            if (!tables.TryGetValue(m.Target, out var mine))
            {
                comparison.ComplexBuffers.Remove(m);
                comparison.Unexpected.Add(m);
                continue;
            }
            var info = checkpoint.Info(m.Source);
            if (!info.Shape.SequenceEqual(mine.shape))
            {
                comparison.ComplexBuffers.Remove(m);
                comparison.WrongShape.Add(new StateDictComparison.ShapeMismatch(m.Target, m.Source, info.Shape[..^1], mine.shape[..^1], "RoPE table, complex"));
                continue;
            }
            provided.Add(m.Target);
            var buffer = new ComplexBuffer(m.Target, m.Source, checkpoint.Load(m.Source));
            double diff = buffer.MaxAbsDifference(mine);
            if (!(diff <= RopeTolerance)) result.RopeValueMismatches.Add((m.Target, diff));
        }
        foreach (var (key, table) in tables)
            if (!provided.Contains(key) && !comparison.WrongShape.Any(w => w.Key == key))
                comparison.Missing.Add(new ExpectedTensor(key, table.shape[..^1], ScalarType.ComplexFloat32, IsBuffer: true));
        result.ExcuseAbsentPointProjections();
        return result;
    }

    /// <summary>Builds on the META device (no memory, no initialisation cost), restoring the previous default device.</summary>
    private static T OnMeta<T>(Func<T> build)
    {
        var previous = torch.get_default_device();
        torch.set_default_device(torch.META);
        try { return build(); }
        finally { torch.set_default_device(previous); }
    }
}
