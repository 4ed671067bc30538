namespace Sam3.Torch.Training.Evaluation;

/// <summary>The 12 numbers of COCOeval's <c>summarize()</c> for boxes or masks (−1 where undefined, as pycocotools).</summary>
internal sealed record CocoSummary(double AP, double AP50, double AP75, double APSmall, double APMedium, double APLarge,
    double AR1, double AR10, double AR100, double ARSmall, double ARMedium, double ARLarge)
{
    public double[] ToArray() => [AP, AP50, AP75, APSmall, APMedium, APLarge, AR1, AR10, AR100, ARSmall, ARMedium, ARLarge];

    public static IReadOnlyList<string> Names { get; } =
        ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];
}

/// <summary>COCOeval's accumulated arrays: precision [T, R, K, A, M] and recall [T, K, A, M] (−1 = no ground truth).</summary>
internal sealed record CocoEvalResult(CocoEvalParams Params, long[] CategoryIds, double[,,,,] Precision, double[,,,] Recall, CocoSummary Summary)
{
    /// <summary>AP@[.5:.95] of one category (area all, maxDets 100), −1 when it has no ground truth.</summary>
    public double CategoryAP(long categoryId)
    {
        int k = Array.IndexOf(CategoryIds, categoryId);
        if (k < 0) throw new ArgumentException($"category {categoryId} was not evaluated", nameof(categoryId));
        var vals = new List<double>();
        int m = Array.IndexOf(Params.MaxDets, 100);
        for (int t = 0; t < Precision.GetLength(0); t++)
            for (int r = 0; r < Precision.GetLength(1); r++)
                if (Precision[t, r, k, 0, m] > -1) vals.Add(Precision[t, r, k, 0, m]);
        return vals.Count == 0 ? -1 : CocoEvaluator.MeanLikeNumpy(vals);
    }
}

/// <summary>
/// A port of pycocotools' <c>COCOeval</c> (PythonAPI/pycocotools/cocoeval.py) for boxes and masks: per image and
/// category, detections sorted by score (stable) and cut at the largest maxDets are greedily matched to the best
/// still-free ground truth above each IoU threshold (crowd ground truths may be matched repeatedly and, like ground
/// truths outside the area range, make their detections ignored); then per category, area range and maxDets the
/// precision at the 101 recall points (precision made monotone, <c>searchsorted</c> left) and the final recall; the
/// 12 summary numbers average over the entries > −1. Results equal pycocotools' (same loops, same float order).
/// </summary>
internal sealed class CocoEvaluator
{
    private readonly IReadOnlyList<CocoGroundTruth> _gts;
    private readonly long[] _imageIds;
    private readonly long[] _categoryIds;
    public CocoIouType IouType { get; }

    /// <summary>numpy <c>np.spacing(1)</c>, the epsilon pycocotools adds to the precision denominator.</summary>
    private const double NumpySpacing1 = 2.220446049250313e-16;

    /// <param name="groundTruths">All ground-truth annotations.</param>
    /// <param name="imageIds">Every image of the ground-truth set (pycocotools evaluates all of them, with or without annotations).</param>
    /// <param name="categoryIds">Every category of the ground-truth set.</param>
    public CocoEvaluator(IReadOnlyList<CocoGroundTruth> groundTruths, IEnumerable<long> imageIds, IEnumerable<long> categoryIds, CocoIouType iouType)
    {
        _gts = groundTruths;
        _imageIds = imageIds.Distinct().Order().ToArray();
        _categoryIds = categoryIds.Distinct().Order().ToArray();
        IouType = iouType;
        var imgSet = _imageIds.ToHashSet();
        foreach (var g in _gts)
        {
            if (!imgSet.Contains(g.ImageId)) throw new ArgumentException($"ground truth {g.Id} is on image {g.ImageId}, which is not in the image list", nameof(groundTruths));
            if (iouType == CocoIouType.Segm && g.Mask == null) throw new ArgumentException($"mask evaluation: ground truth {g.Id} has no mask", nameof(groundTruths));
        }
    }

    private sealed class Dt
    {
        public long Id;
        public required CocoDetection D;
        public double Area;
    }

    private sealed class ImgEval
    {
        public required double[] DtScores;
        public required double[,] DtMatches; // [T, D] matched gt id (0 = none)
        public required bool[,] DtIgnore;    // [T, D]
        public required bool[] GtIgnore;     // [G]
    }

