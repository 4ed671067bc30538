using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Tracker;

/// <summary>
/// ConvNeXt block (model/memory.py CXBlock): depthwise k×k conv → LayerNorm2d → (channels-last) Linear(d→4d) → GELU →
/// Linear(4d→d) → ×gamma (layer scale) → residual. Drop-path is the identity at inference (and 0 in SAM3).
/// </summary>
internal sealed class CXBlock : nn.Module<Tensor, Tensor>
{
    public readonly Parameter? gamma;
    public readonly Conv2d dwconv;
    public readonly LayerNorm2d norm;
    public readonly Linear pwconv1;
    public readonly Linear pwconv2;

    public CXBlock(int dim, int kernelSize, int padding, double layerScaleInitValue, bool useDwconv, double layerNorm2dEps)
        : base(nameof(CXBlock))
    {
        gamma = layerScaleInitValue > 0 ? new Parameter(torch.ones(dim) * layerScaleInitValue) : null;
        dwconv = nn.Conv2d(dim, dim, kernel_size: kernelSize, padding: padding, groups: useDwconv ? dim : 1);
        norm = new LayerNorm2d(dim, layerNorm2dEps);
        pwconv1 = nn.Linear(dim, 4 * dim);
        pwconv2 = nn.Linear(4 * dim, dim);
        RegisterComponents();
    }

    /// <summary>From a <see cref="CxBlockConfig"/> (layer scale defaults to upstream's 1e-6 when unset).</summary>
    public CXBlock(CxBlockConfig c, double layerNorm2dEps, double defaultLayerScale = 1e-6)
        : this(c.Dim, c.KernelSize, c.Padding, c.LayerScaleInitValue ?? defaultLayerScale, useDwconv: true, layerNorm2dEps) { }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        // bf16 policy (no-ops in fp32): the convolution/linear take their input in the weight's dtype; LayerNorm2d
        // returns fp32 as upstream's formula does under autocast; gamma (fp32) promotes the branch to fp32
        var y = norm.forward(dwconv.forward(Precision.PrecisionPolicy.ToWeightDtype(x, dwconv.weight!)));
        y = y.permute(0, 2, 3, 1);
        y = pwconv2.forward(nn.functional.gelu(pwconv1.forward(Precision.PrecisionPolicy.ToWeightDtype(y, pwconv1.weight!))));
        if (gamma is not null) y = gamma * y;
        y = y.permute(0, 3, 1, 2);
        return (x + y).MoveToOuterDisposeScope();
    }
}
