using Sam3.Torch.Training.Matching;
using NUnit.Framework;
using Sam3.Torch.Processing;
using Sam3.Torch.Training.Evaluation;

namespace Sam3.Torch.Tests.Training;

/// <summary>COCO AP against published pycocotools numbers and mathematical cases; cgF1 and the assignment solver.</summary>
[TestFixture, Category("Fast")]
public class CocoEvaluationTests
{
    /// <summary>xyxy float32 → [x, y, w, h] in float32 (as torchmetrics converts boxes before handing them to pycocotools).</summary>
    private static double[] Xywh(float x0, float y0, float x1, float y1) => [x0, y0, (double)(x1 - x0), (double)(y1 - y0)];

    private static double Area(double[] b) => (float)b[2] * (float)b[3];

    // Inputs and expected values transcribed from Lightning-AI/torchmetrics, tests/unittests/detection/test_map.py at
    // commit 78464bbc5 (2023-05-23): `_inputs` (boxes xyxy; "coco image id" 42, 73, 74, 987) and `_compare_fn`, whose
    // docstring gives the official pycocotools summary for them (printed to 3 decimals).
    private static readonly (float[][] Boxes, double[] Scores, long[] Labels)[] TmPreds =
    [
        ([[258.15f, 41.29f, 606.41f, 285.07f]], [0.236], [4]),
        ([[61.00f, 22.75f, 565.00f, 632.42f], [12.66f, 3.32f, 281.26f, 275.23f]], [0.318, 0.726], [3, 2]),
        ([[87.87f, 276.25f, 384.29f, 379.43f], [0.00f, 3.66f, 142.15f, 316.06f], [296.55f, 93.96f, 314.97f, 152.79f],
          [328.94f, 97.05f, 342.49f, 122.98f], [356.62f, 95.47f, 372.33f, 147.55f], [464.08f, 105.09f, 495.74f, 146.99f],
          [276.11f, 103.84f, 291.44f, 150.72f]],
         [0.546, 0.3, 0.407, 0.611, 0.335, 0.805, 0.953], [4, 1, 0, 0, 0, 0, 0]),
        ([[72.92f, 45.96f, 91.23f, 80.57f], [45.17f, 45.34f, 66.28f, 79.83f], [82.28f, 47.04f, 99.66f, 78.50f],
          [59.96f, 46.17f, 80.35f, 80.48f], [75.29f, 23.01f, 91.85f, 50.85f], [71.14f, 1.10f, 96.96f, 28.33f],
          [61.34f, 55.23f, 77.14f, 79.57f], [41.17f, 45.78f, 60.99f, 78.48f], [56.18f, 44.80f, 64.42f, 56.25f]],
         [0.532, 0.204, 0.782, 0.202, 0.883, 0.271, 0.561, 0.204, 0.349], [49, 49, 49, 49, 49, 49, 49, 49, 49]),
    ];

    private static readonly (float[][] Boxes, long[] Labels)[] TmTargets =
    [
        ([[214.1500f, 41.2900f, 562.4100f, 285.0700f]], [4]),
        ([[13.00f, 22.75f, 548.98f, 632.42f], [1.66f, 3.32f, 270.26f, 275.23f]], [2, 2]),
        ([[61.87f, 276.25f, 358.29f, 379.43f], [2.75f, 3.66f, 162.15f, 316.06f], [295.55f, 93.96f, 313.97f, 152.79f],
          [326.94f, 97.05f, 340.49f, 122.98f], [356.62f, 95.47f, 372.33f, 147.55f], [462.08f, 105.09f, 493.74f, 146.99f],
          [277.11f, 103.84f, 292.44f, 150.72f]], [4, 1, 0, 0, 0, 0, 0]),
        ([[72.92f, 45.96f, 91.23f, 80.57f], [50.17f, 45.34f, 71.28f, 79.83f], [81.28f, 47.04f, 98.66f, 78.50f],
          [63.96f, 46.17f, 84.35f, 80.48f], [75.29f, 23.01f, 91.85f, 50.85f], [56.39f, 21.65f, 75.66f, 45.54f],
          [73.14f, 1.10f, 98.96f, 28.33f], [62.34f, 55.23f, 78.14f, 79.57f], [44.17f, 45.78f, 63.99f, 78.48f],
          [58.18f, 44.80f, 66.42f, 56.25f]], [49, 49, 49, 49, 49, 49, 49, 49, 49, 49]),
    ];

