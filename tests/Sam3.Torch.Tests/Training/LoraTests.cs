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
            Assert.That(reloaded.Parameters().Where(p => p.Name.EndsWith("lora_A")).All(p => p.Parameter.grad!.abs().max().item<float>() > 0), Is.True);

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
