using System.Text.Json.Nodes;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Data;

namespace Sam3.Cli;

/// <summary>
/// The before/after comparison of <c>sam3 finetune</c>, done by the library (<see cref="FineTuningComparison"/>: OUT/baseline.json,
/// OUT/summary.json, the table); this class keeps the command's <c>--eval-split</c> rule and the file names.
/// </summary>
internal static class FinetuneEvaluation
{
    public const string BaselineFile = FineTuningComparison.BaselineFile;
    public const string SummaryFile = FineTuningComparison.SummaryFile;

    /// <summary>--eval-split: a named split, "none", or (default) valid, else test, else none.</summary>
    public static string? ResolveSplit(string data, string? option)
    {
        if (option is "none") return null;
        if (option is not null && !CocoDataset.HasSplit(data, option))
            throw new UsageException($"--eval-split {option}: no {option}/{CocoDataset.RoboflowAnnotationFile} in {data}");
        return FineTuningComparison.ResolveSplit(data, option);
    }

    /// <summary>One statistic of a report (null when absent or not finite).</summary>
    public static double? Value(JsonObject report, string section, string key) => FineTuningComparison.Value(report, section, key);
}
