using Sam3.Torch.Processing;

namespace Sam3.Torch.Training.Evaluation;

/// <summary>
/// pycocotools' IoU (<c>maskUtils.iou</c>, common/maskApi.c <c>bbIou</c> / <c>rleIou</c>) between detections and ground
/// truths, [D, G]: boxes [x, y, w, h] without the +1 of the old Matlab code; against a crowd ground truth the
/// union is the detection's own area (so covering part of a crowd is not penalised).
/// </summary>
internal static class CocoIou
{
    public static double[,] Boxes(IReadOnlyList<double[]> dt, IReadOnlyList<double[]> gt, IReadOnlyList<bool> crowd)
    {
        var o = new double[dt.Count, gt.Count];
        for (int g = 0; g < gt.Count; g++)
        {
            var G = gt[g];
            double ga = G[2] * G[3];
            for (int d = 0; d < dt.Count; d++)
            {
                var D = dt[d];
                double da = D[2] * D[3];
                double w = Math.Min(D[2] + D[0], G[2] + G[0]) - Math.Max(D[0], G[0]);
                if (w <= 0) continue;
                double h = Math.Min(D[3] + D[1], G[3] + G[1]) - Math.Max(D[1], G[1]);
                if (h <= 0) continue;
                double i = w * h, u = crowd[g] ? da : da + ga - i;
                o[d, g] = i / u;
            }
        }
        return o;
    }

    public static double[,] Masks(IReadOnlyList<CocoRle> dt, IReadOnlyList<CocoRle> gt, IReadOnlyList<bool> crowd)
    {
        var o = new double[dt.Count, gt.Count];
        var dtRuns = dt.Select(r => r.GetCounts()).ToArray();
        var gtRuns = gt.Select(r => r.GetCounts()).ToArray();
        var dtArea = dt.Select(r => r.Area()).ToArray();
        for (int g = 0; g < gt.Count; g++)
            for (int d = 0; d < dt.Count; d++)
            {
                if (dt[d].Height != gt[g].Height || dt[d].Width != gt[g].Width) { o[d, g] = -1; continue; }
                var (inter, union) = IntersectionUnion(dtRuns[d], gtRuns[g]);
                if (inter == 0) { o[d, g] = 0; continue; }
                if (crowd[g]) union = dtArea[d];
                o[d, g] = (double)inter / union;
            }
        return o;
    }

    /// <summary>Walks two run-length encodings of one size together (runs alternate background / foreground).</summary>
    private static (long Inter, long Union) IntersectionUnion(int[] a, int[] b)
    {
        long inter = 0, union = 0;
        int ia = 0, ib = 0;
        long ca = a.Length > 0 ? a[0] : 0, cb = b.Length > 0 ? b[0] : 0;
        bool va = false, vb = false;
        while (true)
        {
            while (ca == 0 && ia + 1 < a.Length) { ca = a[++ia]; va = !va; }
            while (cb == 0 && ib + 1 < b.Length) { cb = b[++ib]; vb = !vb; }
            if (ca == 0 || cb == 0) break;
            long c = Math.Min(ca, cb);
            if (va || vb) { union += c; if (va && vb) inter += c; }
            ca -= c; cb -= c;
        }
        return (inter, union);
    }
}