    /// <summary>pycocotools <c>loadRes</c>: ids 1..n in order; area = box w·h when the first result has a box, else the mask area (box from the mask).</summary>
    private List<Dt> LoadResults(IReadOnlyList<CocoDetection> dets)
    {
        var imgSet = _imageIds.ToHashSet();
        var list = new List<Dt>(dets.Count);
        if (dets.Count == 0) return list;
        bool byBox = dets[0].Bbox is { Length: > 0 };
        for (int i = 0; i < dets.Count; i++)
        {
            var d = dets[i];
            if (!imgSet.Contains(d.ImageId)) throw new ArgumentException($"detection {i} is on image {d.ImageId}, which is not in the ground-truth set", nameof(dets));
            double area;
            if (byBox)
            {
                var b = d.Bbox ?? throw new ArgumentException($"detection {i} has no box while the first one has", nameof(dets));
                area = b[2] * b[3];
            }
            else
            {
                var m = d.Mask ?? throw new ArgumentException($"detection {i} has neither box nor mask", nameof(dets));
                area = m.Area();
                d = d with { Bbox = m.ToBbox() };
            }
            if (IouType == CocoIouType.Segm && d.Mask == null) throw new ArgumentException($"mask evaluation: detection {i} has no mask", nameof(dets));
            list.Add(new Dt { Id = i + 1, D = d, Area = area });
        }
        return list;
    }

    public CocoEvalResult Evaluate(IReadOnlyList<CocoDetection> detections, CocoEvalParams? p = null)
    {
        p ??= new CocoEvalParams();
        var maxDets = p.MaxDets.Order().ToArray();
        var catIds = p.UseCategories ? _categoryIds : [-1L];
        var dts = LoadResults(detections);

        // _prepare: group by (image, category) in file / result order
        var gtsBy = new Dictionary<(long, long), List<CocoGroundTruth>>();
        var dtsBy = new Dictionary<(long, long), List<Dt>>();
        var catSet = _categoryIds.ToHashSet();
        var imgOrder = _imageIds.Select((id, i) => (id, i)).ToDictionary(x => x.id, x => x.i);
        foreach (var g in _gts.OrderBy(g => imgOrder[g.ImageId]))   // getAnnIds: image order, then file order (stable)
        {
            if (p.UseCategories && !catSet.Contains(g.CategoryId)) continue;
            if (!gtsBy.TryGetValue((g.ImageId, g.CategoryId), out var l)) gtsBy[(g.ImageId, g.CategoryId)] = l = [];
            l.Add(g);
        }
        foreach (var d in dts.OrderBy(d => imgOrder[d.D.ImageId]))
        {
            if (p.UseCategories && !catSet.Contains(d.D.CategoryId)) continue;
            if (!dtsBy.TryGetValue((d.D.ImageId, d.D.CategoryId), out var l)) dtsBy[(d.D.ImageId, d.D.CategoryId)] = l = [];
            l.Add(d);
        }
        List<CocoGroundTruth> Gts(long img, long cat) => p.UseCategories
            ? gtsBy.GetValueOrDefault((img, cat)) ?? []
            : _categoryIds.SelectMany(c => gtsBy.GetValueOrDefault((img, c)) ?? []).ToList();
        List<Dt> Dts(long img, long cat) => p.UseCategories
            ? dtsBy.GetValueOrDefault((img, cat)) ?? []
            : _categoryIds.SelectMany(c => dtsBy.GetValueOrDefault((img, c)) ?? []).ToList();

        int maxDet = maxDets[^1];
        int T = p.IouThresholds.Length, R = p.RecallThresholds.Length, K = catIds.Length, A = p.AreaRanges.Length, M = maxDets.Length, I = _imageIds.Length;
        var evalImgs = new ImgEval?[K, A, I];
        for (int k = 0; k < K; k++)
            for (int i = 0; i < I; i++)
            {
                long img = _imageIds[i], cat = catIds[k];
                var gt = Gts(img, cat);
                var dt = Dts(img, cat);
                if (gt.Count == 0 && dt.Count == 0) continue;
                // computeIoU: detections sorted by score (stable), cut at maxDets[-1]
                var dtSorted = dt.Select((d, idx) => (d, idx)).OrderBy(x => -x.d.D.Score).ThenBy(x => x.idx).Select(x => x.d).Take(maxDet).ToList();
                double[,]? ious = ComputeIou(dtSorted, gt);
                for (int a = 0; a < A; a++) evalImgs[k, a, i] = EvaluateImg(gt, dtSorted, ious, p.AreaRanges[a], maxDet, p);
            }

        // accumulate
        var precision = new double[T, R, K, A, M];
        var recall = new double[T, K, A, M];
        Fill(precision, -1); Fill(recall, -1);
        for (int k = 0; k < K; k++)
            for (int a = 0; a < A; a++)
                for (int m = 0; m < M; m++)
                {
                    int md = maxDets[m];
                    var E = new List<ImgEval>();
                    for (int i = 0; i < I; i++) if (evalImgs[k, a, i] is { } e) E.Add(e);
                    if (E.Count == 0) continue;
                    var scores = new List<double>();
                    var rows = new List<(int E, int D)>();
                    for (int e = 0; e < E.Count; e++)
                        for (int d = 0; d < Math.Min(md, E[e].DtScores.Length); d++) { scores.Add(E[e].DtScores[d]); rows.Add((e, d)); }
                    var inds = Enumerable.Range(0, scores.Count).OrderBy(x => -scores[x]).ThenBy(x => x).ToArray(); // mergesort = stable
                    long npig = E.Sum(e => (long)e.GtIgnore.Count(x => !x));
                    if (npig == 0) continue;
                    int nd = inds.Length;
                    for (int t = 0; t < T; t++)
                    {
                        var pr = new double[nd];
                        var rc = new double[nd];
                        double tp = 0, fp = 0;
                        for (int j = 0; j < nd; j++)
                        {
                            var (e, d) = rows[inds[j]];
                            bool matched = E[e].DtMatches[t, d] != 0, ignored = E[e].DtIgnore[t, d];
                            if (matched && !ignored) tp += 1;
                            if (!matched && !ignored) fp += 1;
                            rc[j] = tp / npig;
                            pr[j] = tp / (fp + tp + NumpySpacing1);
                        }
                        recall[t, k, a, m] = nd > 0 ? rc[nd - 1] : 0;
                        for (int j = nd - 1; j > 0; j--) if (pr[j] > pr[j - 1]) pr[j - 1] = pr[j];
                        for (int ri = 0; ri < R; ri++)
                        {
                            int pi = LowerBound(rc, p.RecallThresholds[ri]);
                            if (pi >= nd) break; // pycocotools: IndexError caught, the rest stays 0
                            precision[t, ri, k, a, m] = pr[pi];
                        }
                        for (int ri = 0; ri < R; ri++) if (precision[t, ri, k, a, m] < 0) precision[t, ri, k, a, m] = 0;
                    }
                }

        var summary = Summarize(precision, recall, p, maxDets);
        return new CocoEvalResult(p with { MaxDets = maxDets }, catIds, precision, recall, summary);
    }

