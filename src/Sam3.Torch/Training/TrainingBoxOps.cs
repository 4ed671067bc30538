using static TorchSharp.torch;

namespace Sam3.Torch.Training;

/// <summary>
/// The box operations of the matchers and losses (sam3/model/box_ops.py): batched pairwise IoU / GIoU over the last two
/// dims (<c>box_iou</c>, <c>generalized_box_iou</c> with <c>(..., N, 4) × (..., M, 4) → (..., N, M)</c>) and the
/// element-wise (diagonal) variants <c>fast_diag_box_iou</c>, <c>fast_diag_generalized_box_iou</c> of [N,4] × [N,4].
/// Boxes are xyxy; operation order follows upstream (float32 results bit-identical on the same kernels).
/// </summary>
internal static class TrainingBoxOps
{
    private static readonly TensorIndex Ell = TensorIndex.Ellipsis;
    private static readonly TensorIndex All = TensorIndex.Colon;
    private static readonly TensorIndex New = TensorIndex.None;
    private static readonly TensorIndex Lo = TensorIndex.Slice(null, 2);
    private static readonly TensorIndex Hi = TensorIndex.Slice(2, null);

    /// <summary>box_area: (x1-x0)·(y1-y0).</summary>
    public static Tensor Area(Tensor b)
    {
        var u = b.unbind(-1);
        return (u[2] - u[0]) * (u[3] - u[1]);
    }

    /// <summary>box_iou: pairwise IoU and union, (..., N, M).</summary>
    public static (Tensor Iou, Tensor Union) BoxIou(Tensor boxes1, Tensor boxes2)
    {
        var area1 = Area(boxes1);
        var area2 = Area(boxes2);
        var lt = maximum(boxes1[Ell, All, New, Lo], boxes2[Ell, New, All, Lo]);
        var rb = minimum(boxes1[Ell, All, New, Hi], boxes2[Ell, New, All, Hi]);
        var wh = (rb - lt).clamp(min: 0);
        var inter = wh[Ell, 0] * wh[Ell, 1];
        var union = area1[Ell, New] + area2[Ell, New, All] - inter;
        return (inter / union, union);
    }

    /// <summary>generalized_box_iou, (..., N, M).</summary>
    public static Tensor GeneralizedBoxIou(Tensor boxes1, Tensor boxes2)
    {
        var (iou, union) = BoxIou(boxes1, boxes2);
        var lt = minimum(boxes1[Ell, All, New, Lo], boxes2[Ell, New, All, Lo]);
        var rb = maximum(boxes1[Ell, All, New, Hi], boxes2[Ell, New, All, Hi]);
        var wh = (rb - lt).clamp(min: 0);
        var area = wh[Ell, 0] * wh[Ell, 1];
        return iou - (area - union) / area;
    }

    /// <summary>fast_diag_box_iou: IoU of boxes1[i] with boxes2[i].</summary>
    public static Tensor DiagBoxIou(Tensor boxes1, Tensor boxes2)
    {
        CheckSameLength(boxes1, boxes2);
        var max1 = boxes1[All, Hi];
        var min1 = boxes1[All, Lo];
        var max2 = boxes2[All, Hi];
        var min2 = boxes2[All, Lo];
        var area1 = (max1 - min1).prod(-1);
        var area2 = (max2 - min2).prod(-1);
        var lt = maximum(min1, min2);
        var rb = minimum(max1, max2);
        var inter = (rb - lt).clamp(min: 0).prod(-1);
        var union = area1 + area2 - inter;
        return inter / union;
    }

    /// <summary>fast_diag_generalized_box_iou: GIoU of boxes1[i] with boxes2[i].</summary>
    public static Tensor DiagGeneralizedBoxIou(Tensor boxes1, Tensor boxes2)
    {
        CheckSameLength(boxes1, boxes2);
        var max1 = boxes1[All, Hi];
        var min1 = boxes1[All, Lo];
        var max2 = boxes2[All, Hi];
        var min2 = boxes2[All, Lo];
        var area1 = (max1 - min1).prod(-1);
        var area2 = (max2 - min2).prod(-1);
        var lt = maximum(min1, min2);
        var lt2 = minimum(min1, min2);
        var rb = minimum(max1, max2);
        var rb2 = maximum(max1, max2);
        var inter = (rb - lt).clamp(min: 0).prod(-1);
        var totArea = (rb2 - lt2).clamp(min: 0).prod(-1);
        var union = area1 + area2 - inter;
        var iou = inter / union;
        return iou - (totArea - union) / totArea;
    }

    private static void CheckSameLength(Tensor a, Tensor b)
    {
        if (a.shape[0] != b.shape[0])
            throw new ArgumentException($"diagonal box op needs as many boxes on both sides, got {a.shape[0]} and {b.shape[0]}");
    }
}
