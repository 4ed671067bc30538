using Sam3.Torch.Training.Matching;
namespace Sam3.Torch.Training.Evaluation;

/// <summary>
/// One evaluated (image, noun phrase) pair of cgF1: the ground truths of that phrase in that image (crowds are
/// ignored) and the model's detections for it. An empty <see cref="GroundTruths"/> makes it a negative pair.
/// </summary>
internal sealed record CgF1Sample(long Id, IReadOnlyList<CocoGroundTruth> GroundTruths, IReadOnlyList<CocoDetection> Detections);

/// <summary>A metric of upstream's <c>CGF1_METRICS</c>: box-level ones averaged over the IoU thresholds [.5:.95] (null) or at one threshold; image-level ones scalar.</summary>
internal sealed record CgF1Metric(string Name, bool ImageLevel, double? IouThreshold)
{
    /// <summary>The key upstream prints (<c>name</c> or <c>name@thr</c>).</summary>
    public string Key => IouThreshold is { } t ? $"{Name}@{t.ToString(System.Globalization.CultureInfo.InvariantCulture)}" : Name;
}

/// <summary>The 26 numbers of upstream's <c>CGF1Eval.summarize()</c>, in <see cref="CgF1Evaluator.Metrics"/> order.</summary>
internal sealed record CgF1Result(IReadOnlyList<(CgF1Metric Metric, double Value)> Stats)
{
    public double this[string key] => Stats.First(s => s.Metric.Key == key).Value;
    /// <summary>cgF1 averaged over the IoU thresholds: positive micro F1 × image-level MCC.</summary>
    public double CgF1 => this["cgF1"];
}

/// <summary>
/// cgF1 exactly as upstream's sam3/eval/cgf1_eval.py (<c>CGF1Eval</c> with one ground truth, <c>useCats=False</c>):
/// per pair, detections with score ≥ <see cref="ScoreThreshold"/> are matched one-to-one to the non-crowd ground
/// truths by a maximum-IoU assignment (scipy's <c>linear_sum_assignment</c>, <see cref="LinearSumAssignment"/>), a
/// match counting as a true positive at each IoU threshold it reaches; the pair is also classified at image level
/// (any detection vs any ground truth). Accumulated: micro precision/recall/F1 (+1e-4 in denominators), positive-only
/// variants, macro F1 over positive pairs, image-level precision/recall/F1/FPR/MCC (+1e-6), and
/// cgF1 = positive_micro_F1 · IL_MCC; per-threshold arrays averaged over entries > −1 (NaN excluded) as upstream.
/// </summary>
internal sealed class CgF1Evaluator(CocoIouType iouType, double scoreThreshold = 0.5)
{
    public CocoIouType IouType { get; } = iouType;
    public double ScoreThreshold { get; } = scoreThreshold;
    public double[] IouThresholds { get; init; } = CocoEvalParams.Linspace(0.5, 0.95, 10);

    public static IReadOnlyList<CgF1Metric> Metrics { get; } = BuildMetrics();

    private static List<CgF1Metric> BuildMetrics()
    {
        string[] box = ["cgF1", "precision", "recall", "F1", "positive_macro_F1", "positive_micro_F1", "positive_micro_precision"];
        var list = new List<CgF1Metric>();
        list.AddRange(box.Select(n => new CgF1Metric(n, false, null)));
        list.AddRange(new[] { "IL_precision", "IL_recall", "IL_F1", "IL_FPR", "IL_MCC" }.Select(n => new CgF1Metric(n, true, null)));
        list.AddRange(box.Select(n => new CgF1Metric(n, false, 0.5)));
        list.AddRange(box.Select(n => new CgF1Metric(n, false, 0.75)));
        return list;
    }

    private sealed record PairEval(int ILTP, int ILTN, int ILFP, int ILFN, long[]? TPs, long[]? FPs, long[]? FNs, double[]? PositiveF1s, int NumDt);

    private PairEval EvaluatePair(CgF1Sample s)
    {
        int T = IouThresholds.Length;
        // useCats=False: ground truths and detections category by category (sorted ids), file order within
        var allGt = s.GroundTruths.Select((g, i) => (g, i)).OrderBy(x => x.g.CategoryId).ThenBy(x => x.i).Select(x => x.g).ToList();
        var allDt = s.Detections.Select((d, i) => (d, i)).OrderBy(x => x.d.CategoryId).ThenBy(x => x.i).Select(x => x.d).ToList();
        var keepGt = allGt.Select(g => !g.IsCrowd).ToArray();
        var keepDt = allDt.Select(d => d.Score >= ScoreThreshold).ToArray();
        int G = keepGt.Count(x => x), D = keepDt.Count(x => x);
        if (G == 0 && D == 0) return new PairEval(0, 1, 0, 0, null, null, null, null, D);
        if (G > 0 && D == 0)
            return new PairEval(0, 0, 0, 1, new long[T], new long[T], Enumerable.Repeat((long)G, T).ToArray(), null, D);

        var ious = new double[D, G];
        if (allGt.Count > 0 && allDt.Count > 0)
        {
            var crowd = allGt.Select(g => g.IsCrowd).ToArray();
            double[,] full = IouType == CocoIouType.Bbox
                ? CocoIou.Boxes(allDt.Select(d => d.Bbox ?? d.Mask?.ToBbox() ?? throw new ArgumentException($"pair {s.Id}: a detection has neither box nor mask")).ToList(), allGt.Select(g => g.Bbox).ToList(), crowd)
                : CocoIou.Masks(allDt.Select(d => d.Mask ?? throw new ArgumentException($"pair {s.Id}: mask evaluation needs detection masks")).ToList(),
                    allGt.Select(g => g.Mask ?? throw new ArgumentException($"pair {s.Id}: ground truth {g.Id} has no mask")).ToList(), crowd);
            int di = 0;
            for (int d = 0; d < allDt.Count; d++)
            {
                if (!keepDt[d]) continue;
                int gi = 0;
                for (int g = 0; g < allGt.Count; g++)
                {
                    if (!keepGt[g]) continue;
                    ious[di, gi++] = full[d, g];
                }
                di++;
            }
        }
        var neg = new double[D, G];
        for (int d = 0; d < D; d++) for (int g = 0; g < G; g++) neg[d, g] = -ious[d, g];
        var (rows, cols) = LinearSumAssignment.Solve(neg);
        var scores = rows.Select((r, k) => ious[(int)r, (int)cols[k]]).ToArray();
        var tps = new long[T]; var fps = new long[T]; var fns = new long[T];
        var f1 = new double[T];
        for (int t = 0; t < T; t++)
        {
            long tp = scores.Count(x => x >= IouThresholds[t]);
            tps[t] = tp; fps[t] = D - tp; fns[t] = G - tp;
            double precision = tp / (tp + fps[t] + 1e-4), recall = tp / (tp + fns[t] + 1e-4);
            f1[t] = 2 * precision * recall / (precision + recall + 1e-4);
        }
        bool positive = G > 0 && D > 0;
        return new PairEval(positive ? 1 : 0, 0, G == 0 && D > 0 ? 1 : 0, 0, tps, fps, fns, positive ? f1 : null, D);
    }

