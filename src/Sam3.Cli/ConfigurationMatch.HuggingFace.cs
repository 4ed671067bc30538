using Sam3.Torch.Loading;
using System.Globalization;
using Sam3.Torch;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using static TorchSharp.torch;

namespace Sam3.Cli;

internal sealed partial class ConfigurationMatch
{
    /// <summary>Extra report lines for a Hugging Face-layout checkpoint (prediction check, absent pieces).</summary>
    public List<string> HuggingFaceLines { get; } = new();

    /// <summary>
    /// A released-layout file without any of the detector point projections (converted from the HF layout): the loader
    /// accepts it with detector point prompts disabled, so they are reported as a note, not as missing keys.
    /// </summary>
    private void ExcuseAbsentPointProjections()
    {
        if (Comparison is not { } c) return;
        var points = c.Missing.Where(e => e.Key.StartsWith("geometry_encoder.points_", StringComparison.Ordinal)).ToList();
        if (points.Count == 0 || c.Matched.Any(m => m.Expected.Key.StartsWith("geometry_encoder.points_", StringComparison.Ordinal))
            || c.WrongShape.Any(w => w.Key.StartsWith("geometry_encoder.points_", StringComparison.Ordinal))) return;
        foreach (var p in points) c.Missing.Remove(p);
        HuggingFaceLines.Add($"note:       no detector point projections ({points.Count} tensors, e.g. converted from the Hugging Face layout): " +
                             "loads with detector point prompts unavailable (boxes, text and interactive points work)");
    }

    /// <summary>
    /// The HF layout: read through <see cref="HuggingFaceCheckpoint"/> as the loader reads it (the six detector point
    /// projections may be absent, the RoPE tables are recomputed), and the file's key/shape list compared with the one
    /// predicted for the configuration (<see cref="HuggingFaceLayout.PlanToHf"/> of its released key list).
    /// </summary>
    private static ConfigurationMatch CheckHuggingFace(ICheckpoint checkpoint, Sam3Config cfg)
    {
        var inv = CultureInfo.InvariantCulture;
        using var model = OnMeta(() => Sam3ModelLoader.Build(cfg, enableInstInteractivity: true));
        var all = ExpectedTensor.FromModule(model);
        HuggingFaceCheckpoint view;
        try
        {
            view = new HuggingFaceCheckpoint(checkpoint);
        }
        catch (Sam3CheckpointException e)
        {
            return new ConfigurationMatch { LayoutProblem = e.Message, ExpectedCount = all.Count };
        }
        using (view)
        {
            var mapping = StateDictMapper.ReleasedToImageModel(view.Names, enableInstInteractivity: true);
            var pointKeys = all.Where(e => e.Key.StartsWith("geometry_encoder.points_", StringComparison.Ordinal)).Select(e => e.Key).ToHashSet();
            bool pointsProvided = mapping.Any(m => pointKeys.Contains(m.Target));
            var expected = pointsProvided ? all : all.Where(e => !pointKeys.Contains(e.Key)).ToList();
            var tables = model.backbone.vision_backbone.trunk.FreqsCisAsReal(CPU).Select(t => { using (t.table) return (t.key, t.table.shape); }).ToList();
            var result = new ConfigurationMatch { Comparison = StateDictComparison.Compare(view.Info, mapping, expected), ExpectedCount = all.Count + tables.Count };

            var predicted = HuggingFaceLayout.PlanToHf(HuggingFaceLayout.ReleasedKeys(all, tables));
            var file = checkpoint.Names.ToDictionary(n => n, n => checkpoint.Info(n).Shape, StringComparer.Ordinal);
            long fileElements = file.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b));
            var absent = predicted.Tensors.Where(t => !file.ContainsKey(t.HfKey)).Select(t => t.HfKey).ToList();
            var extra = file.Keys.Except(predicted.Tensors.Select(t => t.HfKey)).ToList();
            var reshaped = predicted.Tensors.Where(t => file.TryGetValue(t.HfKey, out var s) && !s.SequenceEqual(t.Shape)).Select(t => t.HfKey).ToList();
            bool same = absent.Count == 0 && extra.Count == 0 && reshaped.Count == 0;
            result.HuggingFaceLines.Add(string.Format(inv, "hf check:   predicted for this configuration {0:N0} tensors, {1:N0} elements; the file has {2:N0}, {3:N0}: {4}",
                predicted.Tensors.Count, predicted.NumElements, file.Count, fileElements,
                same ? "same keys and shapes" : $"DIFFERENT ({absent.Count} absent, {extra.Count} extra, {reshaped.Count} reshaped; e.g. {absent.Concat(extra).Concat(reshaped).First()})"));
            if (!pointsProvided && pointKeys.Count > 0)
                result.HuggingFaceLines.Add("note:       no detector point projections in this layout: detector point prompts unavailable (boxes, text and interactive points work)");
            result.HuggingFaceLines.Add("note:       ViT RoPE tables not stored (recomputed); pos_embed class row not stored (unused)");
            foreach (var d in view.DuplicateDisagreements()) result.HuggingFaceLines.Add("note:       " + d);
            return result;
        }
    }
}
