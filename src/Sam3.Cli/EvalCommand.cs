using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Sam3.Torch;
using Sam3.Torch.Batched;
using Sam3.Torch.IO;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Evaluation;
using BatchedDatapoint = Sam3.Torch.Batched.Datapoint;

namespace Sam3.Cli;

/// <summary>
/// <c>sam3 eval</c>: runs the model on a COCO-format split (every category name as a text query on every image, as the
/// fine-tuning data set builds its queries) and reports COCO box and mask AP (COCOeval) and cgF1 (upstream's
/// cgf1_eval.py) against the split's annotations.
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

    /// <summary>Detections of <paramref name="model"/> on the first <paramref name="maxImages"/> images of <paramref name="dataset"/>, evaluated.</summary>
    internal static EvaluationReport Evaluate(Sam3Model model, CocoDataset dataset, int maxImages, TextWriter stderr)
    {
        var annotations = dataset.Annotations;
        var images = annotations.Images.Take(maxImages).ToList();
        var detections = Detect(model, annotations, images, stderr);
        var full = CocoEvaluationSet.FromAnnotations(annotations);
        var keep = images.Select(i => i.Id).ToHashSet();
        var set = new CocoEvaluationSet(full.GroundTruths.Where(g => keep.Contains(g.ImageId)).ToList(), keep, full.CategoryIds);
        return set.Evaluate(detections);
    }

    /// <summary>valid, else test, else train (what exists).</summary>
    internal static string RoboflowDefaultSplit(string data)
    {
        foreach (var s in new[] { "valid", "test", "train" })
            if (CocoDataset.HasSplit(data, s)) return s;
        return "valid";
    }

    /// <summary>One forward per image with every category as a text query; detections in pixels (box xywh, mask RLE).</summary>
    internal static List<CocoDetection> Detect(Sam3Model model, CocoAnnotationFile annotations, IReadOnlyList<CocoImageEntry> images, TextWriter stderr)
    {
        var predictor = model.CreateBatchedPredictor();
        var post = new PostProcessImage { UseOriginalIds = true, ConvertMaskToRle = true };
        var detections = new List<CocoDetection>();
        long counter = 0;
        var sw = Stopwatch.StartNew();
        for (int n = 0; n < images.Count; n++)
        {
            var entry = images[n];
            var img = ImageLoader.Load(entry.Path);
            var queries = annotations.Categories
                .Select(c => new FindQuery(c.Name, new InferenceMetadata(++counter, entry.Id, checked((int)c.Id), img.Height, img.Width))).ToList();
            using var results = predictor.PredictTensors([new BatchedDatapoint(img, queries)], post);
            if (results.TryGetValue(entry.Id, out var det))
            {
                var scores = det.ScoreArray();
                var labels = det.LabelArray();
                var boxes = det.BoxArray();
                for (int k = 0; k < det.Count; k++)
                {
                    var b = boxes[k];
                    detections.Add(new CocoDetection(entry.Id, labels[k], [b[0], b[1], b[2] - b[0], b[3] - b[1]], det.MasksRle![k], scores[k]));
                }
            }
            stderr.WriteLine(string.Format(CultureInfo.InvariantCulture, "eval: image {0}/{1}, {2:F1} s/image", n + 1, images.Count, sw.Elapsed.TotalSeconds / (n + 1)));
        }
        return detections;
    }

    private static void AtomicWriteReport(string path, EvaluationReport r) => AtomicWriteJson(path, ReportJson(r));

    /// <summary>The report as JSON: counts, the 12 COCO summary numbers per IoU type, every cgF1 statistic (non-finite → null).</summary>
    internal static JsonObject ReportJson(EvaluationReport r)
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
        var json = new JsonObject
        {
            ["images"] = r.Images, ["categories"] = r.Categories, ["detections"] = r.Detections,
            ["bbox"] = Summary(r.Box), ["segm"] = r.Mask is { } m ? Summary(m) : null,
            ["cgF1_bbox"] = Cg(r.CgF1Box), ["cgF1_segm"] = r.CgF1Mask is { } cm ? Cg(cm) : null,
        };
        return json;
    }

    /// <summary>Writes <paramref name="json"/> (indented) to a temporary file beside <paramref name="path"/>, then renames it.</summary>
    internal static void AtomicWriteJson(string path, JsonNode json)
    {
        string full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        string tmp = Path.Combine(Path.GetDirectoryName(full)!, "." + Path.GetFileName(full) + ".tmp");
        File.WriteAllText(tmp, json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        File.Move(tmp, full, overwrite: true);
    }
}
