using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Geometry;

/// <summary>
/// RoIAlign with the semantics of <c>torchvision.ops.roi_align</c> (forward only), written with tensor ops so it
/// runs on any device.
/// <para>Per RoI (x0,y0,x1,y1)·spatial_scale (minus 0.5 when <c>aligned</c>): the RoI is split into out_h × out_w bins;
/// each bin averages grid_h × grid_w bilinear samples at the sub-cell centres, where grid = sampling_ratio, or
/// ceil(roi_size / out_size) per RoI when sampling_ratio ≤ 0. Without <c>aligned</c>, RoI sides are at least 1.
/// Border rules of the torchvision kernel: a sample with y ∉ [−1, H] or x ∉ [−1, W] (or NaN) contributes 0; otherwise
/// negative coordinates are clamped to 0, and a coordinate whose integer part is ≥ size−1 is snapped to size−1.
/// The average divides by max(grid_h·grid_w, 1).</para>
/// <para>Implementation: bilinear sampling on such a grid is separable, so each RoI's output is
/// <c>Wy · F · Wxᵀ</c> with Wy [out_h, H] and Wx [out_w, W] the bin-averaged interpolation weights (the 1/count
/// factor split as 1/grid_h · 1/grid_w). The weights of all RoIs are built at once (samples beyond a RoI's own
/// grid masked out); the two products run per image, without copying the feature map per RoI.</para>
/// </summary>
internal static class RoiAlign
{
    /// <summary>
    /// <paramref name="input"/> [N,C,H,W]; <paramref name="rois"/> [K,5] = (batch index, x0, y0, x1, y1) in input
    /// coordinates before <paramref name="spatialScale"/>. Returns [K,C,outH,outW].
    /// </summary>
    public static Tensor Forward(Tensor input, Tensor rois, int outH, int outW, double spatialScale = 1.0,
                                 int samplingRatio = -1, bool aligned = false)
    {
        if (input.dim() != 4) throw new Sam3Exception($"roi_align: input must be [N,C,H,W], got [{string.Join(",", input.shape)}]");
        if (rois.dim() != 2 || rois.shape[1] != 5) throw new Sam3Exception($"roi_align: rois must be [K,5], got [{string.Join(",", rois.shape)}]");
        if (outH <= 0 || outW <= 0) throw new Sam3Exception("roi_align: output size must be positive");
        using var scope = NewDisposeScope();
        // bf16 policy: torchvision's roi_align runs in fp32 under autocast (its autocast wrapper casts the input up and
        // the output back), so box coordinates are never rounded to bf16
        if (input.dtype is ScalarType.BFloat16 or ScalarType.Float16)
            return Forward(input.to(ScalarType.Float32), rois, outH, outW, spatialScale, samplingRatio, aligned).to(input.dtype).MoveToOuterDisposeScope();
        long k = rois.shape[0], c = input.shape[1], h = input.shape[2], w = input.shape[3];
        if (k == 0 || h == 0 || w == 0)
            return torch.zeros(k, c, outH, outW, dtype: input.dtype, device: input.device).MoveToOuterDisposeScope();

        var r = rois.to(input.dtype).to(input.device);
        var batchIdx = r[.., 0].to(ScalarType.Int64);
        double offset = aligned ? 0.5 : 0.0;
        var start = r[.., TensorIndex.Slice(1, 3)] * spatialScale - offset;  // (x0, y0)
        var end = r[.., TensorIndex.Slice(3, 5)] * spatialScale - offset;    // (x1, y1)
        var size = end - start;                                              // (roi_w, roi_h)
        if (!aligned) size = size.clamp(min: 1.0);                           // malformed RoIs forced to 1x1

        var wy = AxisWeights(start[.., 1], size[.., 1], outH, (int)h, samplingRatio); // [K,outH,H]
        var wx = AxisWeights(start[.., 0], size[.., 0], outW, (int)w, samplingRatio); // [K,outW,W]
        long n = input.shape[0];
        long minIdx = batchIdx.min().item<long>(), maxIdx = batchIdx.max().item<long>();
        if (minIdx < 0 || maxIdx >= n)
            throw new Sam3Exception($"roi_align: RoI batch indices must be in [0, {n}), got [{minIdx}, {maxIdx}]");
        if (n == 1) return Pool(input[0], wy, wx).MoveToOuterDisposeScope();
        var output = torch.zeros(k, c, outH, outW, dtype: input.dtype, device: input.device);
        for (long i = 0; i < n; i++)
        {
            var sel = batchIdx.eq(i).nonzero().squeeze(1);
            if (sel.numel() == 0) continue;
            output.index_copy_(0, sel, Pool(input[i], wy.index_select(0, sel), wx.index_select(0, sel)));
        }
        return output.MoveToOuterDisposeScope();
    }

