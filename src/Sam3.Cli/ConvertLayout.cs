using System.Diagnostics;
using System.Globalization;
using Sam3.Torch;
using Sam3.Torch.Config;
using Sam3.Torch.IO;

namespace Sam3.Cli;

/// <summary>
/// <c>sam3 convert IN OUT --layout hf|original</c>: conversion between the original released layout (<c>sam3.pt</c>,
/// <c>detector.*</c>/<c>tracker.*</c>) and the Hugging Face transformers layout (hub <c>model.safetensors</c>), see
/// <see cref="HuggingFaceConverter"/>. HF → original recomputes the ViT RoPE tables from a configuration: <c>--config</c>
/// (full, tiny, a config.json of either schema), else the transformers <c>config.json</c> beside IN. <c>--sidecar</c>
/// names a file of the pieces the HF layout drops (detector point projections, pos_embed class row).
/// </summary>
internal static class ConvertLayout
{

    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>Converts when <paramref name="layout"/> differs from IN's layout; null when it is the same (plain conversion).</summary>
    public static int? Run(string input, string output, string layout, string? config, string? sidecar, TextWriter stdout, TextWriter stderr, bool stderrIsTerminal)
    {
        if (layout is not ("hf" or "original")) throw new UsageException($"--layout expects hf or original, got '{layout}'");
        var watch = Stopwatch.StartNew();
        using var source = CheckpointFile.Open(input);
        var have = StateDictMapper.DetectLayout(source.Names);
        if ((layout == "hf" && have == CheckpointLayout.HuggingFace) || (layout == "original" && have == CheckpointLayout.Released))
        {
            if (config is not null || sidecar is not null) throw new UsageException("--config and --sidecar only apply to a Hugging Face -> original conversion");
            return null;
        }
        var progress = new ConvertProgress(stderr, stderrIsTerminal, new Dictionary<string, long>(), "convert");
        string note;
        try
        {
            if (layout == "hf")
            {
                if (config is not null || sidecar is not null) throw new UsageException("--config and --sidecar only apply to a Hugging Face -> original conversion");
                if (have != CheckpointLayout.Released)
                    throw new Sam3CheckpointException($"{input}: {InspectCommand.LayoutName(have)} layout; only the released layout (detector.*, tracker.*) converts to the Hugging Face layout");
                var plan = HuggingFaceConverter.ToHf(source, output, progress);
                note = string.Format(Inv, "Hugging Face layout: {0:N0} tensors, {1:N0} elements; not stored: {2} original piece(s) (RoPE tables, pos_embed class row, detector point projections)",
                    plan.Tensors.Count, plan.NumElements, plan.Dropped.Count);
            }
            else
            {
                if (have != CheckpointLayout.HuggingFace)
                    throw new Sam3CheckpointException($"{input}: {InspectCommand.LayoutName(have)} layout; only the Hugging Face layout converts to the original layout");
                var cfg = ResolveConfig(config, input, stderr);
                using var side = sidecar is null ? null : CheckpointFile.Open(sidecar);
                var missing = HuggingFaceConverter.ToOriginal(source, cfg, output, side, progress);
                note = missing.Count == 0 ? "original released layout, complete"
                    : $"original released layout without the {missing.Count} detector point-projection tensors (not in the Hugging Face layout; pass --sidecar to supply them): detector point prompts unavailable";
            }
        }
        finally
        {
            progress.Finish();
        }
        stdout.WriteLine(string.Format(Inv, "wrote {0}: {1:N0} bytes, in {2:F1} s (from {3}); {4}", output, new FileInfo(output).Length, watch.Elapsed.TotalSeconds, input, note));
        return 0;
    }

    private static Sam3Config ResolveConfig(string? config, string input, TextWriter stderr)
    {
        string? path = config;
        if (path is null)
        {
            path = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(input))!, HuggingFaceFolder.ConfigFile);
            if (!File.Exists(path)) throw new UsageException($"no config.json beside {input}: pass --config full|tiny|PATH (the RoPE tables are recomputed from it)");
        }
        if (path.ToLowerInvariant() is "full" or "tiny") return Sam3Config.Resolve(path);
        if (!File.Exists(path)) throw new UsageException($"--config {path}: not found");
        if (HuggingFaceConfig.IsHfConfigJson(File.ReadAllText(path)))
        {
            var r = HuggingFaceFolder.LoadConfig(path);
            foreach (var d in r.Differences) stderr.WriteLine("note: " + d);
            return r.Config;
        }
        return Sam3Config.Load(path);
    }
}
