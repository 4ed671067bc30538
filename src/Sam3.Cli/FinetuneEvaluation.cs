using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Sam3.Torch;
using Sam3.Torch.Loading;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Loop;

namespace Sam3.Cli;

/// <summary>
/// The before/after comparison of <c>sam3 finetune</c>: the zero-shot model (the source checkpoint) and the fine-tuned one
/// (OUT/model.safetensors, loaded back as a user would) are evaluated on the validation split with <c>sam3 eval</c>'s
/// code; the zero-shot report is kept in OUT/baseline.json (a resumed run does not redo it), both and their differences
/// go to OUT/summary.json, and a table (plus a warning line when a headline figure fell) is printed at the end.
/// </summary>
internal static class FinetuneEvaluation
{
    public const string BaselineFile = "baseline.json";
    public const string SummaryFile = "summary.json";

    /// <summary>The headline figures of the table: (label, report section, statistic).</summary>
    public static IReadOnlyList<(string Label, string Section, string Key)> Headline { get; } =
    [
        ("box AP", "bbox", "AP"), ("box AP50", "bbox", "AP50"), ("mask AP", "segm", "AP"), ("mask AP50", "segm", "AP50"),
        ("box cgF1", "cgF1_bbox", "cgF1"), ("mask cgF1", "cgF1_segm", "cgF1"),
    ];

    /// <summary>Figures whose fall triggers the warning.</summary>
    private static readonly string[] Watched = ["box AP", "mask AP", "box cgF1", "mask cgF1"];

    /// <summary>--eval-split: a named split, "none", or (default) valid, else test, else none.</summary>
    public static string? ResolveSplit(string data, string? option)
    {
        if (option is "none") return null;
        if (option is not null)
        {
            if (!CocoDataset.HasSplit(data, option)) throw new UsageException($"--eval-split {option}: no {option}/{CocoDataset.RoboflowAnnotationFile} in {data}");
            return option;
        }
        foreach (var s in new[] { "valid", "test" })
            if (CocoDataset.HasSplit(data, s)) return s;
        return null;
    }

    /// <summary>Loads <paramref name="checkpoint"/> as a user would (<see cref="Sam3Model.Load"/>) and evaluates it on the split.</summary>
    public static JsonObject Evaluate(string checkpoint, ModelFiles files, string data, string split, TextWriter stderr)
    {
        using var model = Sam3Model.Load(checkpoint, new Sam3ModelOptions
        {
            Config = files.Config, TokenizerPath = files.TokenizerPath, EnableInteractivePredictor = false,
        });
        var dataset = CocoDataset.Open(data, split, new CocoDatasetOptions { Training = false });
        var report = EvalCommand.Evaluate(model, dataset, int.MaxValue, stderr);
        var json = EvalCommand.ReportJson(report);
        json["checkpoint"] = Path.GetFullPath(checkpoint);
        json["split"] = split;
        return json;
    }

    /// <summary>OUT/baseline.json when a previous run of this OUT wrote it for the same checkpoint and split, else a fresh evaluation (written there).</summary>
    public static JsonObject Baseline(string outDir, string checkpoint, ModelFiles files, string data, string split, TextWriter stderr)
    {
        string path = Path.Combine(outDir, BaselineFile);
        if (File.Exists(path) && JsonNode.Parse(File.ReadAllText(path)) is JsonObject saved
            && (string?)saved["checkpoint"] == Path.GetFullPath(checkpoint) && (string?)saved["split"] == split)
        {
            stderr.WriteLine($"zero-shot baseline from {path}");
            return saved;
        }
        stderr.WriteLine($"evaluating the zero-shot baseline on {split}");
        var json = Evaluate(checkpoint, files, data, split, stderr);
        EvalCommand.AtomicWriteJson(path, json);
        return json;
    }

    public static double? Value(JsonObject report, string section, string key) =>
        report[section] is JsonObject o && o[key] is JsonValue v && v.TryGetValue<double>(out var d) && double.IsFinite(d) ? d : null;

    /// <summary>Writes OUT/summary.json and returns the table text (with the warning line when a watched figure fell).</summary>
    public static (string Table, bool Worse) Summarise(string outDir, string split, JsonObject before, JsonObject after, TensorBoardLog? tensorBoard, int finalStep)
    {
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"validation ({split}): zero-shot vs fine-tuned");
        sb.AppendLine(CultureInfo.InvariantCulture, $"{"",-10} {"zero-shot",10} {"fine-tuned",10} {"change",8}");
        var delta = new JsonObject();
        var worse = new List<string>();
        foreach (var (label, section, key) in Headline)
        {
            double? b = Value(before, section, key), f = Value(after, section, key);
            if (b is null && f is null) continue;
            static string Fmt(double? v) => v is { } x ? x.ToString("F3", CultureInfo.InvariantCulture) : "-";
            string change = b is { } bb && f is { } ff ? (ff - bb).ToString("+0.000;-0.000;0.000", CultureInfo.InvariantCulture) : "-";
            sb.AppendLine(CultureInfo.InvariantCulture, $"{label,-10} {Fmt(b),10} {Fmt(f),10} {change,8}");
            if (b is { } x0 && f is { } x1)
            {
                delta[label] = x1 - x0;
                if (x1 < x0 && Watched.Contains(label)) worse.Add(label);
            }
        }
        if (worse.Count > 0)
            sb.AppendLine($"warning: the fine-tuned model is worse than the zero-shot one on {split} ({string.Join(", ", worse)} fell); check the learning rate, epochs and data");
        var summary = new JsonObject
        {
            ["split"] = split, ["zero_shot"] = before.DeepClone(), ["fine_tuned"] = after.DeepClone(), ["change"] = delta,
            ["worse"] = worse.Count > 0, ["worse_figures"] = new JsonArray(worse.Select(w => (JsonNode)JsonValue.Create(w)!).ToArray()),
        };
        EvalCommand.AtomicWriteJson(Path.Combine(outDir, SummaryFile), summary);
        if (tensorBoard is not null)
        {
            KeyValuePair<string, double>[] Scalars(JsonObject r) => Headline
                .Select(h => (h.Label, V: Value(r, h.Section, h.Key))).Where(x => x.V is not null)
                .Select(x => new KeyValuePair<string, double>(x.Label.Replace(' ', '_'), x.V!.Value)).ToArray();
            tensorBoard.AppendEvaluation(0, Scalars(before));
            tensorBoard.AppendEvaluation(finalStep, Scalars(after));
        }
        return (sb.ToString(), worse.Count > 0);
    }
}
