using System.Globalization;
using Sam3.Torch.Config;
using Sam3.Torch.IO;

namespace Sam3.Cli;

/// <summary>
/// <c>sam3 inspect CHECKPOINT [--config full|tiny|PATH]</c>: format, key layout, key and parameter counts (buffers
/// excluded, <see cref="CheckpointInspector.IsKnownBuffer"/>), dtype histogram, and whether the checkpoint fits the
/// image model of the configuration (<see cref="ConfigurationMatch"/>), listing every missing, unexpected and wrongly
/// shaped/typed key (at most <see cref="MaxListedPerKind"/> per kind, with the count). Exit 0 when it fits, 1 when not
/// (the report is still printed, and one line goes to stderr), 2 for usage errors.
/// </summary>
internal static class InspectCommand
{
    public const string Synopsis = "sam3 inspect CHECKPOINT [--config full|tiny|PATH]";
    public const int MaxListedPerKind = 20;
    public const string DefaultConfig = "full";


    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static int Run(CliArgs a, TextWriter stdout, TextWriter stderr)
    {
        if (a.Positional.Count == 0) throw new UsageException($"inspect: missing CHECKPOINT (usage: {Synopsis})");
        if (a.Positional.Count > 1) throw new UsageException($"inspect: unexpected argument '{a.Positional[1]}' (usage: {Synopsis})");
        string path = a.Positional[0];
        InputValidation.RequireFile(path, "CHECKPOINT", "checkpoint"); // empty, folder, device: one clear line
        string configName = a.Value("config") ?? DefaultConfig;
        var cfg = ResolveConfig(configName);

        using var checkpoint = CheckpointFile.Open(path);
        var summary = CheckpointInspector.Summarize(checkpoint);
        stdout.WriteLine($"file:       {path}");
        stdout.WriteLine($"format:     {FormatName(checkpoint.Format)}");
        stdout.WriteLine($"layout:     {LayoutName(summary.Layout)}");
        stdout.WriteLine(string.Format(Inv, "keys:       {0:N0} ({1:N0} parameters, {2:N0} buffers)", summary.KeyCount, summary.ParameterKeyCount, summary.BufferKeyCount));
        stdout.WriteLine(string.Format(Inv, "parameters: {0:N0} (buffers excluded; the buffers hold {1:N0} elements)", summary.ParameterCount, summary.BufferElementCount));
        stdout.WriteLine(string.Format(Inv, "data:       {0:N0} bytes", summary.TotalBytes));
        stdout.WriteLine("dtypes:");
        foreach (var (dtype, (keys, elements)) in summary.DTypeHistogram.OrderByDescending(kv => kv.Value.Elements).ThenBy(kv => kv.Key, StringComparer.Ordinal))
            stdout.WriteLine(string.Format(Inv, "  {0,-12}{1,7:N0} tensors {2,16:N0} elements", dtype, keys, elements));

        var match = ConfigurationMatch.Check(checkpoint, cfg);
        string configLabel = configName.ToLowerInvariant() is "full" or "tiny" ? configName.ToLowerInvariant() : $"{cfg.Name} ({configName})";
        stdout.WriteLine($"config:     {configLabel}: image model with interactive heads, {match.ExpectedCount.ToString("N0", Inv)} tensors (RoPE tables included)");
        foreach (var line in match.HuggingFaceLines) stdout.WriteLine(line);
        if (match.Unmapped.Count > 0)
            stdout.WriteLine($"unused:     {match.Unmapped.Count.ToString("N0", Inv)} checkpoint key(s) not loaded by the image model (ignored, as the reference does), e.g. {match.Unmapped[0]}");

        if (match.IsMatch)
        {
            stdout.WriteLine($"match:      yes, every key and shape fits the '{configLabel}' configuration");
            return 0;
        }

        stdout.WriteLine("match:      NO");
        if (match.LayoutProblem is not null) stdout.WriteLine("  " + match.LayoutProblem);
        if (match.Comparison is { IsMatch: false } cmp) stdout.WriteLine(cmp.Describe(path, MaxListedPerKind));
        if (match.RopeValueMismatches.Count > 0)
        {
            stdout.WriteLine($"RoPE tables (freqs_cis) differing from the recomputed ones by more than {ConfigurationMatch.RopeTolerance.ToString("G3", Inv)} ({match.RopeValueMismatches.Count}):");
            foreach (var (key, diff) in match.RopeValueMismatches.Take(MaxListedPerKind))
                stdout.WriteLine($"  {key}: max |difference| {diff.ToString("G3", Inv)}");
            if (match.RopeValueMismatches.Count > MaxListedPerKind)
                stdout.WriteLine($"  ... and {match.RopeValueMismatches.Count - MaxListedPerKind} more");
        }
        stderr.WriteLine($"sam3: {path} does not fit the '{configLabel}' configuration (report on stdout)");
        return 1;
    }

    /// <summary>"full", "tiny", or an existing config.json; anything else is a usage error.</summary>
    public static Sam3Config ResolveConfig(string nameOrPath)
    {
        if (nameOrPath.ToLowerInvariant() is not ("full" or "tiny") && !File.Exists(nameOrPath))
            throw new UsageException($"--config expects full, tiny or a configuration file; '{nameOrPath}' not found");
        if (File.Exists(nameOrPath) && Sam3.Torch.Config.HuggingFaceConfig.IsHfConfigJson(File.ReadAllText(nameOrPath)))
            return Sam3.Torch.IO.HuggingFaceFolder.LoadConfig(nameOrPath).Config; // transformers config.json (hub snapshot)
        return Sam3Config.Resolve(nameOrPath);
    }

    public static string FormatName(CheckpointFormat format) => format switch
    {
        CheckpointFormat.Safetensors => "safetensors",
        CheckpointFormat.TorchZip => "pt (PyTorch zip)",
        CheckpointFormat.TorchLegacy => "pt (legacy, unsupported)",
        _ => "unknown",
    };

    public static string LayoutName(CheckpointLayout layout) => layout switch
    {
        CheckpointLayout.Released => "released (detector.*, tracker.*)",
        CheckpointLayout.ImageModel => "image model (backbone.*, transformer.*, ...)",
        CheckpointLayout.HuggingFace => "Hugging Face transformers (detector_model.*, tracker_model.*, tracker_neck.*)",
        _ => "unknown",
    };
}