    private double[,]? ComputeIou(List<Dt> dt, List<CocoGroundTruth> gt)
    {
        if (dt.Count == 0 || gt.Count == 0) return null;
        var crowd = gt.Select(g => g.IsCrowd).ToArray();
        return IouType == CocoIouType.Bbox
            ? CocoIou.Boxes(dt.Select(d => d.D.Bbox!).ToList(), gt.Select(g => g.Bbox).ToList(), crowd)
            : CocoIou.Masks(dt.Select(d => d.D.Mask!).ToList(), gt.Select(g => g.Mask!).ToList(), crowd);
    }

    private static ImgEval EvaluateImg(List<CocoGroundTruth> gtIn, List<Dt> dtSorted, double[,]? iousIn, (double Min, double Max) aRng, int maxDet, CocoEvalParams p)
    {
        int G = gtIn.Count;
        // gt ignore: crowd (pycocotools overwrites any 'ignore' field with iscrowd) or outside the area range; ignored last (stable)
        var gIgnore = gtIn.Select(g => g.IsCrowd || g.Area < aRng.Min || g.Area > aRng.Max).ToArray();
        var gtind = Enumerable.Range(0, G).OrderBy(x => gIgnore[x] ? 1 : 0).ThenBy(x => x).ToArray();
        var gt = gtind.Select(x => gtIn[x]).ToArray();
        var gtIg = gtind.Select(x => gIgnore[x]).ToArray();
        var dt = dtSorted.Take(maxDet).ToArray();
        int T = p.IouThresholds.Length, D = dt.Length;
        var gtm = new double[T, G];
        var dtm = new double[T, D];
        var dtIg = new bool[T, D];
        if (iousIn != null)
        {
            for (int t = 0; t < T; t++)
                for (int d = 0; d < D; d++)
                {
                    double iou = Math.Min(p.IouThresholds[t], 1 - 1e-10);
                    int m = -1;
                    for (int g = 0; g < G; g++)
                    {
                        if (gtm[t, g] > 0 && !gt[g].IsCrowd) continue;
                        if (m > -1 && !gtIg[m] && gtIg[g]) break;
                        double v = iousIn[d, gtind[g]];
                        if (v < iou) continue;
                        iou = v;
                        m = g;
                    }
                    if (m == -1) continue;
                    dtIg[t, d] = gtIg[m];
                    dtm[t, d] = p.ZeroIdMatchQuirk ? gt[m].Id : m + 1;
                    gtm[t, m] = dt[d].Id;
                }
        }
        for (int d = 0; d < D; d++)
        {
            bool outside = dt[d].Area < aRng.Min || dt[d].Area > aRng.Max;
            for (int t = 0; t < T; t++) dtIg[t, d] = dtIg[t, d] || (dtm[t, d] == 0 && outside);
        }
        return new ImgEval { DtScores = dt.Select(x => x.D.Score).ToArray(), DtMatches = dtm, DtIgnore = dtIg, GtIgnore = gtIg };
    }

