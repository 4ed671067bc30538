using Sam3.Torch.Training.Evaluation;

namespace Sam3.Torch.Training;

/// <summary>Options of <see cref="Sam3Evaluation.Evaluate(Sam3Model, string, Sam3EvaluationOptions?, CancellationToken)"/>.</summary>
public sealed record Sam3EvaluationOptions
{
    /// <summary>The split folder (<c>DATA/SPLIT/_annotations.coco.json</c>); null (default): <c>valid</c>, else <c>test</c>, else <c>train</c>.</summary>
    public string? Split { get; init; }

    /// <summary>Evaluate the first N images of the split only (≥ 1); null (default): all of them.</summary>
    public int? MaxImages { get; init; }

    /// <summary>Checks every value; the exception's <see cref="ArgumentException.ParamName"/> names the offending property.</summary>
    /// <exception cref="ArgumentException">A value is out of range.</exception>
    public void Validate()
    {
        if (Split is { } s && (string.IsNullOrWhiteSpace(s) || s.IndexOfAny(['/', '\\']) >= 0 || s is "." or ".."))
            throw new ArgumentException($"Split must be a split folder's name (valid, test, train, ...), got '{s}'", nameof(Split));
        if (MaxImages is < 1) throw new ArgumentOutOfRangeException(nameof(MaxImages), MaxImages, $"MaxImages must be at least 1 (or null), got {MaxImages}");
    }
}

/// <summary>
/// The 12 summary numbers of COCOeval (pycocotools' definition: IoU thresholds .50:.05:.95, 101-point interpolated
/// precision, area ranges small &lt; 32², medium &lt; 96², large; maxDets 1/10/100). −1 where undefined (no ground truth
/// in the range), as pycocotools.
/// </summary>
public sealed record Sam3CocoMetrics
{
    /// <summary>AP at IoU .50:.95, all areas, 100 detections.</summary>
    public double AP { get; init; }
    /// <summary>AP at IoU .50.</summary>
    public double AP50 { get; init; }
    /// <summary>AP at IoU .75.</summary>
    public double AP75 { get; init; }
    /// <summary>AP of small objects (area &lt; 32²).</summary>
    public double APSmall { get; init; }
    /// <summary>AP of medium objects (32² to 96²).</summary>
    public double APMedium { get; init; }
    /// <summary>AP of large objects (area &gt; 96²).</summary>
    public double APLarge { get; init; }
    /// <summary>Recall with 1 detection per image.</summary>
    public double AR1 { get; init; }
    /// <summary>Recall with 10 detections per image.</summary>
    public double AR10 { get; init; }
    /// <summary>Recall with 100 detections per image.</summary>
    public double AR100 { get; init; }
    /// <summary>Recall of small objects (100 detections).</summary>
    public double ARSmall { get; init; }
    /// <summary>Recall of medium objects (100 detections).</summary>
    public double ARMedium { get; init; }
    /// <summary>Recall of large objects (100 detections).</summary>
    public double ARLarge { get; init; }

    internal static Sam3CocoMetrics From(CocoSummary s) => new()
    {
        AP = s.AP, AP50 = s.AP50, AP75 = s.AP75, APSmall = s.APSmall, APMedium = s.APMedium, APLarge = s.APLarge,
        AR1 = s.AR1, AR10 = s.AR10, AR100 = s.AR100, ARSmall = s.ARSmall, ARMedium = s.ARMedium, ARLarge = s.ARLarge,
    };
}

/// <summary>
/// cgF1 as upstream's <c>cgf1_eval.py</c>: every (image, category) pair is a query, detections with score ≥ 0.5 count;
/// cgF1 = positive micro F1 × image-level MCC, averaged over IoU thresholds .50:.95.
/// </summary>
public sealed record Sam3CgF1Metrics
{
    /// <summary>cgF1 averaged over the IoU thresholds .50:.95.</summary>
    public double CgF1 { get; init; }
    /// <summary>cgF1 at IoU .50.</summary>
    public double CgF1At50 { get; init; }
    /// <summary>cgF1 at IoU .75.</summary>
    public double CgF1At75 { get; init; }
    /// <summary>Micro F1 over the pairs with a ground truth (IoU .50:.95).</summary>
    public double PositiveMicroF1 { get; init; }
    /// <summary>Matthews correlation of "the pair has a detection" against "the pair has a ground truth".</summary>
    public double ImageLevelMcc { get; init; }
    /// <summary>All 26 numbers of upstream's summary by its keys (<c>cgF1</c>, <c>IL_MCC</c>, <c>positive_micro_F1@0.5</c>, ...); NaN where undefined.</summary>
    public IReadOnlyDictionary<string, double> Values { get; init; } = new Dictionary<string, double>();

    internal static Sam3CgF1Metrics From(CgF1Result r) => new()
    {
        CgF1 = r.CgF1, CgF1At50 = r["cgF1@0.5"], CgF1At75 = r["cgF1@0.75"], PositiveMicroF1 = r["positive_micro_F1"], ImageLevelMcc = r["IL_MCC"],
        Values = r.Stats.ToDictionary(s => s.Metric.Key, s => s.Value),
    };
}

/// <summary>Box and mask AP and cgF1 of a model on one COCO split (what <c>sam3 eval</c> prints).</summary>
public sealed record Sam3EvaluationResult
{
    /// <summary>The split evaluated.</summary>
    public string Split { get; init; } = "";
    /// <summary>The split's annotation file.</summary>
    public string AnnotationFile { get; init; } = "";
    /// <summary>Images evaluated.</summary>
    public int Images { get; init; }
    /// <summary>Categories (text queries) of the split.</summary>
    public int Categories { get; init; }
    /// <summary>Detections the model made.</summary>
    public int Detections { get; init; }
    /// <summary>COCO box AP.</summary>
    public Sam3CocoMetrics Box { get; init; } = new();
    /// <summary>COCO mask AP; null when some ground truth has no mask.</summary>
    public Sam3CocoMetrics? Mask { get; init; }
    /// <summary>cgF1 with box IoU.</summary>
    public Sam3CgF1Metrics BoxCgF1 { get; init; } = new();
    /// <summary>cgF1 with mask IoU; null when some ground truth has no mask.</summary>
    public Sam3CgF1Metrics? MaskCgF1 { get; init; }

    /// <summary>The evaluator's report (the CLI formats and serialises it).</summary>
    internal EvaluationReport? Report { get; init; }

    internal static Sam3EvaluationResult From(EvaluationReport r, string split, string annotationFile) => new()
    {
        Split = split, AnnotationFile = annotationFile, Images = r.Images, Categories = r.Categories, Detections = r.Detections,
        Box = Sam3CocoMetrics.From(r.Box), Mask = r.Mask is { } m ? Sam3CocoMetrics.From(m) : null,
        BoxCgF1 = Sam3CgF1Metrics.From(r.CgF1Box), MaskCgF1 = r.CgF1Mask is { } cm ? Sam3CgF1Metrics.From(cm) : null,
        Report = r,
    };
}