    [Test]
    public void TorchmetricsBoxCaseMatchesPycocotools()
    {
        var gts = new List<CocoGroundTruth>();
        var dts = new List<CocoDetection>();
        for (int img = 0; img < TmTargets.Length; img++)
        {
            var (boxes, labels) = TmTargets[img];
            for (int j = 0; j < boxes.Length; j++)
            {
                var b = Xywh(boxes[j][0], boxes[j][1], boxes[j][2], boxes[j][3]);
                gts.Add(new CocoGroundTruth(gts.Count + 1, img, labels[j], b, null, Area(b), false));
            }
            var (pb, ps, pl) = TmPreds[img];
            for (int j = 0; j < pb.Length; j++)
                dts.Add(new CocoDetection(img, pl[j], Xywh(pb[j][0], pb[j][1], pb[j][2], pb[j][3]), null, ps[j]));
        }
        var ev = new CocoEvaluator(gts, [0, 1, 2, 3], [0, 1, 2, 3, 4, 49], CocoIouType.Bbox);
        var r = ev.Evaluate(dts);
        double[] expected = [0.637, 0.859, 0.761, 0.622, 0.800, 0.635, 0.432, 0.652, 0.652, 0.673, 0.800, 0.633];
        var got = r.Summary.ToArray();
        for (int i = 0; i < 12; i++)
            TestContext.Out.WriteLine($"{CocoSummary.Names[i]}: {got[i]:F6} (pycocotools {expected[i]:F3})");
        Assert.That(got, Is.EqualTo(expected).Within(0.0005 + 1e-9), "12 summary numbers, to pycocotools' printed precision");
        // Class 49: the docstring says 0.556, but running pycocotools' own cocoeval.py on these inputs gives 0.55469
        // (checked once with cocoeval.py from cocodataset/cocoapi 8c9bcc3 and a Python transcription of maskApi.c bbIou);
        // torchmetrics compared per-class values with atol 1e-2 only. Its overall AP (the mean of the per-class APs)
        // agrees with both. Hence the wider bound for that one entry.
        double[] perClass = [0.725, 0.800, 0.454, -1.000, 0.650, 0.556];
        var gotPerClass = new long[] { 0, 1, 2, 3, 4, 49 }.Select(r.CategoryAP).ToArray();
        TestContext.Out.WriteLine("per class: " + string.Join(", ", gotPerClass.Select(v => v.ToString("R"))));
        TestContext.Out.WriteLine("summary: " + string.Join(", ", got.Select(v => v.ToString("R"))));
        Assert.That(gotPerClass[..5], Is.EqualTo(perClass[..5]).Within(0.0005 + 1e-9), "per-class AP");
        Assert.That(gotPerClass[5], Is.EqualTo(perClass[5]).Within(0.002), "class 49 (see above)");
    }

    [Test]
    public void SingleBoxAtIou0Point78GivesAp0Point6()
    {
        // torchmetrics README / test_many_detection_thresholds: pred [258,41,606,285] vs target [214,41,562,285]:
        // IoU = 304/392 = 0.7755 reaches the thresholds .50 ... .75 (6 of 10) → AP = 0.6 (pycocotools, default maxDets).
        var gt = new CocoGroundTruth(1, 1, 0, [214, 41, 348, 244], null, 348 * 244, false);
        var r = new CocoEvaluator([gt], [1], [0], CocoIouType.Bbox).Evaluate([new CocoDetection(1, 0, [258, 41, 348, 244], null, 0.536)]);
        Assert.That(r.Summary.AP, Is.EqualTo(0.6).Within(1e-12));
        Assert.That(r.Summary.AP50, Is.EqualTo(1.0).Within(1e-12));
        Assert.That(r.Summary.AP75, Is.EqualTo(1.0).Within(1e-12));
        Assert.That(r.Summary.AR100, Is.EqualTo(0.6).Within(1e-12));
        Assert.That(r.Summary.APSmall, Is.EqualTo(-1), "no small ground truth");
    }

