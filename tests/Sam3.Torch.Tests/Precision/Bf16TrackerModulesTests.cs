using NUnit.Framework;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Precision;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Precision;

/// <summary>
/// The pieces the tracker's bf16 policy added (issue 15 item 4): <c>LayerNorm2d</c> on a bf16 input as CUDA autocast
/// runs upstream's formula (fp32 result), and <see cref="PrecisionPolicy.ForwardSequential"/> (the per-call cast
/// inside a <c>Sequential</c>). Expected values come from the formula in float64, not from this port's output.
/// </summary>
[TestFixture, Category("Fast")]
public class Bf16TrackerModulesTests
{
    private static Tensor Formula64(Tensor x, Tensor w, Tensor b, double eps, bool roundCentredToBf16)
    {
        var x64 = x.to(ScalarType.Float64);
        var u = x64.mean([1], keepdim: true);
        var d = x64 - u;
        if (roundCentredToBf16)
        {
            // upstream under autocast: mean and x - u stay bf16 (mean rounded, then the difference rounded)
            var ub = x.mean([1], keepdim: true);
            d = (x - ub).to(ScalarType.Float64);
        }
        var s = d.pow(2).mean([1], keepdim: true);
        var y = d / torch.sqrt(s + eps);
        return w.to(ScalarType.Float64)[.., TensorIndex.None, TensorIndex.None] * y + b.to(ScalarType.Float64)[.., TensorIndex.None, TensorIndex.None];
    }

    [Test]
    public void LayerNorm2dOnBf16InputReturnsFloat32AsUnderAutocast()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(3);
        using var ln = new LayerNorm2d(8, 1e-6);
        using (torch.no_grad())
        {
            ln.weight.copy_(torch.rand(8) + 0.5);
            ln.bias.copy_(torch.randn(8) * 0.1);
        }
        var x = (torch.randn(2, 8, 5, 5) * 3 + 1).to(ScalarType.BFloat16);
        var y = ln.forward(x);
        Assert.That(y.dtype, Is.EqualTo(ScalarType.Float32), "upstream's formula returns fp32 under autocast (pow on the fp32 list, fp32 affine)");
        var expected = Formula64(x, ln.weight, ln.bias, 1e-6, roundCentredToBf16: true);
        double err = (y.to(ScalarType.Float64) - expected).abs().max().item<double>();
        Assert.That(err, Is.LessThan(1e-5), "fp32 arithmetic after the bf16 centring");
        // the bf16 centring is what makes it differ from an exact fp64 norm of the same bf16 input: the difference is
        // of bf16's relative precision (2^-8), not zero and not more
        double vsExact = (y.to(ScalarType.Float64) - Formula64(x, ln.weight, ln.bias, 1e-6, roundCentredToBf16: false)).abs().max().item<double>();
        Assert.That(vsExact, Is.LessThan(0.05));
    }

    [Test]
    public void LayerNorm2dOnFloat32InputIsThePlainFormula()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(4);
        using var ln = new LayerNorm2d(6, 1e-6);
        var x = torch.randn(1, 6, 4, 3);
        var y = ln.forward(x);
        Assert.That(y.dtype, Is.EqualTo(ScalarType.Float32));
        double err = (y.to(ScalarType.Float64) - Formula64(x, ln.weight, ln.bias, 1e-6, false)).abs().max().item<double>();
        Assert.That(err, Is.LessThan(1e-5));
    }

    private static Sequential DownSampler()
    {
        // the memory encoder's mask downsampler layout: [conv, LayerNorm2d, GELU] + final 1x1 conv
        return nn.Sequential(("0", nn.Conv2d(1, 4, 3, stride: 2, padding: 1)), ("1", new LayerNorm2d(4, 1e-6)),
                             ("2", nn.GELU()), ("3", nn.Conv2d(4, 8, 1)));
    }

    [Test]
    public void ForwardSequentialEqualsForwardInFloat32()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(5);
        using var seq = DownSampler();
        var x = torch.rand(2, 1, 16, 16);
        var a = seq.forward(x);
        var b = PrecisionPolicy.ForwardSequential(seq, x);
        Assert.That(a.eq(b).all().item<bool>(), Is.True, "fp32: exactly Sequential.forward");
    }

    [Test]
    public void ForwardSequentialCastsInFrontOfEachGemmUnderThePolicy()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(6);
        using var seq = DownSampler();
        var x = torch.rand(2, 1, 16, 16);
        var reference = seq.forward(x).to(ScalarType.Float64);
        PrecisionPolicy.Apply(seq);
        Assert.That(((Conv2d)seq.children().First()).weight!.dtype, Is.EqualTo(ScalarType.BFloat16));
        // plain Sequential.forward fails: the LayerNorm2d's fp32 output meets the bf16 weights of the last conv
        Assert.That(() => seq.forward(x.to(ScalarType.BFloat16)), Throws.Exception);
        var y = PrecisionPolicy.ForwardSequential(seq, x);
        Assert.That(y.dtype, Is.EqualTo(ScalarType.BFloat16), "the last convolution's output dtype, as under autocast");
        double rel = (y.to(ScalarType.Float64) - reference).abs().max().item<double>() / reference.abs().max().item<double>();
        Assert.That(rel, Is.LessThan(0.03), "bf16 rounding of weights and activations only");
    }
}
