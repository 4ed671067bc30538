using System.Globalization;
using Sam3.Torch;
using Sam3.Torch.Parity;

namespace Sam3.Cli;

/// <summary><c>sam3 parity</c>: runs reference scenarios through the library (the same runner as the test suite).</summary>
internal static class ParityCommand
{

    public static int Run(CliArgs a, TextWriter stdout, TextWriter stderr)
    {
        if (a.Positional.Count > 0) throw new UsageException($"parity: unexpected argument '{a.Positional[0]}'");
        string reference = a.Required("reference");
        if (!Directory.Exists(reference)) throw new UsageException($"--reference {reference}: no such folder");
        double atol = a.Double("atol", 1e-4), rtol = a.Double("rtol", 1e-4);
        if (atol < 0 || rtol < 0) throw new UsageException("--atol and --rtol must be non-negative");
        var prefixes = a.Values("scenario").SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToList();
        if (a.Values("scenario").Count > 0 && prefixes.Count == 0) throw new UsageException("--scenario names no scenario");
        string model = a.Value("model") ?? "tiny";
        if (!Directory.Exists(Path.Combine(reference, model)))
            throw new UsageException($"--reference {reference}: no '{model}' model folder (expected {Path.Combine(reference, model)} with config.json and the scenario files)");
        string? checkpoint = a.Value("checkpoint");
        if (checkpoint is not null && !File.Exists(checkpoint) && !Directory.Exists(checkpoint)) throw new UsageException($"--checkpoint {checkpoint}: not found");
        using var runner = new ParityRunner(reference, model, new Tolerance(atol, rtol)) { CheckpointOverride = checkpoint };
        IReadOnlyList<string> scenarios;
        try
        {
            scenarios = runner.Select(prefixes);
        }
        catch (Sam3Exception e)
        {
            throw new UsageException(e.Message); // an unknown --scenario prefix: a usage error, nothing was run
        }
        int passed = 0, failed = 0;
        foreach (var name in scenarios)
        {
            var report = runner.Run(name);
            stdout.WriteLine($"== {name}");
            stdout.WriteLine(string.Format(CultureInfo.InvariantCulture, "  {0,-44} {1,11} {2,11} {3}", "tensor", "max abs", "max rel", "result"));
            foreach (var c in report.Comparisons.Where(c => a.Flag("all-tensors") || !c.Passed || IsHeadline(c.Name)))
                stdout.WriteLine(string.Format(CultureInfo.InvariantCulture, "  {0,-44} {1,11:G3} {2,11:G3} {3}{4}", c.Name, c.MaxAbsError, c.MaxRelError,
                    c.Passed ? "pass" : "FAIL", c.Mismatches > 0 ? $" ({c.Mismatches}/{c.Count} elements differ)" : ""));
            foreach (var d in report.Detections)
                stdout.WriteLine($"  detections {d.Where}: reference {d.Reference}, ours {d.Ours}{(d.Reference == d.Ours ? "" : "  FAIL")}");
            foreach (var n in report.NotCompared.Take(10)) stdout.WriteLine($"  not produced: {n}");
            stdout.WriteLine(string.Format(CultureInfo.InvariantCulture, "  {0} tensors compared, {1:F1} s: {2}", report.Comparisons.Count, report.Seconds,
                report.Passed ? "PASS" : "FAIL — " + report.Failure));
            if (report.Passed) passed++; else failed++;
        }
        stdout.WriteLine($"parity: {passed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }

    /// <summary>Rows always shown: final outputs and masks; the rest with --all-tensors.</summary>
    private static bool IsHeadline(string name) => name.Contains("output.") || name.Contains("grounding.out.") || name.EndsWith("masks");
}
