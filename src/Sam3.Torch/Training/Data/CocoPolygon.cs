using Sam3.Torch.Processing;

namespace Sam3.Torch.Training.Data;

/// <summary>
/// COCO polygon and box rasterisation to run-length masks, pycocotools' <c>rleFrPoly</c> / <c>rleFrBbox</c> /
/// <c>rleMerge</c> (common/maskApi.c): the polygon is upsampled ×5, its boundary walked with integer steps, the points
/// where it crosses a column centre kept, and the RLE built from those y-boundaries. Pixel (x, y) is inside when its
/// centre lies inside the polygon, with pycocotools' own rounding, so masks are identical to <c>frPyObjects</c>'.
/// </summary>
internal static class CocoPolygon
{
    private const double Scale = 5;

    /// <summary>One polygon [x0, y0, x1, y1, ...] (pixels) → RLE of an h × w mask.</summary>
    public static CocoRle FromPolygon(ReadOnlySpan<double> xy, int height, int width)
    {
        if (xy.Length % 2 != 0) throw new ArgumentException($"a polygon needs an even number of coordinates, got {xy.Length}", nameof(xy));
        int k = xy.Length / 2;
        var x = new int[k + 1];
        var y = new int[k + 1];
        for (int j = 0; j < k; j++) x[j] = (int)(Scale * xy[j * 2] + .5);
        x[k] = x[0];
        for (int j = 0; j < k; j++) y[j] = (int)(Scale * xy[j * 2 + 1] + .5);
        y[k] = y[0];
        long m = 0;
        for (int j = 0; j < k; j++) m += (uint)Math.Max(Math.Abs(x[j] - x[j + 1]), Math.Abs(y[j] - y[j + 1])) + 1;
        var u = new int[m];
        var v = new int[m];
        m = 0;
        for (int j = 0; j < k; j++)
        {
            int xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1];
            int dx = Math.Abs(xe - xs), dy = Math.Abs(ys - ye);
            bool flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
            if (flip) { (xs, xe) = (xe, xs); (ys, ye) = (ye, ys); }
            double s = dx >= dy ? (double)(ye - ys) / dx : (double)(xe - xs) / dy;
            if (dx >= dy)
                for (int d = 0; d <= dx; d++)
                {
                    int t = flip ? dx - d : d;
                    u[m] = t + xs; v[m] = (int)(ys + s * t + .5); m++;
                }
            else
                for (int d = 0; d <= dy; d++)
                {
                    int t = flip ? dy - d : d;
                    v[m] = t + ys; u[m] = (int)(xs + s * t + .5); m++;
                }
        }
        // points along the y-boundary, downsampled
        long kk = m;
        var bx = new List<int>();
        var by = new List<int>();
        for (long j = 1; j < kk; j++)
        {
            if (u[j] == u[j - 1]) continue;
            double xd = u[j] < u[j - 1] ? u[j] : u[j] - 1;
            xd = (xd + .5) / Scale - .5;
            if (Math.Floor(xd) != xd || xd < 0 || xd > width - 1) continue;
            double yd = v[j] < v[j - 1] ? v[j] : v[j - 1];
            yd = (yd + .5) / Scale - .5;
            if (yd < 0) yd = 0; else if (yd > height) yd = height;
            yd = Math.Ceiling(yd);
            bx.Add((int)xd); by.Add((int)yd);
        }
        var a = new uint[bx.Count + 1];
        for (int j = 0; j < bx.Count; j++) a[j] = (uint)(bx[j] * height + by[j]);
        a[bx.Count] = (uint)(height * width);
        Array.Sort(a);
        uint p = 0;
        for (int j = 0; j < a.Length; j++) { uint t = a[j]; a[j] -= p; p = t; }
        var b = new List<int>(a.Length);
        int jj = 0;
        b.Add(checked((int)a[jj++]));
        while (jj < a.Length)
        {
            if (a[jj] > 0) b.Add(checked((int)a[jj++]));
            else { jj++; if (jj < a.Length) b[^1] += checked((int)a[jj++]); }
        }
        return CocoRle.FromCounts(b.ToArray(), height, width);
    }

    /// <summary>A box [x, y, w, h] (pixels) → RLE, as pycocotools' <c>frBbox</c> (the box as a 4-point polygon).</summary>
    public static CocoRle FromBox(double x, double y, double w, double h, int height, int width)
    {
        double xs = x, xe = x + w, ys = y, ye = y + h;
        return FromPolygon([xs, ys, xs, ye, xe, ye, xe, ys], height, width);
    }

    /// <summary>Union of masks of one size (pycocotools' <c>merge(rles, intersect=False)</c>).</summary>
    public static CocoRle Union(IReadOnlyList<CocoRle> masks)
    {
        if (masks.Count == 0) throw new ArgumentException("no masks to merge", nameof(masks));
        if (masks.Count == 1) return masks[0];
        int h = masks[0].Height, w = masks[0].Width;
        var acc = new byte[(long)h * w];
        var tmp = new byte[acc.Length];
        foreach (var r in masks)
        {
            if (r.Height != h || r.Width != w) throw new ArgumentException($"cannot merge masks of sizes [{h}, {w}] and [{r.Height}, {r.Width}]", nameof(masks));
            r.DecodeInto(tmp);
            for (int i = 0; i < acc.Length; i++) acc[i] |= tmp[i];
        }
        return CocoRle.Encode(acc, h, w);
    }
}
