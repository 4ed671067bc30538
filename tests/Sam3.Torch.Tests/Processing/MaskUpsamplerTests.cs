using NUnit.Framework;
using Sam3.Torch.Parity;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Processing;

/// <summary>
/// The kept-detections-only, chunked mask upsampling of the processor's post-processing, on the reference's own
/// low-resolution outputs of the tiny image scenarios: it must equal the previous path (all queries upsampled at once to
/// float, then sigmoid, then &gt; 0.5, then the kept ones selected) bit for bit, and the reference's masks and
/// probabilities within the parity bar.
/// </summary>
[TestFixture, Category("Fast"), Category("Parity")]
public class MaskUpsamplerTests
{
    private static IEnumerable<TestCaseData> Scenarios()
    {
        yield return new TestCaseData("a_image_text", 1L << 24).SetName("a_image_text, one chunk");
        yield return new TestCaseData("a_image_text", 1L).SetName("a_image_text, one detection a chunk");
        yield return new TestCaseData("b_image_batch_text", 1L).SetName("b_image_batch_text, one detection a chunk");
    }

    [TestCaseSource(nameof(Scenarios))]
    public void KeptOnlyChunkedPathEqualsTheAllQueriesPathAndTheReference(string scenario, long chunkElements)
    {
        using var fx = Fixtures.Tiny(scenario);
        using var scope = NewDisposeScope();
        var thresholds = fx.Parameters.GetProperty("confidence_threshold").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        // a: one image, tensors without prefix; b: images img0., img1. with a threshold each
        string[] prefixes = fx.Has("grounding.out.pred_masks") ? [""] : Enumerable.Range(0, thresholds.Length).Select(i => $"img{i}.").ToArray();
        Assert.That(prefixes.Length, Is.EqualTo(thresholds.Length), "one threshold per image");
        for (int i = 0; i < prefixes.Length; i++)
        {
            string prefix = prefixes[i];
            var predMasks = fx.Get(prefix + "grounding.out.pred_masks")[0];                // [Q,h,w]
            var logits = fx.Get(prefix + "grounding.out.pred_logits")[0];                  // [Q,1]
            var presence = fx.Get(prefix + "grounding.out.presence_logit_dec")[0];         // [1]
            var refMasks = fx.Get(prefix + "output.masks").squeeze(1);                     // [K,H,W]
            int h = (int)refMasks.shape[1], w = (int)refMasks.shape[2];
            var probs = (logits.sigmoid() * presence.sigmoid().unsqueeze(0)).squeeze(-1);
            var keep = probs.gt(thresholds[i]).nonzero().flatten();
            Assert.That(keep.shape[0], Is.EqualTo(refMasks.shape[0]), $"{prefix}kept detections = the reference's");
            Assert.That(keep.shape[0], Is.GreaterThan(0), "the scenario has detections");

            // previous path: every query at full resolution in float, then the kept ones
            var allProb = nn.functional.interpolate(predMasks.unsqueeze(1), [h, w], mode: InterpolationMode.Bilinear, align_corners: false)
                .sigmoid().squeeze(1);
            var oldProb = allProb.index_select(0, keep);
            var oldMasks = oldProb.gt(0.5);

            var low = predMasks.index_select(0, keep);
            var masks = MaskUpsampler.Masks(low, h, w, 0.5, chunkElements);
            var prob = MaskUpsampler.Probabilities(low, h, w, chunkElements);
            Assert.That(masks.dtype, Is.EqualTo(ScalarType.Bool));
            Assert.That(masks.shape, Is.EqualTo(new long[] { keep.shape[0], h, w }));
            Assert.That(masks.eq(oldMasks).all().item<bool>(), Is.True, "bool masks equal the all-queries path bit for bit");
            Assert.That(prob.eq(oldProb).all().item<bool>(), Is.True, "probabilities equal the all-queries path bit for bit");

            // and the reference within the parity bar
            var cmp = Tolerance.Default.Compare(prefix + "output.masks", masks, refMasks.to(ScalarType.Bool));
            TestContext.Out.WriteLine(cmp.ToString());
            Assert.That(cmp.Passed, Is.True, cmp.ToString());
            if (fx.Has(prefix + "output.masks_logits"))
            {
                // stored as float16 by the reference
                var refProb = fx.Get(prefix + "output.masks_logits").squeeze(1).to(ScalarType.Float32);
                double maxErr = (prob - refProb).abs().max().item<float>();
                TestContext.Out.WriteLine($"{prefix}output.masks_logits max abs error {maxErr:G3}");
                Assert.That(maxErr, Is.LessThanOrEqualTo(1e-3), "probabilities vs the float16 reference");
            }
        }
    }

    [Test]
    public void EmptySelectionGivesAnEmptyMaskTensor()
    {
        using var scope = NewDisposeScope();
        var masks = MaskUpsampler.Masks(torch.zeros(0, 8, 8), 20, 30, 0.5);
        Assert.That(masks.shape, Is.EqualTo(new long[] { 0, 20, 30 }));
        Assert.That(masks.dtype, Is.EqualTo(ScalarType.Bool));
    }

    [Test]
    public void BadArgumentsAreRejected()
    {
        using var scope = NewDisposeScope();
        Assert.Throws<ArgumentOutOfRangeException>(() => MaskUpsampler.Masks(torch.zeros(1, 8, 8), 0, 30, 0.5));
        Assert.Throws<ArgumentOutOfRangeException>(() => MaskUpsampler.Masks(torch.zeros(1, 8, 8), 20, 30, 0.5, 0));
        Assert.Throws<Sam3Exception>(() => MaskUpsampler.Masks(torch.zeros(1, 2, 8, 8), 20, 30, 0.5));
    }
}
