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
        if (x.dtype != weight.dtype && x.is_floating_point()) return ForwardAutocast(x).MoveToOuterDisposeScope();
        var u = x.mean([1], keepdim: true);
        var d = x - u;
        var s = d.pow(2).mean([1], keepdim: true);
        var y = d / torch.sqrt(s + eps);
        y = weight[.., TensorIndex.None, TensorIndex.None] * y + bias[.., TensorIndex.None, TensorIndex.None];
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The same formula as CUDA bf16 autocast runs it on a reduced-precision input (bf16 policy): <c>mean</c> and
    /// <c>x − u</c> stay in the input's dtype (not on autocast's lists), <c>pow</c> is on its fp32 list, so the variance,
    /// the division (type promotion) and the affine map (fp32 parameters) are fp32 — upstream returns fp32
    /// (<c>sam3/sam/common.py:36-41</c>, <c>sam3/model/model_misc.py:118-123</c>).
    /// </summary>
    private Tensor ForwardAutocast(Tensor x)
    {
        var u = x.mean([1], keepdim: true);
        var d = x - u;                                       // input dtype, rounded as upstream
        var df = d.to(weight.dtype);
        var s = df.pow(2).mean([1], keepdim: true);
        var y = df / torch.sqrt(s + eps);
        return weight[.., TensorIndex.None, TensorIndex.None] * y + bias[.., TensorIndex.None, TensorIndex.None];
    }
}
