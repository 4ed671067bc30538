using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Decoder;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Decoder;

/// <summary>
/// The decoder's inference fast paths (issue 15 item 2: boxRPB MLPs in row blocks with the ReLU in place, memory + pos
/// added once, the memory's k/v projections of all layers in one GEMM each, FFN ReLU in place) run every element through
/// the same fp32 operations as the plain path, so the outputs are equal bit for bit; the fixture comparison itself is
/// <see cref="TransformerDecoderTests.DecoderMatchesTheReference"/> (eval + no_grad: the fast path). The fused boxRPB kernel
/// (<see cref="TransformerDecoder.UseRpbKernel"/>) is NOT bit-identical (another summation order), so these bit-for-bit
/// tests turn it off; it is checked against the plain path within fp32 rounding in <c>BoxRpbKernelTests</c>.
/// </summary>
[TestFixture, Category("Fast"), Category("Parity")]
public class DecoderFastPathTests
{
    private static TransformerDecoder LoadTiny()
    {
        var dec = new TransformerDecoder(Sam3Config.Tiny);
        TinyWeights.LoadInto(dec, DetectorHeadLayoutTests.DecoderPrefix);
        dec.eval();
        return dec;
    }

    [Test]
    public void FastPathsEqualThePlainPathBitForBitOnFixtureA()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var dec = LoadTiny();
        dec.UseRpbKernel = false;
        Assert.That(dec.num_layers, Is.GreaterThan(1), "the fused memory projections need several layers");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var memory = fx.Get("enc.out.memory");
        var (h, w) = DetectorFixtures.FeatSize(fx, Sam3Config.Tiny);
        var tgt = dec.query_embed.weight!.detach().unsqueeze(1).repeat(1, memory.shape[1], 1);
        TransformerDecoderOutput Run(bool fast, int block)
        {
            dec.UseInferenceFastPaths = fast;
            dec.RpbMlpRowBlock = block;
            return dec.forward(tgt, memory, fx.Get("enc.out.pos_embed"), h, w, fx.Get("enc.out.memory_text"),
                DetectorFixtures.PromptMask(fx, ""), applyDac: false);
        }
        using var plain = Run(false, TransformerDecoder.DefaultRpbMlpRowBlock);
        // block sizes: below the minimum (raised to it), an odd size that leaves a remainder, the default, more rows than there are
        foreach (var block in new[] { 1, TransformerDecoder.MinRpbMlpRowBlock + 33, TransformerDecoder.DefaultRpbMlpRowBlock, int.MaxValue })
        {
            using var fast = Run(true, block);
            Assert.Multiple(() =>
            {
                Assert.That(fast.Hs.eq(plain.Hs).all().item<bool>(), Is.True, $"hs, blocks of {block} rows");
                Assert.That(fast.ReferenceBoxes.eq(plain.ReferenceBoxes).all().item<bool>(), Is.True, $"boxes, blocks of {block}");
                Assert.That(fast.PresenceLogits!.eq(plain.PresenceLogits!).all().item<bool>(), Is.True, $"presence, blocks of {block}");
                Assert.That(fast.PresenceFeats!.eq(plain.PresenceFeats!).all().item<bool>(), Is.True, $"presence feats, blocks of {block}");
            });
        }
    }

    [Test]
    public void RowBlockedRpbEqualsTheModuleMlpsForEveryBlockSize()
    {
        torch.manual_seed(5);
        using var dec = new TransformerDecoder(Sam3Config.Tiny);
        dec.eval();
        dec.UseRpbKernel = false;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var boxes = rand(9, 2, 4) * 0.6 + 0.2;
        dec.UseInferenceFastPaths = false;
        var plain = dec.GetRpbMatrix(boxes, 6, 11, presenceRow: true);
        dec.UseInferenceFastPaths = true;
        // 9 queries × 2 images × 11 columns = 198 rows in the x-table: blocks 64 → 64 + 64 + 70 (a 6-row remainder joins the
        // last block), 65 → 65 + 65 + 68, 130 → 130 + 68, below the minimum → as 64, more than the rows → one call
        foreach (var block in new[] { 1, 64, 65, 130, 1 << 20 })
        {
            dec.RpbMlpRowBlock = block;
            Assert.That(dec.GetRpbMatrix(boxes, 6, 11, presenceRow: true).eq(plain).all().item<bool>(), Is.True, $"blocks of {block} rows");
        }
    }

    [Test]
    public void WithGradientsTheFastPathsAreOffAndGradientsFlow()
    {
        torch.manual_seed(6);
        using var dec = new TransformerDecoder(Sam3Config.Tiny);
        dec.eval();
        using var scope = NewDisposeScope();
        var boxes = (rand(4, 1, 4) * 0.6 + 0.2).requires_grad_(true);
        var bias = dec.GetRpbMatrix(boxes, 3, 4);
        Assert.That(bias.requires_grad, Is.True, "the plain (autograd) path runs when gradients are on");
        bias.sum().backward();
        Assert.That(dec.boxRPB_embed_x!.layers[0].weight!.grad, Is.Not.Null, "the boxRPB MLP weights get gradients");
        Assert.That(boxes.grad, Is.Not.Null);
    }
}

/// <summary>
/// LoRA adapters on the decoder's cross-attention k/v projections in inference: the fused memory projections of the fast
/// path add each layer's adapter as the module would, so a fine-tuned model's outputs equal the plain path's.
/// </summary>
[TestFixture, Category("Fast")]
public class DecoderFastPathLoraTests
{
    [Test]
    public void FastPathsWithAttachedAdaptersEqualThePlainPath()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var model = Sam3.Torch.Tests.Training.TrainingFixture.LoadTinyModel();
        var lora = Sam3.Torch.Training.Lora.LoraModel.Attach(model, new Sam3.Torch.Training.Lora.LoraOptions
            { Parts = [Sam3.Torch.Training.Lora.LoraPart.Attention(rank: 4, alpha: 8)] });
        torch.manual_seed(7);
        using (no_grad())
            foreach (var (_, p) in lora.Parameters().Where(x => x.Name.EndsWith("lora_B"))) p.copy_(randn_like(p) * 0.05);
        var dec = model.transformer.decoder;
        dec.eval();
        dec.UseRpbKernel = false; // bit-for-bit comparison: the fused boxRPB kernel sums in another order (BoxRpbKernelTests)
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var memory = fx.Get("enc.out.memory");
        var (h, w) = DetectorFixtures.FeatSize(fx, Sam3Config.Tiny);
        var tgt = dec.query_embed.weight!.detach().unsqueeze(1).repeat(1, memory.shape[1], 1);
        TransformerDecoderOutput Run(bool fast)
        {
            dec.UseInferenceFastPaths = fast;
            return dec.forward(tgt, memory, fx.Get("enc.out.pos_embed"), h, w, fx.Get("enc.out.memory_text"),
                DetectorFixtures.PromptMask(fx, ""), applyDac: false);
        }
        using var plain = Run(false);
        using var fast = Run(true);
        dec.UseInferenceFastPaths = true;
        lora.Dispose();
        using var bare = Run(true);
        Assert.That((plain.Hs - bare.Hs).abs().max().item<float>(), Is.GreaterThan(1e-4f), "the adapters change the decoder's output");
        Assert.That(fast.Hs.eq(plain.Hs).all().item<bool>(), Is.True, "hs");
        Assert.That(fast.ReferenceBoxes.eq(plain.ReferenceBoxes).all().item<bool>(), Is.True, "boxes");
    }
}
