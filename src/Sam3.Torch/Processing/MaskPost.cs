using Sam3.Torch.Config;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Processing;

/// <summary>Result of <see cref="MaskPost.ConnectedComponents"/>: per-pixel label (0 = background, 1..Count) and component area.</summary>
internal sealed record ComponentLabels(int[] Labels, int[] Areas, int Count);

/// <summary>
/// Mask post-processing of the SAM1 predictor and the video pipeline: connected components (8-connectivity, as
/// skimage.measure.label's default and cc_torch), hole filling and sprinkle removal on mask logits.
/// </summary>
internal static class MaskPost
{
    /// <summary>
    /// Labels the 8-connected components of the non-zero pixels of a row-major h×w mask (two-pass union-find).
    /// Labels are 1..Count in raster order of each component's first pixel; <c>Areas[i]</c> is the pixel count of
    /// pixel i's component (0 for background pixels).
    /// </summary>
    public static ComponentLabels ConnectedComponents(ReadOnlySpan<bool> mask, int h, int w)
    {
        if (h < 0 || w < 0 || mask.Length != (long)h * w) throw new Sam3Exception($"mask of {mask.Length} pixels is not {h}×{w}");
        var labels = new int[mask.Length];
        var parent = new List<int> { 0 };
        int Find(int a)
        {
            while (parent[a] != a) { parent[a] = parent[parent[a]]; a = parent[a]; }
            return a;
        }
        void Union(int a, int b)
        {
            a = Find(a); b = Find(b);
            if (a == b) return;
            if (a < b) parent[b] = a; else parent[a] = b;
        }
        for (int y = 0; y < h; y++)
        {
            int row = y * w;
            for (int x = 0; x < w; x++)
            {
                if (!mask[row + x]) continue;
                int l = 0;
                // already-visited neighbours: W, NW, N, NE
                if (x > 0 && labels[row + x - 1] != 0) l = labels[row + x - 1];
                if (y > 0)
                {
                    int up = row - w;
                    for (int dx = -1; dx <= 1; dx++)
                    {
                        int xx = x + dx;
                        if (xx < 0 || xx >= w) continue;
                        int n = labels[up + xx];
                        if (n == 0) continue;
                        if (l == 0) l = n; else if (n != l) Union(l, n);
                    }
                }
                if (l == 0)
                {
                    l = parent.Count;
                    parent.Add(l);
                }
                labels[row + x] = l;
            }
        }
        // resolve roots, renumber in raster order, count areas
        var final = new int[parent.Count];
        int count = 0;
        var sizes = new List<int> { 0 };
        for (int i = 0; i < labels.Length; i++)
        {
            if (labels[i] == 0) continue;
            int r = Find(labels[i]);
            if (final[r] == 0) { final[r] = ++count; sizes.Add(0); }
            labels[i] = final[r];
            sizes[labels[i]]++;
        }
        var areas = new int[labels.Length];
        for (int i = 0; i < labels.Length; i++) areas[i] = labels[i] == 0 ? 0 : sizes[labels[i]];
        return new ComponentLabels(labels, areas, count);
    }

    /// <summary>Applies <paramref name="perSlice"/> to every trailing H×W slice of a float tensor (on CPU; result on the input's device).</summary>
    private static Tensor MapSlices(Tensor logits, Action<float[], float[], int, int> perSlice)
    {
        if (logits.dim() < 2) throw new Sam3Exception($"mask logits need at least 2 dims, got [{string.Join(",", logits.shape)}]");
        using var scope = NewDisposeScope();
        int h = (int)logits.shape[^2], w = (int)logits.shape[^1];
        var src = logits.detach().to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
        var dst = (float[])src.Clone();
        int n = h * w;
        var sIn = new float[n];
        var sOut = new float[n];
        for (int off = 0; off < src.Length; off += n)
        {
            Array.Copy(src, off, sIn, 0, n);
            Array.Copy(src, off, sOut, 0, n);
            perSlice(sIn, sOut, h, w);
            Array.Copy(sOut, 0, dst, off, n);
        }
        return torch.tensor(dst, logits.shape).to(logits.device).MoveToOuterDisposeScope();
    }

    private static bool[] Where(float[] s, Func<float, bool> pred)
    {
        var m = new bool[s.Length];
        for (int i = 0; i < s.Length; i++) m[i] = pred(s[i]);
        return m;
    }