    /// <summary>numpy searchsorted(side='left'): first index with a[i] ≥ v.</summary>
    private static int LowerBound(double[] a, double v)
    {
        int lo = 0, hi = a.Length;
        while (lo < hi) { int mid = (lo + hi) >> 1; if (a[mid] < v) lo = mid + 1; else hi = mid; }
        return lo;
    }

    private static void Fill(Array a, double v)
    {
        switch (a)
        {
            case double[,,,,] p: foreach (var i in Indices(p)) p[i.Item1, i.Item2, i.Item3, i.Item4, i.Item5] = v; break;
            case double[,,,] r: for (int t = 0; t < r.GetLength(0); t++) for (int k = 0; k < r.GetLength(1); k++) for (int x = 0; x < r.GetLength(2); x++) for (int m = 0; m < r.GetLength(3); m++) r[t, k, x, m] = v; break;
        }
    }

    private static IEnumerable<(int, int, int, int, int)> Indices(double[,,,,] p)
    {
        for (int a = 0; a < p.GetLength(0); a++) for (int b = 0; b < p.GetLength(1); b++) for (int c = 0; c < p.GetLength(2); c++)
                    for (int d = 0; d < p.GetLength(3); d++) for (int e = 0; e < p.GetLength(4); e++) yield return (a, b, c, d, e);
    }

    /// <summary>pycocotools <c>_summarizeDets</c> (maxDets[2] is the "100" of the AP lines).</summary>
    private static CocoSummary Summarize(double[,,,,] precision, double[,,,] recall, CocoEvalParams p, int[] maxDets)
    {
        double S(bool ap, double? iouThr = null, string area = "all", int? md = null)
        {
            int mdv = md ?? 100;
            int a = Array.IndexOf(p.AreaLabels, area), m = Array.IndexOf(maxDets, mdv);
            if (a < 0 || m < 0) return -1;
            var vals = new List<double>();
            int T = p.IouThresholds.Length;
            for (int t = 0; t < T; t++)
            {
                if (iouThr is { } thr && p.IouThresholds[t] != thr) continue;
                if (ap)
                {
                    for (int r = 0; r < precision.GetLength(1); r++)
                        for (int k = 0; k < precision.GetLength(2); k++)
                            if (precision[t, r, k, a, m] > -1) vals.Add(precision[t, r, k, a, m]);
                }
                else
                    for (int k = 0; k < recall.GetLength(1); k++)
                        if (recall[t, k, a, m] > -1) vals.Add(recall[t, k, a, m]);
            }
            return vals.Count == 0 ? -1 : MeanLikeNumpy(vals);
        }
        int m2 = maxDets.Length > 2 ? maxDets[2] : -1;
        return new CocoSummary(
            S(true), S(true, 0.5, md: m2), S(true, 0.75, md: m2), S(true, area: "small", md: m2), S(true, area: "medium", md: m2), S(true, area: "large", md: m2),
            S(false, md: maxDets[0]), S(false, md: maxDets.Length > 1 ? maxDets[1] : -1), S(false, md: m2),
            S(false, area: "small", md: m2), S(false, area: "medium", md: m2), S(false, area: "large", md: m2));
    }

    /// <summary>np.mean over a float64 array: pairwise summation (blocks of 8 unrolled, 128-element leaves), then / n.</summary>
    internal static double MeanLikeNumpy(IReadOnlyList<double> v) => PairwiseSum(v, 0, v.Count) / v.Count;

    private static double PairwiseSum(IReadOnlyList<double> a, int start, int n)
    {
        if (n < 8)
        {
            double res = 0.0;
            for (int i = 0; i < n; i++) res += a[start + i];
            return res;
        }
        if (n <= 128)
        {
            var r = new double[8];
            for (int j = 0; j < 8; j++) r[j] = a[start + j];
            int i;
            for (i = 8; i < n - (n % 8); i += 8)
                for (int j = 0; j < 8; j++) r[j] += a[start + i + j];
            double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
            for (; i < n; i++) res += a[start + i];
            return res;
        }
        int n2 = n / 2;
        n2 -= n2 % 8;
        return PairwiseSum(a, start, n2) + PairwiseSum(a, start + n2, n - n2);
    }
}
