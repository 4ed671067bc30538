using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// Finds the first parameter or buffer of a module holding NaN or an infinity (in <c>named_parameters</c> then
/// <c>named_buffers</c> order). Weights like that load without complaint and make every output NaN, which a
/// threshold then silently turns into "0 detections"; the CLI runs this scan after loading and warns with the name.
/// One reduction per tensor, in a dispose scope (cost: one pass over the weights).
/// </summary>
internal static class NonFiniteScan
{
    public static string? FirstNonFinite(nn.Module module)
    {
        ArgumentNullException.ThrowIfNull(module);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        foreach (var (name, t) in module.named_parameters().Select(p => (p.name, (Tensor)p.parameter)).Concat(module.named_buffers()))
        {
            if (!t.is_floating_point() && !t.is_complex()) continue;
            var view = t.is_complex() ? torch.view_as_real(t) : t;
            if (!torch.isfinite(view).all().item<bool>()) return name;
        }
        return null;
    }
}
