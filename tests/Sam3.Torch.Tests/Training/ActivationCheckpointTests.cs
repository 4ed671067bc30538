using NUnit.Framework;
using Sam3.Torch.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>Activation checkpointing through a TorchSharp custom autograd function: same gradients as without it.</summary>
[TestFixture, Category("Fast")]
public class ActivationCheckpointTests
{
    [Test]
    public void CheckpointedBlockGivesTheSameGradients()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(3);
        var fc1 = nn.Linear(8, 16);
        var fc2 = nn.Linear(16, 8);
        var x0 = torch.randn(4, 8);
        Tensor Block(Tensor t) => fc2.forward(nn.functional.gelu(fc1.forward(t))) + t;

        (Tensor gx, Tensor g1, Tensor g2, Tensor y) Run(bool checkpoint)
        {
            fc1.zero_grad(); fc2.zero_grad();
            var x = x0.clone().requires_grad_(true);
            var h = x * 2;
            var y = checkpoint ? ActivationCheckpoint.Apply(Block, h) : Block(h);
            y = checkpoint ? ActivationCheckpoint.Apply(Block, y) : Block(y);
            y.square().sum().backward();
            return (x.grad!.clone(), fc1.weight!.grad!.clone(), fc2.weight!.grad!.clone(), y.detach());
        }

        var plain = Run(false);
        var ckpt = Run(true);
        Assert.Multiple(() =>
        {
            Assert.That((plain.y - ckpt.y).abs().max().item<float>(), Is.EqualTo(0));
            Assert.That((plain.gx - ckpt.gx).abs().max().item<float>(), Is.LessThan(1e-5));
            Assert.That((plain.g1 - ckpt.g1).abs().max().item<float>(), Is.LessThan(1e-5));
            Assert.That((plain.g2 - ckpt.g2).abs().max().item<float>(), Is.LessThan(1e-5));
            Assert.That(plain.g1.abs().max().item<float>(), Is.GreaterThan(0));
        });
    }
}
