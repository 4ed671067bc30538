using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Text;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Text;

/// <summary>
/// The text transformer over the real tokens only (<c>skipPaddedPositions</c>, issue 15): the unmasked positions equal
/// upstream's (fixture), the masked ones are zero, and the detector's outputs do not change (every consumer masks them).
/// </summary>
[TestFixture, Category("Fast"), Category("Parity")]
public class TextRealTokensTests
{
    private const string Prefix = "detector.backbone.language_backbone.";

    private static VETextEncoder Tiny()
    {
        var m = new VETextEncoder(Sam3Config.Tiny);
        TinyWeights.LoadInto(m, Prefix);
        m.eval();
        return m;
    }

    [Test]
    public void RealPositionsMatchTheFixtureAndPaddedOnesAreZero()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = fx.Get("text.token_ids");
        var o = m.forward(ids, skipPaddedPositions: true);
        long real = ids.ne(0).nonzero().max().item<long>() + 1;
        Assert.That(real, Is.GreaterThan(1).And.LessThan(ids.shape[1]), "the fixture prompt is padded");
        Fixtures.AssertClose(fx, "text.out.0", o.LanguageMask);
        Fixtures.AssertClose(fx, "text.out.2", o.LanguageEmbeds);
        var expected = fx.Get("text.out.1");
        Assert.That(o.LanguageFeatures.shape, Is.EqualTo(expected.shape));
        var keep = TensorIndex.Slice(0, real);
        double diff = (o.LanguageFeatures[keep] - expected[keep]).abs().max().item<float>();
        Assert.That(diff, Is.LessThan(1e-4), "unmasked positions equal upstream's (causal attention: nothing later is read)");
        Assert.That(o.LanguageFeatures[TensorIndex.Slice(real, null)].abs().max().item<float>(), Is.EqualTo(0f));
        Assert.That(o.LanguageMask[0, TensorIndex.Slice(real, null)].all().item<bool>(), Is.True, "every zeroed position is masked");
    }

    [Test]
    public void BatchOfPromptsOfDifferentLengthsKeepsEachPromptsRealPositions()
    {
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var tokenizer = Sam3.Torch.Text.ClipBpeTokenizer.FromBpeGz(SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"));
        var (ids, pad) = tokenizer.TokenizeToTensors(["truck", "a red bus next to a yellow taxi"]);
        var full = m.forward(ids, pad);
        var skip = m.forward(ids, pad, skipPaddedPositions: true);
        var valid = pad.logical_not().transpose(0, 1).unsqueeze(-1); // [L,B,1]
        double diff = ((full.LanguageFeatures - skip.LanguageFeatures) * valid).abs().max().item<float>();
        Assert.That(diff, Is.LessThan(1e-5));
        long longest = pad.logical_not().sum(1).max().item<long>();
        Assert.That(skip.LanguageFeatures[TensorIndex.Slice(longest, null)].abs().max().item<float>(), Is.EqualTo(0f));
        Assert.That(skip.LanguageFeatures[TensorIndex.Slice(0, longest), 1].abs().max().item<float>(), Is.GreaterThan(0f));
    }

    [Test]
    public void PredictorDetectionsEqualTheFullContextRun()
    {
        int threads = get_num_threads();
        set_num_threads(1);
        try
        {
            using var sam = Sam3Model.Load(TinyWeights.Path, new Sam3ModelOptions
            {
                Config = Sam3Config.Tiny, TokenizerPath = SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"),
            });
            var image = Sam3.Torch.ImageLoader.Load(SharedData.Parity("inputs", "test_image.jpg"));
            using var p = sam.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = 0.0 });
            using var state = p.SetImage(image);
            // real tokens only (no probe attached), then all positions (a recorder attached: upstream's features)
            p.SetTextPrompt(state, "person");
            using var scope = NewDisposeScope();
            var fast = Outputs(state);
            int recorded = 0;
            using (var rec = sam.Record((_, _) => recorded++))
                p.SetTextPrompt(state, "person");
            Assert.That(recorded, Is.GreaterThan(0));
            var full = Outputs(state);
            Assert.That((fast.Logits - full.Logits).abs().max().item<float>(), Is.LessThan(1e-5f), "query logits");
            Assert.That((fast.Boxes - full.Boxes).abs().max().item<float>(), Is.LessThan(1e-5f), "boxes");
            Assert.That((fast.Masks - full.Masks).abs().max().item<float>(), Is.LessThan(1e-4f), "mask logits");
        }
        finally
        {
            set_num_threads(threads);
        }
    }

    private static (Tensor Logits, Tensor Boxes, Tensor Masks) Outputs(Sam3ImageState state)
    {
        var raw = state.RawOutput!;
        return (raw.PredLogits!.clone(), raw.PredBoxes!.clone(), raw.PredMasks!.clone());
    }
}