    private static (List<CocoGroundTruth> Gts, List<CocoDetection> Perfect) SmallMediumLarge()
    {
        var gts = new List<CocoGroundTruth>();
        var dts = new List<CocoDetection>();
        double[][] boxes = [[10, 10, 20, 20], [100, 100, 50, 50], [300, 300, 150, 120]]; // areas 400, 2500, 18000
        for (int i = 0; i < boxes.Length; i++)
        {
            gts.Add(new CocoGroundTruth(i + 1, 7, 3, boxes[i], null, boxes[i][2] * boxes[i][3], false));
            dts.Add(new CocoDetection(7, 3, boxes[i], null, 0.9 - 0.1 * i));
        }
        return (gts, dts);
    }

    [Test]
    public void PerfectPredictionsScoreOneEverywhere()
    {
        var (gts, dts) = SmallMediumLarge();
        var s = new CocoEvaluator(gts, [7], [3], CocoIouType.Bbox).Evaluate(dts).Summary;
        Assert.That(new[] { s.AP, s.AP50, s.AP75, s.APSmall, s.APMedium, s.APLarge, s.AR10, s.AR100, s.ARSmall, s.ARMedium, s.ARLarge }, Has.All.EqualTo(1.0).Within(1e-12), "precision = tp / (tp + fp + np.spacing(1)) is 1 − 2e-16");
        Assert.That(s.AR1, Is.EqualTo(1.0 / 3).Within(1e-12), "one detection per image finds 1 of 3");
    }

    [Test]
    public void NoPredictionsScoreZeroAndNoGroundTruthScoresMinusOne()
    {
        var (gts, _) = SmallMediumLarge();
        var none = new CocoEvaluator(gts, [7], [3], CocoIouType.Bbox).Evaluate([]).Summary;
        Assert.That(none.ToArray(), Has.All.EqualTo(0.0));
        var empty = new CocoEvaluator([], [7], [3], CocoIouType.Bbox).Evaluate([new CocoDetection(7, 3, [1, 1, 5, 5], null, 0.5)]).Summary;
        Assert.That(empty.ToArray(), Has.All.EqualTo(-1.0));
    }

    [Test]
    public void DetectionsOnACrowdAreIgnoredNotFalsePositives()
    {
        var gts = new List<CocoGroundTruth>
        {
            new(1, 1, 0, [0, 0, 10, 10], null, 100, false),
            new(2, 1, 0, [50, 50, 40, 40], null, 1600, true), // crowd region
        };
        // the top-scored detection lies inside the crowd (IoU against a crowd = intersection / detection area = 1)
        var dts = new List<CocoDetection> { new(1, 0, [55, 55, 10, 10], null, 0.9), new(1, 0, [0, 0, 10, 10], null, 0.8) };
        var s = new CocoEvaluator(gts, [1], [0], CocoIouType.Bbox).Evaluate(dts).Summary;
        Assert.That(s.AP, Is.EqualTo(1.0).Within(1e-12));
        // without the crowd flag the same detection is a false positive ranked first: precision 1/2 at recall 1
        var plain = new CocoEvaluator([gts[0]], [1], [0], CocoIouType.Bbox).Evaluate(dts).Summary;
        Assert.That(plain.AP, Is.EqualTo(0.5).Within(1e-12));
    }

    private static CocoRle Rect(int x0, int y0, int x1, int y1, int h = 40, int w = 40)
    {
        var m = new byte[h * w];
        for (int y = y0; y < y1; y++) for (int x = x0; x < x1; x++) m[y * w + x] = 1;
        return CocoRle.Encode(m, h, w);
    }