    /// <summary>
    /// SAM1 post-processing on low-res logits [..., H, W] (SAM2Transforms.postprocess_masks before upsampling): holes =
    /// components of <c>logit ≤ threshold</c> with area ≤ <paramref name="maxHoleArea"/> become threshold + offset;
    /// sprinkles = components of <c>logit &gt; threshold</c> with area ≤ <paramref name="maxSprinkleArea"/> become
    /// threshold − offset. Quirk reproduced: both component maps are computed on the <b>input</b> logits (the sprinkle
    /// pass does not see the filled holes). Border-touching components count.
    /// </summary>
    public static Tensor FillHolesAndSprinkles(Tensor logits, double maxHoleArea, double maxSprinkleArea, double threshold, double offset)
    {
        if (maxHoleArea <= 0 && maxSprinkleArea <= 0) return logits.alias();
        float thr = (float)threshold;
        return MapSlices(logits, (sIn, sOut, h, w) =>
        {
            if (maxHoleArea > 0)
            {
                var cc = ConnectedComponents(Where(sIn, v => v <= thr), h, w);
                for (int i = 0; i < sOut.Length; i++)
                    if (cc.Labels[i] > 0 && cc.Areas[i] <= maxHoleArea) sOut[i] = (float)(threshold + offset);
            }
            if (maxSprinkleArea > 0)
            {
                var cc = ConnectedComponents(Where(sIn, v => v > thr), h, w);
                for (int i = 0; i < sOut.Length; i++)
                    if (cc.Labels[i] > 0 && cc.Areas[i] <= maxSprinkleArea) sOut[i] = (float)(threshold - offset);
            }
        });
    }

    /// <summary>
    /// SAM1 predictor output masks: <see cref="FillHolesAndSprinkles"/> on the low-res logits [B, M, h, w], then bilinear
    /// (align_corners=False) upsampling to the original (H, W). Returns logits; the predictor's masks are
    /// <c>logits &gt; mask_threshold</c>.
    /// </summary>
    public static Tensor PostprocessSam1Masks(Tensor lowResMasks, int origH, int origW, HardcodedConfig hc)
    {
        if (origH <= 0 || origW <= 0) throw new Sam3Exception($"invalid original size {origH}×{origW}");
        if (lowResMasks.dim() != 4) throw new Sam3Exception($"low-res masks must be [B, M, h, w], got [{string.Join(",", lowResMasks.shape)}]");
        using var scope = NewDisposeScope();
        var filled = FillHolesAndSprinkles(lowResMasks.to(ScalarType.Float32), hc.Sam1MaxHoleArea, hc.Sam1MaxSprinkleArea,
                                           hc.Sam1MaskThreshold, hc.Sam1FillLogitOffset);
        var up = nn.functional.interpolate(filled, [origH, origW], mode: InterpolationMode.Bilinear, align_corners: false);
        return up.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Video-pipeline hole filling on mask scores [..., H, W] (sam3_tracker_utils.fill_holes_in_mask_scores): background
    /// components (<c>≤ 0</c>) with area ≤ <paramref name="maxArea"/> become +<paramref name="value"/>; then foreground
    /// components (<c>&gt; 0</c>, after the hole filling) with area ≤ min(maxArea, ⌊foreground area / 2⌋) of their slice
    /// become −<paramref name="value"/>. Nothing happens for maxArea ≤ 0.
    /// </summary>
    public static Tensor FillHolesInMaskScores(Tensor mask, double maxArea, double value, bool fillHoles = true, bool removeSprinkles = true)
    {
        if (maxArea <= 0) return mask.alias();
        float v = (float)value;
        return MapSlices(mask, (sIn, sOut, h, w) =>
        {
            if (fillHoles)
            {
                var cc = ConnectedComponents(Where(sIn, x => x <= 0), h, w);
                for (int i = 0; i < sOut.Length; i++)
                    if (cc.Labels[i] > 0 && cc.Areas[i] <= maxArea) sOut[i] = v;
            }
            if (removeSprinkles)
            {
                var fg = Where(sOut, x => x > 0);
                long fgArea = fg.Count(b => b);
                double thresh = Math.Min(fgArea / 2, maxArea);
                var cc = ConnectedComponents(fg, h, w);
                var res = (float[])sOut.Clone();
                for (int i = 0; i < sOut.Length; i++)
                    if (cc.Labels[i] > 0 && cc.Areas[i] <= thresh) res[i] = -v;
                Array.Copy(res, sOut, res.Length);
            }
        });
    }
}
