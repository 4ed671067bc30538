using NUnit.Framework;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>LoRA adapters: attach per part, gradients only to adapters, save/load on their own, merge into the base weights.</summary>
[TestFixture, Category("Fast"), Category("Parity")]
public class LoraTests
{
    [Test]
    public void AdaptersTrainSaveLoadAndMerge()
    {
        using var fx = Fixtures.Tiny(TrainingFixture.Scenario);
        using var model = TrainingFixture.LoadTinyModel();
        var tokenizer = TrainingFixture.Tokenizer();
        using var batch = TrainingFixture.Batch(fx);
        TrainingMode.Apply(model, TrainingModelOptions.DeterministicRun);
        string path = Path.Combine(Path.GetTempPath(), $"sam3-lora-{Guid.NewGuid():N}.safetensors");

        var lora = LoraModel.Attach(model, new LoraOptions { Parts = [LoraPart.Attention(rank: 4, alpha: 8), LoraPart.Mlp(rank: 2, alpha: 4)] });
        try
        {
            // tiny model: 20 attentions × (q,k,v,out) + 4 ViT blocks × (qkv, proj) = 88; MLPs: 4 ViT × 2 + 7 layers × 2 = 22
            Assert.That(lora.Adapters.Count(a => a.Rank == 4), Is.EqualTo(88));
            Assert.That(lora.Adapters.Count(a => a.Rank == 2), Is.EqualTo(22));
            Assert.That(lora.Adapters.Select(a => a.Target), Does.Contain("backbone.vision_backbone.trunk.blocks.0.attn.qkv")
                .And.Contain("transformer.decoder.layers.0.self_attn.q_proj").And.Contain("transformer.encoder.layers.1.linear2"));
            Assert.That(model.parameters().Any(p => p.requires_grad), Is.False, "base frozen");
            using (torch.no_grad())
                foreach (var (_, p) in lora.Parameters().Where(x => x.Name.EndsWith("lora_B"))) p.copy_(torch.randn_like(p) * 0.05);
            lora.Save(path);
            lora.Dispose(); // detached: base model again

            using var reloaded = LoraModel.Load(model, path);
            Tensor[] adapted;
            using (var scope = NewDisposeScope())
            {
                using var outputs = Sam3TrainingForward.Forward(model, tokenizer, batch);
                var named = TrainingFixture.Named(outputs).ToList();
                named.Select(x => x.Value.square().mean()).Aggregate((a, b) => a + b).backward();
                adapted = named.Select(x => x.Value.detach().clone().DetachFromDisposeScope()).ToArray();
                // the adapters change the outputs: the fixture holds the base model's
                double change = named.Max(x => (x.Value - fx.Get(x.Name)).abs().max().item<float>());
                Assert.That(change, Is.GreaterThan(1e-3));
            }
            Assert.That(reloaded.Parameters().All(p => p.Parameter.grad is not null), Is.True, "every adapter parameter gets a gradient");
            Assert.That(model.parameters().All(p => p.grad is null), Is.True, "frozen base gets none");
            // A's gradient is Bᵀ·(dL/dy)·x: nonzero wherever the adapter's output gradient is, which B's own gradient shows.
            // (Some outputs' gradients are zero up to float noise — e.g. a constant shift of softmax logits — and a CPU's
            // kernels may round that noise to exactly 0, so the pairing is asserted, and that nearly all adapters learn.)
            var grads = reloaded.Parameters().ToDictionary(p => p.Name, p => p.Parameter.grad!.abs().max().item<float>());
            var pairs = grads.Keys.Where(n => n.EndsWith("lora_A")).Select(n => (A: grads[n], B: grads[n[..^1] + "B"])).ToList();
            Assert.That(pairs.Where(x => x.B > 0).All(x => x.A > 0), Is.True, "lora_A gets a gradient wherever lora_B does");
            Assert.That(pairs.Count(x => x.A > 0), Is.GreaterThanOrEqualTo(pairs.Count * 9 / 10), "nearly every adapter learns");

            reloaded.MergeIntoBase();
            Assert.That(reloaded.Adapters, Is.Empty);
            using (var scope = NewDisposeScope())
            using (torch.no_grad())
            {
                using var merged = Sam3TrainingForward.Forward(model, tokenizer, batch);
                var m = TrainingFixture.Named(merged).Select(x => x.Value).ToArray();
                for (int i = 0; i < m.Length; i++)
                {
                    double d = (m[i] - adapted[i]).abs().max().item<float>();
                    Assert.That(d, Is.LessThanOrEqualTo(1e-5 + 1e-5 * adapted[i].abs().max().item<float>()), $"merged output {i}");
                }
            }
            foreach (var t in adapted) t.Dispose();
        }
        finally
        {
            lora.Dispose();
            if (File.Exists(path)) File.Delete(path);
        }
    }
}
