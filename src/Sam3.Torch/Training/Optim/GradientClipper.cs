using static TorchSharp.torch;

namespace Sam3.Torch.Training.Optim;

/// <summary>
/// GradientClipper = torch 1.13 <c>nn.utils.clip_grad_norm_</c> over every parameter that has a gradient: total norm =
/// norm of the per-tensor norms (stacked in parameter order), <c>clip_coef = clamp(max_norm / (total + 1e-6), max=1)</c>,
/// every gradient multiplied in place by it (also when it is 1, as upstream).
/// </summary>
internal sealed class GradientClipper
{
    public const double Epsilon = 1e-6;
    public GradientClipConfig Config { get; }

    public GradientClipper(GradientClipConfig config)
    {
        if (config.MaxNorm is double m && m < 0) throw new ArgumentOutOfRangeException(nameof(config), m, "max_norm must be non-negative");
        Config = config;
    }

    /// <summary>The total norm of the gradients (0-d float32 tensor).</summary>
    public static Tensor TotalNorm(IReadOnlyList<Tensor> grads, double normType)
    {
        if (grads.Count == 0) return tensor(0f);
        var device = grads[0].device;
        if (double.IsPositiveInfinity(normType))
        {
            var maxes = grads.Select(g => g.detach().abs().max().to(device)).ToArray();
            return maxes.Length == 1 ? maxes[0] : stack(maxes).max();
        }
        var norms = grads.Select(g => linalg.vector_norm(g.detach(), normType).to(device)).ToArray();
        return linalg.vector_norm(stack(norms), normType);
    }

    /// <summary>Clips the given gradients in place; returns (total norm, clip coefficient), or null when max_norm is null.</summary>
    public (Tensor TotalNorm, Tensor ClipCoef)? Clip(IReadOnlyList<Tensor> grads)
    {
        if (Config.MaxNorm is not double maxNorm) return null;
        using var _ = no_grad();
        var total = TotalNorm(grads, Config.NormType);
        var coef = (maxNorm / (total + Epsilon)).clamp(max: 1.0);
        foreach (var g in grads) g.detach().mul_(coef.to(g.device));
        return (total, coef);
    }
}
