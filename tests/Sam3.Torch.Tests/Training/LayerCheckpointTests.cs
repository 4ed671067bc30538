using NUnit.Framework;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Losses;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// <see cref="LayerCheckpoint"/> (upstream's checkpointing of the fusion encoder and decoder layers): the gradients equal
/// those of the plain forward, with dropout active (the generator state is replayed), with inputs that need no gradient
/// (the frozen-backbone case) and with null arguments and outputs.
/// </summary>
[TestFixture, Category("Fast")]
public class LayerCheckpointTests
{
    private sealed class TwoInputLayer : nn.Module
    {
        public readonly TorchSharp.Modules.Linear fc1 = nn.Linear(8, 16);
        public readonly TorchSharp.Modules.Linear fc2 = nn.Linear(16, 8);
        public TwoInputLayer() : base(nameof(TwoInputLayer)) { RegisterComponents(); }

        /// <summary>(x + dropout(fc2(relu(fc1(x + m)))), sum of the memory m or null).</summary>
        public Tensor?[] Forward(Tensor?[] t)
        {
            using var scope = NewDisposeScope();
            var x = t[0]!;
            var m = t[1]!;
            var h = nn.functional.dropout(fc2.forward(nn.functional.relu(fc1.forward(x + m))), 0.5, training: true);
            var y = (x + h).MoveToOuterDisposeScope();
            var s = t[2] is null ? null : (m.sum([0L]) * t[2]!).MoveToOuterDisposeScope();
            return [y, s];
        }
    }

    private static (Dictionary<string, Tensor> Grads, Tensor Y, Tensor NextRandom) Run(TwoInputLayer layer, Tensor x0, Tensor m0,
        bool checkpoint, bool inputsNeedGrad, bool withScale)
    {
        foreach (var p in layer.parameters()) { p.grad?.Dispose(); p.grad = null; }
        torch.manual_seed(11);
        var x = inputsNeedGrad ? x0.clone().requires_grad_(true) : x0.clone();
        var m = inputsNeedGrad ? m0.clone().requires_grad_(true) : m0.clone();
        Tensor? scale = withScale ? torch.full(8, 2.0f) : null;
        Tensor?[] outs = [x, null];
        for (int i = 0; i < 2; i++) // two layers in a row: the second one's input carries the first one's graph
            outs = checkpoint ? LayerCheckpoint.Apply(layer, layer.Forward, outs[0], m, scale) : layer.Forward([outs[0], m, scale]);
        var loss = outs[0]!.square().sum() + (outs[1]?.sum() ?? torch.tensor(0f));
        loss.backward();
        var grads = layer.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!.clone());
        if (inputsNeedGrad) { grads["x"] = x.grad!.clone(); grads["m"] = m.grad!.clone(); }
        return (grads, outs[0]!.detach(), torch.rand(3));
    }

    [TestCase(true, true)]
    [TestCase(false, true)]
    [TestCase(true, false)]
    public void SameGradientsAsThePlainForwardWithDropout(bool inputsNeedGrad, bool withScale)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(5);
        using var layer = new TwoInputLayer();
        var x0 = torch.randn(4, 8);
        var m0 = torch.randn(4, 8);
        var plain = Run(layer, x0, m0, checkpoint: false, inputsNeedGrad, withScale);
        var ckpt = Run(layer, x0, m0, checkpoint: true, inputsNeedGrad, withScale);
        Assert.Multiple(() =>
        {
            Assert.That((plain.Y - ckpt.Y).abs().max().item<float>(), Is.EqualTo(0), "forward output");
            // the generator is put back after the re-run: the next draw is the plain run's
            Assert.That((plain.NextRandom - ckpt.NextRandom).abs().max().item<float>(), Is.EqualTo(0), "generator state after backward");
            Assert.That(ckpt.Grads.Keys, Is.EquivalentTo(plain.Grads.Keys));
            foreach (var (name, g) in plain.Grads)
            {
                double max = g.abs().max().item<float>();
                Assert.That(max, Is.GreaterThan(0), name);
                Assert.That((ckpt.Grads[name] - g).abs().max().item<float>(), Is.LessThanOrEqualTo(1e-6 * max + 1e-7), name);
            }
        });
    }

    /// <summary>
    /// The tiny model's training forward and loss with dropout on (upstream's training probabilities), the fusion encoder and
    /// decoder checkpointed or not: the same loss and the same gradient of every trained parameter (vision backbone frozen,
    /// so the first encoder layer's input needs no gradient).
    /// </summary>
    [Test, Category("Parity")]
    public void TinyModelTrainingStepWithDropoutIsUnchangedByCheckpointing()
    {
        using var fx = Infrastructure.Fixtures.Tiny(TrainingFixture.Scenario);
        using var model = TrainingFixture.LoadTinyModel();
        var tokenizer = TrainingFixture.Tokenizer();
        using var batch = TrainingFixture.Batch(fx);
        var loss = new Sam3LossWrapper(TrainingConfig.Default);
        ParameterFreezing.Apply(model, FreezePreset.VisionEncoder);

        (double Loss, Dictionary<string, Tensor> Grads) Step(bool checkpoint)
        {
            TrainingMode.Apply(model, new TrainingModelOptions { TransformerActivationCheckpointing = checkpoint });
            Assert.That(model.transformer.encoder.use_act_checkpoint && model.transformer.decoder.use_act_checkpoint, Is.EqualTo(checkpoint));
            foreach (var p in model.parameters()) { p.grad?.Dispose(); p.grad = null; }
            torch.manual_seed(7);
            double value;
            using (var scope = NewDisposeScope())
            {
                using var outputs = Sam3TrainingForward.Forward(model, tokenizer, batch);
                var l = loss.Compute(outputs, batch.Targets);
                value = l.CoreLoss.item<float>();
                l.CoreLoss.backward();
            }
            return (value, model.named_parameters().Where(p => p.parameter.requires_grad && p.parameter.grad is not null)
                .ToDictionary(p => p.name, p => p.parameter.grad!.clone()));
        }

        var plain = Step(false);
        var ckpt = Step(true);
        TrainingMode.Exit(model);
        Assert.That(model.transformer.encoder.use_act_checkpoint, Is.False);
        Assert.That(ckpt.Loss, Is.EqualTo(plain.Loss).Within(1e-6 * Math.Abs(plain.Loss)), "loss (same dropout masks)");
        Assert.That(ckpt.Grads.Keys, Is.EquivalentTo(plain.Grads.Keys));
        Assert.That(plain.Grads.Keys.Count(k => k.StartsWith("transformer.encoder.layers.0.")), Is.GreaterThan(0),
            "the first encoder layer (input without gradient) gets its gradients");
        Assert.Multiple(() =>
        {
            foreach (var (name, g) in plain.Grads)
            {
                double max = g.abs().max().item<float>();
                Assert.That((ckpt.Grads[name] - g).abs().max().item<float>(), Is.LessThanOrEqualTo(1e-5 * max + 1e-7), name);
            }
        });
        foreach (var t in plain.Grads.Values.Concat(ckpt.Grads.Values)) t.Dispose();
    }
}