    public CgF1Result Evaluate(IReadOnlyList<CgF1Sample> samples)
    {
        int T = IouThresholds.Length;
        var TPs = new long[T]; var FPs = new long[T]; var pmFPs = new long[T]; var FNs = new long[T];
        var localF1s = new double[T];
        long ilTP = 0, ilFP = 0, ilTN = 0, ilFN = 0;
        int validF1 = 0;
        foreach (var s in samples)
        {
            var r = EvaluatePair(s);
            ilTP += r.ILTP; ilFP += r.ILFP; ilTN += r.ILTN; ilFN += r.ILFN;
            if (r.TPs == null) continue;
            for (int t = 0; t < T; t++) { TPs[t] += r.TPs[t]; FPs[t] += r.FPs![t]; FNs[t] += r.FNs![t]; }
            if (r.PositiveF1s != null)
            {
                for (int t = 0; t < T; t++) { localF1s[t] += r.PositiveF1s[t]; pmFPs[t] += r.FPs![t]; }
                if (r.NumDt > 0) validF1++;
            }
        }
        var precision = new double[T]; var pmPrecision = new double[T]; var recall = new double[T];
        var f1 = new double[T]; var pmF1 = new double[T]; var macroF1 = new double[T]; var cg = new double[T];
        double ilRec = ilTP / (ilTP + ilFN + 1e-6), ilPrec = ilTP / (ilTP + ilFP + 1e-6);
        double ilF1 = 2 * ilPrec * ilRec / (ilPrec + ilRec + 1e-6);
        double ilFpr = ilFP / (ilFP + ilTN + 1e-6);
        double ilMcc = ((double)ilTP * ilTN - (double)ilFP * ilFN) /
            (Math.Sqrt((double)(ilTP + ilFP) * (double)(ilTP + ilFN) * (double)(ilTN + ilFP) * (double)(ilTN + ilFN)) + 1e-6);
        for (int t = 0; t < T; t++)
        {
            precision[t] = TPs[t] / (TPs[t] + FPs[t] + 1e-4);
            pmPrecision[t] = TPs[t] / (TPs[t] + pmFPs[t] + 1e-4);
            recall[t] = TPs[t] / (TPs[t] + FNs[t] + 1e-4);
            f1[t] = 2 * precision[t] * recall[t] / (precision[t] + recall[t] + 1e-4);
            pmF1[t] = 2 * pmPrecision[t] * recall[t] / (pmPrecision[t] + recall[t] + 1e-4);
            macroF1[t] = localF1s[t] / validF1; // NaN when no positive pair had detections, as numpy
            cg[t] = pmF1[t] * ilMcc;
        }
        var arrays = new Dictionary<string, double[]>
        {
            ["cgF1"] = cg, ["precision"] = precision, ["recall"] = recall, ["F1"] = f1, ["positive_macro_F1"] = macroF1,
            ["positive_micro_F1"] = pmF1, ["positive_micro_precision"] = pmPrecision,
        };
        var scalars = new Dictionary<string, double>
        {
            ["IL_precision"] = ilPrec, ["IL_recall"] = ilRec, ["IL_F1"] = ilF1, ["IL_FPR"] = ilFpr, ["IL_MCC"] = ilMcc,
        };
        var stats = new List<(CgF1Metric, double)>();
        foreach (var m in Metrics)
        {
            if (m.ImageLevel) { stats.Add((m, scalars[m.Name])); continue; }
            var arr = arrays[m.Name];
            var sel = m.IouThreshold is { } thr ? Enumerable.Range(0, T).Where(t => IouThresholds[t] == thr).Select(t => arr[t]) : arr;
            var vals = sel.Where(v => v > -1).ToList(); // NaN > -1 is false: excluded, as numpy's s[s > -1]
            stats.Add((m, vals.Count == 0 ? -1 : CocoEvaluator.MeanLikeNumpy(vals)));
        }
        return new CgF1Result(stats);
    }
}
