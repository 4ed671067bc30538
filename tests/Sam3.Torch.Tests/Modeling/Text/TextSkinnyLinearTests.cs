using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Text;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Text;

/// <summary>
/// The text encoder's few-token path on <see cref="Sam3.Torch.Modeling.Common.SkinnyLinear"/> (issue 15): within fp32
/// rounding of LibTorch's <c>linear</c> and of the upstream fixture; LibTorch's path wherever the kernel must not run
/// (option off, LoRA adapters, trainable parameters under grad mode).
/// </summary>
[TestFixture, Category("Fast"), Category("Parity")]
public class TextSkinnyLinearTests
{
    private const string Prefix = "detector.backbone.language_backbone.";

    private static VETextEncoder Tiny()
    {
        var m = new VETextEncoder(Sam3Config.Tiny);
        TinyWeights.LoadInto(m, Prefix);
        m.eval();
        return m;
    }

    private static Tensor Features(VETextEncoder m, Tensor ids, bool kernel)
    {
        m.UseSkinnyLinear = kernel;
        try { return m.forward(ids, skipPaddedPositions: true).LanguageFeatures; }
        finally { m.UseSkinnyLinear = true; }
    }

    [Test]
    public void KernelPathAgreesWithLinearAndWithTheFixture()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = fx.Get("text.token_ids");
        long real = ids.ne(0).nonzero().max().item<long>() + 1;
        var keep = TensorIndex.Slice(0, real);
        var withKernel = Features(m, ids, true)[keep];
        var withLinear = Features(m, ids, false)[keep];
        var expected = fx.Get("text.out.1")[keep];
        double scale = expected.abs().max().item<float>();
        Assert.That((withKernel - withLinear).abs().max().item<float>(), Is.LessThan(1e-5 * scale));
        Assert.That((withKernel - expected).abs().max().item<float>(), Is.LessThan(1e-4), "the fixture's bar for the real positions");
    }

    [Test]
    public void TrainableParametersUnderGradModeKeepLinearAndItsGradient()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        var ids = fx.Get("text.token_ids");
        Tensor reference;
        using (no_grad()) reference = Features(m, ids, false);
        var graded = Features(m, ids, true);
        Assert.That(graded.requires_grad, Is.True, "autograd recorded the projections");
        Assert.That(graded.detach().eq(reference).all().item<bool>(), Is.True, "LibTorch's path, bit for bit");
    }

    [Test]
    public void AttachedLoraAdaptersKeepLinear()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = fx.Get("text.token_ids");
        var bare = Features(m, ids, false);
        using var lora = LoraModel.Attach(m, new LoraOptions
        {
            Parts = [new LoraPart("text block 0", ["encoder.transformer.resblocks.0.attn"], 2, 4)],
        });
        Assert.That(lora.Adapters.Select(a => a.Target), Is.EquivalentTo(new[]
        {
            "encoder.transformer.resblocks.0.attn.q_proj", "encoder.transformer.resblocks.0.attn.k_proj",
            "encoder.transformer.resblocks.0.attn.v_proj", "encoder.transformer.resblocks.0.attn.out_proj",
        }));
        torch.manual_seed(19);
        foreach (var a in lora.Adapters) a.lora_B.copy_(torch.randn(a.lora_B.shape) * 0.5);
        var withLinear = Features(m, ids, false);
        var withKernel = Features(m, ids, true);
        long real = ids.ne(0).nonzero().max().item<long>() + 1;
        var keep = TensorIndex.Slice(0, real);
        double scale = withLinear[keep].abs().max().item<float>();
        Assert.That((withLinear[keep] - bare[keep]).abs().max().item<float>(), Is.GreaterThan(1e-2 * scale), "the adapters change the output");
        Assert.That((withKernel[keep] - withLinear[keep]).abs().max().item<float>(), Is.LessThan(1e-5 * scale), "the kernel path keeps the adapters");
    }
}
