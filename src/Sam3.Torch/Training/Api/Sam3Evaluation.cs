using System.Diagnostics;
using System.Globalization;
using Sam3.Torch.Batched;
using Sam3.Torch.IO;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Evaluation;
using BatchedDatapoint = Sam3.Torch.Batched.Datapoint;

namespace Sam3.Torch.Training;

/// <summary>
/// COCO box and mask AP (pycocotools' COCOeval) and cgF1 (upstream's <c>cgf1_eval.py</c>) of a model on a COCO split:
/// one forward per image with every category name as a text query, detections compared with the split's annotations.
/// What <c>sam3 eval</c> runs.
/// </summary>
/// <example>
/// <code>
/// using var model = Sam3Model.Load("runs/1/model.safetensors");
/// var r = Sam3Evaluation.Evaluate(model, "my-roboflow-export/", new Sam3EvaluationOptions { Split = "test" });
/// Console.WriteLine($"box AP {r.Box.AP:F3}, mask AP {r.Mask?.AP:F3}, cgF1 {r.BoxCgF1.CgF1:F3}");
/// </code>
/// </example>
public static class Sam3Evaluation
{
    /// <summary>Evaluates a loaded model on a split of <paramref name="dataDirectory"/> (Roboflow layout: <c>SPLIT/_annotations.coco.json</c>).</summary>
    /// <param name="model">The model (its interactive heads are not used).</param>
    /// <param name="dataDirectory">The data folder.</param>
    /// <param name="options">Split and image limit; null: defaults.</param>
    /// <param name="cancellationToken">Checked between images; a cancelled call throws <see cref="OperationCanceledException"/>.</param>
    /// <exception cref="ArgumentException">An option is invalid (its name is the exception's <see cref="ArgumentException.ParamName"/>) or the data folder is empty.</exception>
    /// <exception cref="Sam3Exception">The split is missing or its annotations are invalid, or an image cannot be read.</exception>
    public static Sam3EvaluationResult Evaluate(Sam3Model model, string dataDirectory, Sam3EvaluationOptions? options,
        CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrWhiteSpace(dataDirectory);
        options ??= new Sam3EvaluationOptions();
        options.Validate();
        string split = options.Split ?? DefaultSplit(dataDirectory);
        return Run(model, dataDirectory, split, options.MaxImages ?? int.MaxValue, TextWriter.Null, cancellationToken);
    }

    // The loaded-model overloads take no optional parameter (one overload of a public method may have them, the checkpoint
    // one with the most parameters — analyzer rules RS0026/RS0027); these three cover the calls the optional ones allowed.

    /// <inheritdoc cref="Evaluate(Sam3Model, string, Sam3EvaluationOptions?, CancellationToken)"/>
    public static Sam3EvaluationResult Evaluate(Sam3Model model, string dataDirectory) => Evaluate(model, dataDirectory, null, CancellationToken.None);

    /// <inheritdoc cref="Evaluate(Sam3Model, string, Sam3EvaluationOptions?, CancellationToken)"/>
    public static Sam3EvaluationResult Evaluate(Sam3Model model, string dataDirectory, Sam3EvaluationOptions? options) =>
        Evaluate(model, dataDirectory, options, CancellationToken.None);

    /// <inheritdoc cref="Evaluate(Sam3Model, string, Sam3EvaluationOptions?, CancellationToken)"/>
    public static Sam3EvaluationResult Evaluate(Sam3Model model, string dataDirectory, CancellationToken cancellationToken) =>
        Evaluate(model, dataDirectory, null, cancellationToken);

    /// <summary>Loads a checkpoint (as <see cref="Sam3Model.Load"/>, without the interactive heads), evaluates it, disposes it.</summary>
    /// <param name="checkpointPath">A checkpoint file or a folder holding one.</param>
    /// <param name="dataDirectory">The data folder.</param>
    /// <param name="options">Split and image limit; null: defaults.</param>
    /// <param name="modelOptions">How to load the model; null: defaults.</param>
    /// <param name="cancellationToken">Checked between images.</param>
    public static Sam3EvaluationResult Evaluate(string checkpointPath, string dataDirectory, Sam3EvaluationOptions? options = null,
        Sam3ModelOptions? modelOptions = null, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(checkpointPath);
        ArgumentException.ThrowIfNullOrWhiteSpace(dataDirectory);
        (options ?? new Sam3EvaluationOptions()).Validate();
        using var model = Sam3Model.Load(checkpointPath, (modelOptions ?? new Sam3ModelOptions()) with { EnableInteractivePredictor = false });
        return Evaluate(model, dataDirectory, options, cancellationToken);
    }

    /// <summary>valid, else test, else train (what exists; valid when none does, so the error names it).</summary>
    internal static string DefaultSplit(string dataDirectory)
    {
        foreach (var s in new[] { "valid", "test", "train" })
            if (CocoDataset.HasSplit(dataDirectory, s)) return s;
        return "valid";
    }

    /// <summary>The evaluation of <paramref name="model"/> on one split, with a line per image on <paramref name="log"/>.</summary>
    internal static Sam3EvaluationResult Run(Sam3Model model, string dataDirectory, string split, int maxImages, TextWriter log,
        CancellationToken cancellationToken)
    {
        var dataset = CocoDataset.Open(dataDirectory, split, new CocoDatasetOptions { Training = false });
        var report = Evaluate(model, dataset, maxImages, log, cancellationToken);
        return Sam3EvaluationResult.From(report, split, dataset.Annotations.JsonPath);
    }

    /// <summary>Detections of <paramref name="model"/> on the first <paramref name="maxImages"/> images of <paramref name="dataset"/>, evaluated.</summary>
    internal static EvaluationReport Evaluate(Sam3Model model, CocoDataset dataset, int maxImages, TextWriter log, CancellationToken cancellationToken = default)
    {
        var annotations = dataset.Annotations;
        var images = annotations.Images.Take(maxImages).ToList();
        var detections = Detect(model, annotations, images, log, cancellationToken);
        var full = CocoEvaluationSet.FromAnnotations(annotations);
        var keep = images.Select(i => i.Id).ToHashSet();
        var set = new CocoEvaluationSet(full.GroundTruths.Where(g => keep.Contains(g.ImageId)).ToList(), keep, full.CategoryIds);
        return set.Evaluate(detections);
    }

    /// <summary>One forward per image with every category as a text query; detections in pixels (box xywh, mask RLE).</summary>
    internal static List<CocoDetection> Detect(Sam3Model model, CocoAnnotationFile annotations, IReadOnlyList<CocoImageEntry> images, TextWriter log,
        CancellationToken cancellationToken = default)
    {
        var predictor = model.CreateBatchedPredictor();
        var post = new PostProcessImage { UseOriginalIds = true, ConvertMaskToRle = true };
        var detections = new List<CocoDetection>();
        long counter = 0;
        var sw = Stopwatch.StartNew();
        for (int n = 0; n < images.Count; n++)
        {
            cancellationToken.ThrowIfCancellationRequested();
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
            log.WriteLine(string.Format(CultureInfo.InvariantCulture, "eval: image {0}/{1}, {2:F1} s/image", n + 1, images.Count, sw.Elapsed.TotalSeconds / (n + 1)));
        }
        return detections;
    }
}
