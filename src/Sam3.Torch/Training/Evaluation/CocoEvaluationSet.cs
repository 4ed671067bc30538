using System.Globalization;
using System.Text;
using Sam3.Torch.Training.Data;

namespace Sam3.Torch.Training.Evaluation;

/// <summary>Box and mask AP (COCOeval) and cgF1 of one set of detections against one annotation file.</summary>
internal sealed record EvaluationReport(CocoSummary Box, CocoSummary? Mask, CgF1Result CgF1Box, CgF1Result? CgF1Mask, int Images, int Categories, int Detections)
{
    /// <summary>A small fixed-width table (one row per metric family).</summary>
    public string Format(string? title = null)
    {
        var sb = new StringBuilder();
        if (title != null) sb.AppendLine(title);
        sb.AppendLine(CultureInfo.InvariantCulture, $"{Images} images, {Categories} categories, {Detections} detections");
        void Row(string name, CocoSummary s) =>
            sb.AppendLine(CultureInfo.InvariantCulture, $"{name,-9} AP {s.AP,6:F3}  AP50 {s.AP50,6:F3}  AP75 {s.AP75,6:F3}  APs {s.APSmall,6:F3}  APm {s.APMedium,6:F3}  APl {s.APLarge,6:F3}  AR100 {s.AR100,6:F3}");
        Row("box", Box);
        if (Mask != null) Row("mask", Mask);
        sb.AppendLine(CultureInfo.InvariantCulture, $"{"cgF1 box",-9} cgF1 {CgF1Box.CgF1,6:F3}  cgF1@0.5 {CgF1Box["cgF1@0.5"],6:F3}  IL_MCC {CgF1Box["IL_MCC"],6:F3}  pmF1 {CgF1Box["positive_micro_F1"],6:F3}");
        if (CgF1Mask != null)
            sb.AppendLine(CultureInfo.InvariantCulture, $"{"cgF1 mask",-9} cgF1 {CgF1Mask.CgF1,6:F3}  cgF1@0.5 {CgF1Mask["cgF1@0.5"],6:F3}  IL_MCC {CgF1Mask["IL_MCC"],6:F3}  pmF1 {CgF1Mask["positive_micro_F1"],6:F3}");
        return sb.ToString();
    }
}

/// <summary>
/// The ground truth of a COCO annotation file prepared for <see cref="CocoEvaluator"/> and <see cref="CgF1Evaluator"/>:
/// every image and category of the file (pycocotools evaluates images without annotations too), each annotation's
/// <c>area</c> from the file (when absent: the mask area, else the box area), masks as RLE. For cgF1 every
/// (image, category) pair is one exhaustively annotated sample (a category absent from an image is a negative pair),
/// which is how the data set's queries are built.
/// </summary>
internal sealed class CocoEvaluationSet
{
    public IReadOnlyList<CocoGroundTruth> GroundTruths { get; }
    public long[] ImageIds { get; }
    public long[] CategoryIds { get; }
    /// <summary>True when every non-crowd annotation has a mask (mask AP is reported then).</summary>
    public bool HasMasks { get; }

    public CocoEvaluationSet(IReadOnlyList<CocoGroundTruth> groundTruths, IEnumerable<long> imageIds, IEnumerable<long> categoryIds)
    {
        GroundTruths = groundTruths;
        ImageIds = imageIds.Distinct().Order().ToArray();
        CategoryIds = categoryIds.Distinct().Order().ToArray();
        HasMasks = groundTruths.Count > 0 && groundTruths.All(g => g.Mask != null);
    }

    public static CocoEvaluationSet FromAnnotations(CocoAnnotationFile file)
    {
        var gts = new List<CocoGroundTruth>();
        foreach (var img in file.Images)
            foreach (var a in file.AnnotationsOf(img.Id))
            {
                double area = a.Area ?? (a.Segmentation != null ? a.Segmentation.Area() : a.Bbox[2] * a.Bbox[3]);
                gts.Add(new CocoGroundTruth(a.Id, a.ImageId, a.CategoryId, a.Bbox, a.Segmentation, area, a.IsCrowd));
            }
        return new CocoEvaluationSet(gts, file.Images.Select(i => i.Id), file.Categories.Select(c => c.Id));
    }

    /// <summary>One cgF1 sample per (image, category), with that category's ground truths and detections.</summary>
    public IReadOnlyList<CgF1Sample> CgF1Samples(IReadOnlyList<CocoDetection> detections)
    {
        var gtBy = GroundTruths.GroupBy(g => (g.ImageId, g.CategoryId)).ToDictionary(g => g.Key, g => (IReadOnlyList<CocoGroundTruth>)g.ToList());
        var dtBy = detections.GroupBy(d => (d.ImageId, d.CategoryId)).ToDictionary(g => g.Key, g => (IReadOnlyList<CocoDetection>)g.ToList());
        var samples = new List<CgF1Sample>();
        long id = 0;
        foreach (var img in ImageIds)
            foreach (var cat in CategoryIds)
                samples.Add(new CgF1Sample(id++, gtBy.GetValueOrDefault((img, cat)) ?? [], dtBy.GetValueOrDefault((img, cat)) ?? []));
        return samples;
    }

    /// <summary>Box AP, mask AP (when the ground truth and the detections have masks), cgF1 for boxes and masks.</summary>
    public EvaluationReport Evaluate(IReadOnlyList<CocoDetection> detections, CocoEvalParams? p = null, double cgF1ScoreThreshold = 0.5)
    {
        // upstream's box results carry no mask: area = box w·h
        var box = new CocoEvaluator(GroundTruths, ImageIds, CategoryIds, CocoIouType.Bbox)
            .Evaluate(detections.Select(d => d with { Bbox = d.Bbox ?? d.Mask?.ToBbox(), Mask = null }).ToList(), p).Summary;
        bool masks = HasMasks && detections.All(d => d.Mask != null);
        var samples = CgF1Samples(detections);
        CocoSummary? mask = null;
        CgF1Result? cgMask = null;
        if (masks)
        {
            // upstream's segmentation results carry no box, so loadRes takes the mask area (and box) for them
            mask = new CocoEvaluator(GroundTruths, ImageIds, CategoryIds, CocoIouType.Segm).Evaluate(detections.Select(d => d with { Bbox = null }).ToList(), p).Summary;
            cgMask = new CgF1Evaluator(CocoIouType.Segm, cgF1ScoreThreshold).Evaluate(samples);
        }
        var cgBox = new CgF1Evaluator(CocoIouType.Bbox, cgF1ScoreThreshold).Evaluate(samples);
        return new EvaluationReport(box, mask, cgBox, cgMask, ImageIds.Length, CategoryIds.Length, detections.Count);
    }
}