    /// <summary>out[k,c,p,q] = Σ_{y,x} wy[k,p,y] · F[c,y,x] · wx[k,q,x] for one image F [C,H,W].</summary>
    private static Tensor Pool(Tensor f, Tensor wy, Tensor wx)
    {
        long k = wy.shape[0], p = wy.shape[1], q = wx.shape[1], c = f.shape[0], h = f.shape[1], w = f.shape[2];
        var t = wy.reshape(k * p, h).matmul(f.permute(1, 0, 2).reshape(h, c * w));   // [K·P, C·W]
        t = t.view(k, p * c, w).matmul(wx.transpose(1, 2));                          // [K, P·C, Q]
        return t.view(k, p, c, q).permute(0, 2, 1, 3).contiguous();                  // [K, C, P, Q]
    }

    /// <summary>
    /// Per-image boxes (torchvision's list form): <paramref name="boxes"/>[i] is [K_i,4] xyxy for image i.
    /// Output RoIs are ordered image by image.
    /// </summary>
    public static Tensor Forward(Tensor input, IReadOnlyList<Tensor> boxes, int outH, int outW, double spatialScale = 1.0,
                                 int samplingRatio = -1, bool aligned = false)
    {
        using var scope = NewDisposeScope();
        return Forward(input, BoxesToRois(boxes, input.dtype, input.device), outH, outW, spatialScale, samplingRatio, aligned)
            .MoveToOuterDisposeScope();
    }

    /// <summary>torchvision's convert_boxes_to_roi_format: [K_i,4] per image → [ΣK_i,5] with the image index first.</summary>
    public static Tensor BoxesToRois(IReadOnlyList<Tensor> boxes, ScalarType dtype, Device device)
    {
        using var scope = NewDisposeScope();
        var parts = new List<Tensor>();
        for (int i = 0; i < boxes.Count; i++)
        {
            var b = boxes[i].to(dtype).to(device);
            if (b.dim() != 2 || b.shape[1] != 4) throw new Sam3Exception($"roi_align: boxes[{i}] must be [K,4], got [{string.Join(",", b.shape)}]");
            parts.Add(torch.cat([torch.full(b.shape[0], 1, i, dtype: dtype, device: device), b], 1));
        }
        var rois = parts.Count == 0 ? torch.zeros(0, 5, dtype: dtype, device: device) : torch.cat(parts, 0);
        return rois.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Bin-averaged interpolation weights along one axis: [K, outSize, length]. Row p of RoI k holds
    /// (1/grid_k) Σ_i (weights of sample i of bin p), with the torchvision border rules.
    /// </summary>
    private static Tensor AxisWeights(Tensor start, Tensor roiSize, int outSize, int length, int samplingRatio)
    {
        var dtype = start.dtype;
        var device = start.device;
        var binSize = roiSize / (double)outSize;                                   // [K]
        Tensor grid;                                                               // [K] int64
        if (samplingRatio > 0) grid = torch.full(start.shape[0], samplingRatio, dtype: ScalarType.Int64, device: device);
        else grid = (roiSize / (double)outSize).ceil().to(ScalarType.Int64);
        long maxGrid = grid.numel() == 0 ? 0 : grid.max().item<long>();
        if (maxGrid <= 0) return torch.zeros(start.shape[0], outSize, length, dtype: dtype, device: device);

        var gridF = grid.to(dtype).clamp(min: 1.0);                                 // divisor (unused when grid = 0)
        var p = torch.arange(outSize, dtype: dtype, device: device).view(1, -1, 1);          // [1,P,1]
        var i = torch.arange(maxGrid, dtype: ScalarType.Int64, device: device).view(1, 1, -1); // [1,1,G]
        var s = start.view(-1, 1, 1);
        var bs = binSize.view(-1, 1, 1);
        // same evaluation order as the kernel: start + p·bin + ((i + 0.5)·bin) / grid
        var coord = s + p * bs + (i.to(dtype) + 0.5) * bs / gridF.view(-1, 1, 1);            // [K,P,G]
        var inGrid = i < grid.view(-1, 1, 1);                                                  // [K,1,G]

        var inside = coord.ge(-1.0).logical_and(coord.le((double)length));                     // NaN -> false
        var v = torch.where(inside, coord, torch.zeros_like(coord)).clamp(min: 0.0);           // y <= 0 -> 0
        var low = v.to(ScalarType.Int64);                                                       // trunc (v >= 0)
        var atEdge = low.ge(length - 1);
        low = torch.where(atEdge, torch.full_like(low, length - 1), low);
        var high = torch.where(atEdge, low, low + 1);
        v = torch.where(atEdge, low.to(dtype), v);
        var l = v - low.to(dtype);
        var hgt = 1.0 - l;
        var valid = inside.logical_and(inGrid).to(dtype);
        var wLow = hgt * valid;
        var wHigh = l * valid;
        var weights = torch.zeros(new long[] { start.shape[0], outSize, maxGrid, length }, dtype: dtype, device: device);
        weights = weights.scatter_add(-1, low.unsqueeze(-1), wLow.unsqueeze(-1))
                         .scatter_add(-1, high.unsqueeze(-1), wHigh.unsqueeze(-1));
        return weights.sum(2) / gridF.view(-1, 1, 1);                                          // [K,P,length]
    }
}
