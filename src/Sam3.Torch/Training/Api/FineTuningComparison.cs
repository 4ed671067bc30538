using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Sam3.Torch.Loading;
using Sam3.Torch.Training.Evaluation;
using Sam3.Torch.Training.Loop;

namespace Sam3.Torch.Training;

/// <summary>
/// The before/after comparison of a fine-tuning run: the zero-shot model (the source checkpoint) and the fine-tuned one
/// (OUT/model.safetensors, loaded back as a user would) are evaluated on the validation split with
/// <see cref="Sam3Evaluation"/>; the zero-shot report is kept in OUT/baseline.json (a resumed run does not redo it), both
/// and their differences go to OUT/summary.json, and a table (plus a warning line when a headline figure fell) is made.
/// Reports travel as the JSON of <c>sam3 eval --out</c> (<see cref="ReportJson"/>).
/// </summary>
internal static class FineTuningComparison
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

    /// <summary>The named split (which must exist), else valid, else test, else none.</summary>
    /// <exception cref="ArgumentException">A named split is not in <paramref name="data"/> (parameter <c>EvaluationSplit</c>).</exception>
    public static string? ResolveSplit(string data, string? split)
    {
        if (split is not null)
        {
            if (!Data.CocoDataset.HasSplit(data, split))
                throw new ArgumentException($"EvaluationSplit {split}: no {split}/{Data.CocoDataset.RoboflowAnnotationFile} in {data}", nameof(Sam3FineTuningOptions.EvaluationSplit));
            return split;
        }
        foreach (var s in new[] { "valid", "test" })
            if (Data.CocoDataset.HasSplit(data, s)) return s;
        return null;
    }

    /// <summary>Loads <paramref name="checkpoint"/> as a user would (<see cref="Sam3Model.Load"/>) and evaluates it on the split.</summary>
    public static JsonObject Evaluate(string checkpoint, ModelFiles files, string data, string split, TextWriter log, CancellationToken cancellation = default)
    {
        using var model = Sam3Model.Load(checkpoint, new Sam3ModelOptions
        {
            Config = files.Config, TokenizerPath = files.TokenizerPath, EnableInteractivePredictor = false,
        });
        var result = Sam3Evaluation.Run(model, data, split, int.MaxValue, log, cancellation);
        var json = ReportJson(result.Report!);
        json["checkpoint"] = Path.GetFullPath(checkpoint);
        json["split"] = split;
        return json;
    }

    /// <summary>OUT/baseline.json when a previous run of this OUT wrote it for the same checkpoint and split, else a fresh evaluation (written there).</summary>
    public static JsonObject Baseline(string outDir, string checkpoint, ModelFiles files, string data, string split, TextWriter log, CancellationToken cancellation = default)
    {
        string path = Path.Combine(outDir, BaselineFile);
        if (File.Exists(path) && JsonNode.Parse(File.ReadAllText(path)) is JsonObject saved
            && (string?)saved["checkpoint"] == Path.GetFullPath(checkpoint) && (string?)saved["split"] == split)
        {
            log.WriteLine($"zero-shot baseline from {path}");
            return saved;
        }
        log.WriteLine($"evaluating the zero-shot baseline on {split}");
        var json = Evaluate(checkpoint, files, data, split, log, cancellation);
        AtomicWriteJson(path, json);
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
        AtomicWriteJson(Path.Combine(outDir, SummaryFile), summary);
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

    /// <summary>The report as JSON: counts, the 12 COCO summary numbers per IoU type, every cgF1 statistic (non-finite → null).</summary>
    public static JsonObject ReportJson(EvaluationReport r)
    {
        static JsonObject Summary(CocoSummary s)
        {
            var o = new JsonObject();
            var v = s.ToArray();
            for (int i = 0; i < v.Length; i++) o[CocoSummary.Names[i]] = v[i];
            return o;
        }
        static JsonObject Cg(CgF1Result c)
        {
            var o = new JsonObject();
            foreach (var (m, v) in c.Stats) o[m.Key] = double.IsFinite(v) ? v : null;
            return o;
        }
        return new JsonObject
        {
            ["images"] = r.Images, ["categories"] = r.Categories, ["detections"] = r.Detections,
            ["bbox"] = Summary(r.Box), ["segm"] = r.Mask is { } m ? Summary(m) : null,
            ["cgF1_bbox"] = Cg(r.CgF1Box), ["cgF1_segm"] = r.CgF1Mask is { } cm ? Cg(cm) : null,
        };
    }

    /// <summary>A report of <see cref="ReportJson"/> (e.g. read back from baseline.json) as the public record (no <see cref="Sam3EvaluationResult.Report"/>).</summary>
    public static Sam3EvaluationResult FromJson(JsonObject json, string split, string annotationFile)
    {
        static Sam3CocoMetrics? Coco(JsonNode? node)
        {
            if (node is not JsonObject o) return null;
            double V(string k) => o[k] is JsonValue v && v.TryGetValue<double>(out var d) ? d : double.NaN;
            return new Sam3CocoMetrics
            {
                AP = V("AP"), AP50 = V("AP50"), AP75 = V("AP75"), APSmall = V("APs"), APMedium = V("APm"), APLarge = V("APl"),
                AR1 = V("AR1"), AR10 = V("AR10"), AR100 = V("AR100"), ARSmall = V("ARs"), ARMedium = V("ARm"), ARLarge = V("ARl"),
            };
        }
        static Sam3CgF1Metrics? Cg(JsonNode? node)
        {
            if (node is not JsonObject o) return null;
            var values = o.ToDictionary(p => p.Key, p => p.Value is JsonValue v && v.TryGetValue<double>(out var d) ? d : double.NaN);
            double V(string k) => values.TryGetValue(k, out var d) ? d : double.NaN;
            return new Sam3CgF1Metrics
            {
                CgF1 = V("cgF1"), CgF1At50 = V("cgF1@0.5"), CgF1At75 = V("cgF1@0.75"), PositiveMicroF1 = V("positive_micro_F1"),
                ImageLevelMcc = V("IL_MCC"), Values = values,
            };
        }
        static int I(JsonNode? n) => n is JsonValue v && v.TryGetValue<int>(out var i) ? i : 0;
        return new Sam3EvaluationResult
        {
            Split = split, AnnotationFile = annotationFile, Images = I(json["images"]), Categories = I(json["categories"]), Detections = I(json["detections"]),
            Box = Coco(json["bbox"]) ?? new Sam3CocoMetrics(), Mask = Coco(json["segm"]),
            BoxCgF1 = Cg(json["cgF1_bbox"]) ?? new Sam3CgF1Metrics(), MaskCgF1 = Cg(json["cgF1_segm"]),
        };
    }

    /// <summary>Writes <paramref name="json"/> (indented) to a temporary file beside <paramref name="path"/>, then renames it.</summary>
    public static void AtomicWriteJson(string path, JsonNode json)
    {
        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string tmp = Path.Combine(Path.GetDirectoryName(full)!, "." + Path.GetFileName(full) + ".tmp");
        File.WriteAllText(tmp, json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        File.Move(tmp, full, overwrite: true);
    }
}
