using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Common;

/// <summary>Box format conversions (sam3.model.box_ops) and inverse_sigmoid. Last dim holds the 4 coordinates.</summary>
internal static class BoxOps
{
    public static Tensor CxcywhToXyxy(Tensor b)
    {
        var u = b.unbind(-1);
        return stack([u[0] - 0.5 * u[2], u[1] - 0.5 * u[3], u[0] + 0.5 * u[2], u[1] + 0.5 * u[3]], -1);
    }

    public static Tensor XyxyToCxcywh(Tensor b)
    {
        var u = b.unbind(-1);
        return stack([(u[0] + u[2]) / 2, (u[1] + u[3]) / 2, u[2] - u[0], u[3] - u[1]], -1);
    }

    public static Tensor XywhToXyxy(Tensor b)
    {
        var u = b.unbind(-1);
        return stack([u[0], u[1], u[0] + u[2], u[1] + u[3]], -1);
    }

    public static Tensor XyxyToXywh(Tensor b)
    {
        var u = b.unbind(-1);
        return stack([u[0], u[1], u[2] - u[0], u[3] - u[1]], -1);
    }

    public static Tensor XywhToCxcywh(Tensor b)
    {
        var u = b.unbind(-1);
        return stack([u[0] + 0.5 * u[2], u[1] + 0.5 * u[3], u[2], u[3]], -1);
    }

    public static Tensor CxcywhToXywh(Tensor b)
    {
        var u = b.unbind(-1);
        return stack([u[0] - 0.5 * u[2], u[1] - 0.5 * u[3], u[2], u[3]], -1);
    }

    /// <summary>Scales normalised boxes by (W,H,W,H).</summary>
    public static Tensor Denormalize(Tensor b, double width, double height)
        => b * tensor(new[] { (float)width, (float)height, (float)width, (float)height }, device: b.device).to(b.dtype);

    /// <summary>Divides pixel boxes by (W,H,W,H).</summary>
    public static Tensor Normalize(Tensor b, double width, double height)
        => b / tensor(new[] { (float)width, (float)height, (float)width, (float)height }, device: b.device).to(b.dtype);

    /// <summary>model_misc.inverse_sigmoid: x clamped to [0,1], then log(max(x,eps)/max(1-x,eps)).</summary>
    public static Tensor InverseSigmoid(Tensor x, double eps)
    {
        x = x.clamp(0, 1);
        var x1 = x.clamp(min: eps);
        var x2 = (1 - x).clamp(min: eps);
        return log(x1 / x2);
    }

    private static readonly TensorIndex Ell = TensorIndex.Ellipsis;
    private static readonly TensorIndex All = TensorIndex.Colon;
    private static readonly TensorIndex New = TensorIndex.None;
    private static readonly TensorIndex Lo = TensorIndex.Slice(null, 2);
    private static readonly TensorIndex Hi = TensorIndex.Slice(2, null);

    /// <summary>Area of xyxy boxes (<c>box_area</c>): (x1−x0)·(y1−y0).</summary>
    public static Tensor Area(Tensor b)
    {
        var u = b.unbind(-1);
        return (u[2] - u[0]) * (u[3] - u[1]);
    }

    /// <summary>Pairwise IoU and union of xyxy boxes (<c>box_iou</c>): (..., N, 4) × (..., M, 4) → (..., N, M).</summary>
    public static (Tensor iou, Tensor union) BoxIou(Tensor a, Tensor b)
    {
        var area1 = Area(a);
        var area2 = Area(b);
        var lt = maximum(a[Ell, All, New, Lo], b[Ell, New, All, Lo]);
        var rb = minimum(a[Ell, All, New, Hi], b[Ell, New, All, Hi]);
        var wh = (rb - lt).clamp(min: 0);
        var inter = wh[Ell, 0] * wh[Ell, 1];
        var union = area1[Ell, New] + area2[Ell, New, All] - inter;
        return (inter / union, union);
    }

    /// <summary>Generalized IoU of xyxy boxes (<c>generalized_box_iou</c>): (..., N, 4) × (..., M, 4) → (..., N, M).</summary>
    public static Tensor GeneralizedBoxIou(Tensor a, Tensor b)
    {
        var (iou, union) = BoxIou(a, b);
        var lt = minimum(a[Ell, All, New, Lo], b[Ell, New, All, Lo]);
        var rb = maximum(a[Ell, All, New, Hi], b[Ell, New, All, Hi]);
        var wh = (rb - lt).clamp(min: 0);
        var area = wh[Ell, 0] * wh[Ell, 1];
        return iou - (area - union) / area;
    }

    /// <summary>IoU of a[i] with b[i] for xyxy boxes [N,4] × [N,4] (<c>fast_diag_box_iou</c>).</summary>
    public static Tensor DiagBoxIou(Tensor a, Tensor b) => Diag(a, b).Iou;

    /// <summary>Generalized IoU of a[i] with b[i] for xyxy boxes [N,4] × [N,4] (<c>fast_diag_generalized_box_iou</c>).</summary>
    public static Tensor DiagGeneralizedBoxIou(Tensor a, Tensor b)
    {
        var (iou, union) = Diag(a, b);
        var lt = minimum(a[All, Lo], b[All, Lo]);
        var rb = maximum(a[All, Hi], b[All, Hi]);
        var total = (rb - lt).clamp(min: 0).prod(-1);
        return iou - (total - union) / total;
    }

    /// <summary>The shared part of the diagonal IoUs, in upstream's operation order.</summary>
    private static (Tensor Iou, Tensor Union) Diag(Tensor a, Tensor b)
    {
        if (a.shape[0] != b.shape[0])
            throw new ArgumentException($"a diagonal box operation needs as many boxes on both sides, got {a.shape[0]} and {b.shape[0]}");
        var area1 = (a[All, Hi] - a[All, Lo]).prod(-1);
        var area2 = (b[All, Hi] - b[All, Lo]).prod(-1);
        var lt = maximum(a[All, Lo], b[All, Lo]);
        var rb = minimum(a[All, Hi], b[All, Hi]);
        var inter = (rb - lt).clamp(min: 0).prod(-1);
        var union = area1 + area2 - inter;
        return (inter / union, union);
    }
}
