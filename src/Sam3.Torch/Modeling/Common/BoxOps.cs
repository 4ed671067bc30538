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

    /// <summary>Area of xyxy boxes.</summary>
    public static Tensor Area(Tensor b)
    {
        var u = b.unbind(-1);
        return (u[2] - u[0]) * (u[3] - u[1]);
    }

    /// <summary>Pairwise IoU and union of xyxy boxes [N,4] × [M,4].</summary>
    public static (Tensor iou, Tensor union) BoxIou(Tensor a, Tensor b)
    {
        var area1 = Area(a);
        var area2 = Area(b);
        var lt = maximum(a[.., TensorIndex.None, TensorIndex.Slice(null, 2)], b[.., TensorIndex.Slice(null, 2)]);
        var rb = minimum(a[.., TensorIndex.None, TensorIndex.Slice(2, null)], b[.., TensorIndex.Slice(2, null)]);
        var wh = (rb - lt).clamp(min: 0);
        var inter = wh[.., .., 0] * wh[.., .., 1];
        var union = area1[.., TensorIndex.None] + area2 - inter;
        return (inter / union, union);
    }

    /// <summary>Generalized IoU of xyxy boxes [N,4] × [M,4].</summary>
    public static Tensor GeneralizedBoxIou(Tensor a, Tensor b)
    {
        var (iou, union) = BoxIou(a, b);
        var lt = minimum(a[.., TensorIndex.None, TensorIndex.Slice(null, 2)], b[.., TensorIndex.Slice(null, 2)]);
        var rb = maximum(a[.., TensorIndex.None, TensorIndex.Slice(2, null)], b[.., TensorIndex.Slice(2, null)]);
        var wh = (rb - lt).clamp(min: 0);
        var area = wh[.., .., 0] * wh[.., .., 1];
        return iou - (area - union) / area;
    }
}