    [Test]
    public void MaskIouAndMaskAp()
    {
        // 10×10 square vs the same square shifted by 5 columns: intersection 50, union 150
        var iou = CocoIou.Masks([Rect(5, 0, 15, 10)], [Rect(0, 0, 10, 10)], [false]);
        Assert.That(iou[0, 0], Is.EqualTo(50.0 / 150.0).Within(1e-15));
        var crowdIou = CocoIou.Masks([Rect(5, 0, 15, 10)], [Rect(0, 0, 10, 10)], [true]);
        Assert.That(crowdIou[0, 0], Is.EqualTo(50.0 / 100.0).Within(1e-15), "crowd: intersection / detection area");
        var gt = new CocoGroundTruth(1, 1, 0, [0, 0, 10, 10], Rect(0, 0, 10, 10), 100, false);
        var perfect = new CocoEvaluator([gt], [1], [0], CocoIouType.Segm).Evaluate([new CocoDetection(1, 0, null, Rect(0, 0, 10, 10), 0.7)]);
        Assert.That(perfect.Summary.AP, Is.EqualTo(1.0).Within(1e-12));
        // IoU 0.81 (9×9 inside 10×10 → 81/100): thresholds .50 … .80 reached (7 of 10) → AP 0.7
        var r = new CocoEvaluator([gt], [1], [0], CocoIouType.Segm).Evaluate([new CocoDetection(1, 0, null, Rect(0, 0, 9, 9), 0.7)]);
        Assert.That(r.Summary.AP, Is.EqualTo(0.7).Within(1e-12));
    }

    [Test]
    public void GroundTruthIdZeroQuirkIsReproducedAndCanBeCorrected()
    {
        var gt = new CocoGroundTruth(0, 1, 0, [0, 0, 10, 10], null, 100, false);
        var det = new CocoDetection(1, 0, [0, 0, 10, 10], null, 0.9);
        var ev = new CocoEvaluator([gt], [1], [0], CocoIouType.Bbox);
        Assert.That(ev.Evaluate([det]).Summary.AP, Is.EqualTo(0.0), "pycocotools: a match to id 0 reads as no match");
        Assert.That(ev.Evaluate([det], new CocoEvalParams { ZeroIdMatchQuirk = false }).Summary.AP, Is.EqualTo(1.0).Within(1e-12));
    }

    [Test]
    public void LinearSumAssignmentMatchesScipy()
    {
        // scipy.optimize.linear_sum_assignment docstring example: rows [0 1 2], cols [1 0 2], cost 5
        var (r, c) = LinearSumAssignment.Solve(new double[,] { { 4, 1, 3 }, { 2, 0, 5 }, { 3, 2, 2 } });
        Assert.That(r, Is.EqualTo(new[] { 0, 1, 2 }));
        Assert.That(c, Is.EqualTo(new[] { 1, 0, 2 }));
        // maximise where greedy fails: 0.8 + 0.85 > 0.9 + 0.1
        (r, c) = LinearSumAssignment.Solve(new double[,] { { 0.9, 0.8 }, { 0.85, 0.1 } }, maximize: true);
        Assert.That(c, Is.EqualTo(new[] { 1, 0 }));
        // more rows than columns: every column used once, the best rows chosen, rows ascending
        (r, c) = LinearSumAssignment.Solve(new double[,] { { 5, 9 }, { 1, 8 }, { 7, 2 } });
        Assert.That(r, Is.EqualTo(new[] { 1, 2 }));
        Assert.That(c, Is.EqualTo(new[] { 0, 1 }));
    }

    private static CocoGroundTruth Gt(long id, double[] b) => new(id, 1, 0, b, null, b[2] * b[3], false);

