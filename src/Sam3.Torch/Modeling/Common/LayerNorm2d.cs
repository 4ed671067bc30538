using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Common;

/// <summary>LayerNorm over the channel dim of an NCHW tensor (model_misc.LayerNorm2d / sam.common.LayerNorm2d).</summary>
internal sealed class LayerNorm2d : nn.Module<Tensor, Tensor>
{
    public readonly Parameter weight;
    public readonly Parameter bias;
    private readonly double eps;

    public LayerNorm2d(int numChannels, double eps) : base(nameof(LayerNorm2d))
    {
        weight = new Parameter(torch.ones(numChannels));
        bias = new Parameter(torch.zeros(numChannels));
        this.eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        // bf16 policy: normalised in the (fp32) weight's dtype as autocast does, returned in the input's dtype
        var inputDtype = x.dtype;
        x = Precision.PrecisionPolicy.ToWeightDtype(x, weight);
        var u = x.mean([1], keepdim: true);
        var d = x - u;
        var s = d.pow(2).mean([1], keepdim: true);
        var y = d / torch.sqrt(s + eps);
        y = weight[.., TensorIndex.None, TensorIndex.None] * y + bias[.., TensorIndex.None, TensorIndex.None];
        return y.to(inputDtype).MoveToOuterDisposeScope();
    }
}
