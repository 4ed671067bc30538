using static TorchSharp.torch;

namespace Sam3.Torch.Training.Losses;

/// <summary>
/// The element-wise losses of sam3/train/loss/loss_fns.py: <c>sigmoid_focal_loss</c> in the formula of upstream's triton
/// kernels (the default path: <c>alpha_t·(1-p_t)^gamma·(max(x,0) - x·y + log(1+exp(-|x|)))</c>) and <c>dice_loss</c>.
/// Gradients come from autograd of the same formula (mathematically equal to the kernels' hand-written backward).
/// </summary>
internal static class SigmoidFocalLoss
{
    /// <summary>Element-wise focal loss (triton_sigmoid_focal_loss, reduce=False).</summary>
    public static Tensor Elementwise(Tensor inputs, Tensor targets, double alpha, double gamma)
    {
        if (alpha < 0 || alpha > 1) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, "alpha must be in [0,1]");
        // upstream computes in float32 (inputs.float()); float64 stays float64 (gradient checks)
        var x = inputs.dtype == ScalarType.Float64 ? inputs : inputs.to(ScalarType.Float32);
        var y = targets.to(x.dtype);
        var inv = 1 - y;
        var sig = x.sigmoid();
        var bce = x.clamp(0, 1e9) - x * y + (1 + (-x.abs()).exp()).log();
        var pT = sig * y + (1 - sig) * inv;
        var mod = (1 - pT).pow(gamma);
        var alphaT = y * alpha + inv * (1 - alpha);
        return alphaT * mod * bce;
    }

    /// <summary>sigmoid_focal_loss(reduce=True, loss_on_multimask=False): sum / (num_boxes · inputs.shape[1]).</summary>
    public static Tensor Reduced(Tensor inputs, Tensor targets, Tensor numBoxes, double alpha, double gamma)
    {
        if (inputs.dim() < 2) throw new ArgumentException($"focal loss inputs must be at least 2-d, got [{string.Join(",", inputs.shape)}]", nameof(inputs));
        var s = Elementwise(inputs, targets, alpha, gamma).sum();
        return s / (numBoxes * inputs.shape[1]);
    }

    /// <summary>dice_loss on [N, P] logits vs targets: per row <c>1 - (2·Σσ(x)y + 1)/(Σσ(x) + Σy + 1)</c>; reduced = sum / num_boxes.</summary>
    public static Tensor DicePerRow(Tensor inputs, Tensor targets)
    {
        var p = inputs.sigmoid().flatten(1);
        var numerator = 2 * (p * targets).sum(1);
        var denominator = p.sum(-1) + targets.sum(-1);
        return 1 - (numerator + 1) / (denominator + 1);
    }
}
