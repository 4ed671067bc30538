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
    /// <summary>The tiny ViT with <see cref="TrainingModelOptions.ActivationCheckpointing"/>: the same trunk gradients.</summary>
    [Test, Category("Parity")]
    public void CheckpointedViTGivesTheSameGradients()
    {
        using var fx = Infrastructure.Fixtures.Tiny(TrainingFixture.Scenario);
        using var model = TrainingFixture.LoadTinyModel();
        using var images = fx.Get("data.img_batch");
        Assert.Throws<ArgumentException>(() => TrainingMode.Apply(model, new TrainingModelOptions { ActivationCheckpointing = true }),
            "configured drop-path 0.1 with checkpointing");

        Dictionary<string, Tensor> Grads(bool checkpoint)
        {
            TrainingMode.Apply(model, new TrainingModelOptions { Deterministic = true, ActivationCheckpointing = checkpoint });
            Assert.That(model.backbone.vision_backbone.trunk.use_act_checkpoint, Is.EqualTo(checkpoint));
            foreach (var p in model.parameters()) { p.grad?.Dispose(); p.grad = null; }
            using (var scope = NewDisposeScope())
            {
                using var b = model.backbone.ForwardImage(images);
                b.BackboneFpn.Select(t => t.square().mean()).Aggregate((x, y) => x + y).backward();
            }
            return model.named_parameters().Where(p => p.name.StartsWith("backbone.vision_backbone.trunk."))
                .ToDictionary(p => p.name, p => p.parameter.grad!.clone());
        }

        var plain = Grads(false);
        var ckpt = Grads(true);
        Assert.That(ckpt.Keys, Is.EquivalentTo(plain.Keys));
        foreach (var (name, g) in plain)
        {
            double max = g.abs().max().item<float>();
            Assert.That(max, Is.GreaterThan(0), name);
            Assert.That((ckpt[name] - g).abs().max().item<float>(), Is.LessThanOrEqualTo(1e-5 * max + 1e-7), name);
        }
        foreach (var t in plain.Values.Concat(ckpt.Values)) t.Dispose();
        TrainingMode.Exit(model);
        Assert.That(model.backbone.vision_backbone.trunk.use_act_checkpoint, Is.False);
    }
}
