using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Sam3.Torch;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Evaluation;

namespace Sam3.Cli;

/// <summary>
/// <c>sam3 eval</c>: runs the model on a COCO-format split (every category name as a text query on every image, as the
/// fine-tuning data set builds its queries) and reports COCO box and mask AP (COCOeval) and cgF1 (upstream's
/// cgf1_eval.py) against the split's annotations, through the public <see cref="Sam3Evaluation"/> API.
/// </summary>
internal static class EvalCommand
{


    public static int Run(CliArgs a, TextWriter stdout, TextWriter stderr)
    {
        if (a.Positional.Count > 0) throw new UsageException($"eval: unexpected argument '{a.Positional[0]}'");
        string checkpoint = a.Required("checkpoint");
        string data = a.Required("data");
        string device = a.Value("device") ?? "cpu";
        if (device is not ("cpu" or "cuda")) throw new UsageException($"--device must be cpu or cuda, got '{device}'");
        int maxImages = int.MaxValue;
        if (a.Value("max-images") is { } mi && (!int.TryParse(mi, NumberStyles.None, CultureInfo.InvariantCulture, out maxImages) || maxImages < 1))
            throw new UsageException($"--max-images expects a positive integer, got '{mi}'");
        string split = a.Value("split") ?? RoboflowDefaultSplit(data);
        var dataset = CocoDataset.Open(data, split, new CocoDatasetOptions { Training = false });
        if (!File.Exists(checkpoint)) throw new Sam3CheckpointException($"checkpoint not found: {checkpoint}");
        var config = SegmentCommand.ResolveConfig(a.Value("config") ?? "full");

        var sw = Stopwatch.StartNew();
        using var model = Sam3Model.Load(checkpoint, new Sam3ModelOptions
        {
            Config = config,
            TokenizerPath = a.Value("vocab"),
            EnableInteractivePredictor = false,
            Device = device,
        });
        stderr.WriteLine(string.Format(CultureInfo.InvariantCulture, "loaded {0} in {1:F1} s", Path.GetFileName(model.CheckpointPath), sw.Elapsed.TotalSeconds));
        var report = Evaluate(model, dataset, maxImages, stderr);
        var annotations = dataset.Annotations;
        stdout.Write(report.Format($"{annotations.JsonPath} ({split})"));
        if (a.Value("out") is { } outPath) AtomicWriteReport(outPath, report);
        return 0;
    }

    /// <summary>Detections of <paramref name="model"/> on the first <paramref name="maxImages"/> images of <paramref name="dataset"/>, evaluated (<see cref="Sam3Evaluation"/>).</summary>
    internal static EvaluationReport Evaluate(Sam3Model model, CocoDataset dataset, int maxImages, TextWriter stderr) =>
        Sam3Evaluation.Evaluate(model, dataset, maxImages, stderr);

    /// <summary>valid, else test, else train (what exists).</summary>
    internal static string RoboflowDefaultSplit(string data) => Sam3Evaluation.DefaultSplit(data);

    private static void AtomicWriteReport(string path, EvaluationReport r) => AtomicWriteJson(path, ReportJson(r));

    /// <summary>The report as JSON: counts, the 12 COCO summary numbers per IoU type, every cgF1 statistic (non-finite → null).</summary>
    internal static JsonObject ReportJson(EvaluationReport r) => FineTuningComparison.ReportJson(r);

    /// <summary>Writes <paramref name="json"/> (indented) to a temporary file beside <paramref name="path"/>, then renames it.</summary>
    internal static void AtomicWriteJson(string path, JsonNode json) => FineTuningComparison.AtomicWriteJson(path, json);
}