    [Test]
    public void CgF1FollowsUpstreamDefinitions()
    {
        var ev = new CgF1Evaluator(CocoIouType.Bbox);
        // a positive pair found exactly, a negative pair left empty: every count perfect
        var perfect = ev.Evaluate([
            new CgF1Sample(1, [Gt(1, [0, 0, 10, 10])], [new CocoDetection(1, 0, [0, 0, 10, 10], null, 0.9)]),
            new CgF1Sample(2, [], [new CocoDetection(2, 0, [0, 0, 10, 10], null, 0.3)]), // below the 0.5 score threshold
        ]);
        double p = 1 / (1 + 1e-4), f1 = 2 * p * p / (p + p + 1e-4), mcc = 1 / (1 + 1e-6);
        Assert.That(perfect["IL_MCC"], Is.EqualTo(mcc).Within(1e-15));
        Assert.That(perfect["positive_micro_F1"], Is.EqualTo(f1).Within(1e-15));
        Assert.That(perfect.CgF1, Is.EqualTo(f1 * mcc).Within(1e-15));
        Assert.That(perfect["cgF1@0.5"], Is.EqualTo(f1 * mcc).Within(1e-15));
        Assert.That(perfect.Stats, Has.Count.EqualTo(26));

        // pair 1: 2 ground truths, detections with IoU 1 and IoU 0.6 (matched by the assignment) + one spurious;
        // pair 2: negative with a confident false detection.
        var r = ev.Evaluate([
            new CgF1Sample(1, [Gt(1, [0, 0, 10, 10]), Gt(2, [100, 100, 10, 10])],
                [new CocoDetection(1, 0, [0, 0, 10, 10], null, 0.9), new CocoDetection(1, 0, [100, 100, 10, 6], null, 0.8),
                 new CocoDetection(1, 0, [200, 200, 5, 5], null, 0.7)]),
            new CgF1Sample(2, [], [new CocoDetection(2, 0, [0, 0, 10, 10], null, 0.95)]),
        ]);
        // image level: TP 1, FP 1, TN 0, FN 0 → MCC = (0 − 0) / (…) = 0 → cgF1 = 0
        Assert.That(r["IL_MCC"], Is.EqualTo(0.0));
        Assert.That(r.CgF1, Is.EqualTo(0.0));
        Assert.That(r["IL_precision"], Is.EqualTo(1 / (2 + 1e-6)).Within(1e-15));
        // box level at IoU .5: TP 2, FP 1 (+1 on the negative pair), FN 0; at .75: TP 1, FP 2 (+1), FN 1
        double P50 = 2 / (2 + 2 + 1e-4), R50 = 2 / (2 + 0 + 1e-4);
        Assert.That(r["precision@0.5"], Is.EqualTo(P50).Within(1e-15));
        Assert.That(r["recall@0.5"], Is.EqualTo(R50).Within(1e-15));
        double pmP75 = 1 / (1 + 2 + 1e-4), R75 = 1 / (1 + 1 + 1e-4);
        Assert.That(r["positive_micro_precision@0.75"], Is.EqualTo(pmP75).Within(1e-15));
        Assert.That(r["positive_micro_F1@0.75"], Is.EqualTo(2 * pmP75 * R75 / (pmP75 + R75 + 1e-4)).Within(1e-15));
    }

    [Test]
    public void EvaluationSetFromAnAnnotationFile()
    {
        string dir = Directory.CreateTempSubdirectory("sam3-eval-").FullName;
        try
        {
            string json = Path.Combine(dir, "ann.json");
            File.WriteAllText(json, """
                {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}, {"id": 2, "file_name": "b.png", "width": 40, "height": 30}],
                 "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
                 "annotations": [
                   {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
                   {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 10], "area": 200, "iscrowd": 0, "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15]]}]}
                """);
            var file = Sam3.Torch.Training.Data.CocoAnnotationFile.Load(json, dir, new Sam3.Torch.Training.Data.CocoReadOptions { CheckImageFiles = false });
            var set = CocoEvaluationSet.FromAnnotations(file);
            Assert.That(set.HasMasks, Is.True);
            Assert.That(set.CgF1Samples([]), Has.Count.EqualTo(4), "every (image, category) pair");
            var perfect = set.GroundTruths.Select(g => new CocoDetection(g.ImageId, g.CategoryId, g.Bbox, g.Mask, 0.9)).ToList();
            var r = set.Evaluate(perfect);
            TestContext.Out.WriteLine(r.Format("perfect"));
            Assert.That(r.Box.AP, Is.EqualTo(1.0).Within(1e-12));
            Assert.That(r.Mask!.AP, Is.EqualTo(1.0).Within(1e-12));
            // 2 positive pairs found, 2 negative pairs empty: IL MCC = 4 / (sqrt(16) + 1e-6)
            Assert.That(r.CgF1Mask!["IL_MCC"], Is.EqualTo(4 / (4 + 1e-6)).Within(1e-15));
            var none = set.Evaluate([]);
            Assert.That(none.Box.AP, Is.EqualTo(0.0));
            Assert.That(none.CgF1Box.CgF1, Is.EqualTo(0.0), "no detection: MCC numerator 0");
        }
        finally { Directory.Delete(dir, true); }
    }
}
