using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Decoder;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Tests.Modeling.Decoder;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Heads;

[TestFixture, Category("Fast")]
public class DetectorHeadsTests
{
    private static DotProductScoring LoadScoring()
    {
        var m = new DotProductScoring(Sam3Config.Tiny);
        TinyWeights.LoadInto(m, DetectorHeadLayoutTests.ScoringPrefix);
        m.eval();
        return m;
    }

    private static UniversalSegmentationHead LoadSeg()
    {
        var m = new UniversalSegmentationHead(Sam3Config.Tiny);
        TinyWeights.LoadInto(m, DetectorHeadLayoutTests.SegPrefix);
        m.eval();
        return m;
    }

    private static TransformerDecoder LoadDecoder()
    {
        var m = new TransformerDecoder(Sam3Config.Tiny);
        TinyWeights.LoadInto(m, DetectorHeadLayoutTests.DecoderPrefix);
        m.eval();
        return m;
    }

    /// <summary>score.dot_prod from the recorded decoder states (dec.out.0, transposed to batch-first) and prompt.</summary>
    [TestCaseSource(typeof(DetectorFixtures), nameof(DetectorFixtures.GroundingScenarios))]
    public void DotProductScoringMatchesTheReference(string scenario)
    {
        using var fx = Fixtures.Tiny(scenario);
        using var scoring = LoadScoring();
        using var _ = no_grad();
        var results = new List<ComparisonResult>();
        var prefixes = DetectorFixtures.Prefixes(fx, "score.dot_prod");
        Assert.That(prefixes, Is.Not.Empty);
        foreach (var p in prefixes)
        {
            using var scope = NewDisposeScope();
            var cmp = new ProbeComparer(fx, p);
            var hs = fx.Get(p + "dec.out.0").transpose(1, 2);
            var logits = scoring.forward(hs, fx.Get(p + "enc.out.memory_text"), DetectorFixtures.PromptMask(fx, p));
            cmp.Compare(p + "score.dot_prod", logits);
            results.AddRange(cmp.Results);
        }
        ProbeComparer.AssertAll(results, prefixes.Select(p => p + "score.dot_prod"));
    }

    [Test]
    public void DotProductScoringMathOnAHandExample()
    {
        // identity projections, no prompt MLP: logit = mean(valid prompt tokens)·hs / sqrt(d), clamped.
        var c = Sam3Config.Tiny.DotProdScoring with { DModel = 2, DProj = 2 };
        using var m = new DotProductScoring(c, Sam3Config.Tiny.HardcodedInClasses, usePromptMlp: false);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        foreach (var lin in new[] { m.prompt_proj, m.hs_proj })
        {
            lin.weight!.copy_(eye(2));
            lin.bias!.zero_();
        }
        var prompt = tensor(new[] { 1f, 2f, 3f, 4f, 100f, 100f }).view(3, 1, 2); // third token is padding
        var mask = tensor(new[] { false, false, true }).view(1, 3);
        var hs = tensor(new[] { 1f, 1f, 10f, 10f }).view(1, 1, 2, 2);
        var got = m.forward(hs, prompt, mask);
        // pooled = (2,3); q0: 5/sqrt2 = 3.5355; q1: 50/sqrt2 = 35.36 -> clamp 12
        Assert.That(got.shape, Is.EqualTo(new long[] { 1, 1, 2, 1 }));
        Assert.That(got[0, 0, 0, 0].item<float>(), Is.EqualTo(5f / MathF.Sqrt(2f)).Within(1e-5));
        Assert.That(got[0, 0, 1, 0].item<float>(), Is.EqualTo((float)Sam3Config.Tiny.HardcodedInClasses.DotProdClampMaxVal));
        // all-padding prompt: count clamped to 1 -> pooled 0 -> logits 0
        var allPad = m.forward(hs, prompt, ones(1, 3, dtype: ScalarType.Bool));
        Assert.That(allPad.abs().max().item<float>(), Is.EqualTo(0f));
        Assert.Throws<Sam3Exception>(() => m.forward(hs, prompt, ones(1, 4, dtype: ScalarType.Bool)));
    }

    /// <summary>
    /// Segmentation head from the recorded encoder memory, prompt, neck levels and decoder states; compares
    /// seg.cross_attend_prompt / seg.pixel_decoder / seg.instance_embeds (scenario a) and seg.out.* (every image/step).
    /// </summary>
    [TestCaseSource(typeof(DetectorFixtures), nameof(DetectorFixtures.GroundingScenarios))]
    public void SegmentationHeadMatchesTheReference(string scenario)
    {
        using var fx = Fixtures.Tiny(scenario);
        using var seg = LoadSeg();
        using var _ = no_grad();
        var results = new List<ComparisonResult>();
        var required = new List<string>();
        var prefixes = DetectorFixtures.Prefixes(fx, "seg.out.pred_masks");
        Assert.That(prefixes, Is.Not.Empty);
        var fpn = DetectorFixtures.BackboneFpn(fx, Sam3Config.Tiny);
        foreach (var p in prefixes)
        {
            using var scope = NewDisposeScope();
            var cmp = new ProbeComparer(fx, p + "seg.");
            var hs = fx.Get(p + "dec.out.0").transpose(1, 2);
            using var o = seg.forward(fpn, hs, DetectorFixtures.ImageIds(p), fx.Get(p + "enc.out.memory"),
                fx.Get(p + "enc.out.memory_text"), DetectorFixtures.PromptMask(fx, p), cmp.Probe);
            cmp.Compare(p + "seg.out.pred_masks", o.PredMasks);
            cmp.Compare(p + "seg.out.semantic_seg", o.SemanticSeg);
            Assert.That(o.PresenceLogit, Is.Null);
            results.AddRange(cmp.Results);
            required.AddRange(fx.Tensors.Keys.Where(k => k.StartsWith(p + "seg.", StringComparison.Ordinal)));
        }
        if (scenario == "a_image_text")
            Assert.That(required, Does.Contain("seg.pixel_decoder").And.Contain("seg.cross_attend_prompt").And.Contain("seg.instance_embeds"));
        ProbeComparer.AssertAll(results, required);
    }

    [Test]
    public void PixelDecoderUsesOnlyTwoOfItsThreeStages()
    {
        // Quirk: conv_layers.2 / norms.2 exist but are never used for 3 input levels.
        using var fx = Fixtures.Tiny("a_image_text");
        using var seg = LoadSeg();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var fpn = DetectorFixtures.BackboneFpn(fx, Sam3Config.Tiny);
        var before = seg.pixel_decoder.forward(fpn);
        seg.pixel_decoder.conv_layers[2].weight!.add_(1.0);
        seg.pixel_decoder.norms[2].bias!.add_(1.0);
        var after = seg.pixel_decoder.forward(fpn);
        Assert.That((after - before).abs().max().item<float>(), Is.EqualTo(0f));
        Assert.That(seg.pixel_decoder.conv_layers.Count, Is.EqualTo(3));
        // ... while stage 1 is used (a weight change: GroupNorm would cancel a constant bias shift)
        torch.manual_seed(5);
        seg.pixel_decoder.conv_layers[1].weight!.add_(torch.randn_like(seg.pixel_decoder.conv_layers[1].weight!) * 0.1);
        Assert.That((seg.pixel_decoder.forward(fpn) - before).abs().max().item<float>(), Is.GreaterThan(1e-3f));
    }

    /// <summary>
    /// _update_scores_and_boxes from the recorded decoder outputs (dec.out.0/1/2 → batch-first): pred_logits, pred_boxes,
    /// pred_boxes_xyxy, presence_logit_dec of every image/step.
    /// </summary>
    [TestCaseSource(typeof(DetectorFixtures), nameof(DetectorFixtures.GroundingScenarios))]
    public void ScoresAndBoxesFromRecordedDecoderOutputsMatch(string scenario)
    {
        using var fx = Fixtures.Tiny(scenario);
        using var dec = LoadDecoder();
        using var scoring = LoadScoring();
        var head = new GroundingHead(dec, scoring, null, Sam3Config.Tiny.HardcodedInClasses);
        using var _ = no_grad();
        var results = new List<ComparisonResult>();
        var required = new List<string>();
        var prefixes = DetectorFixtures.Prefixes(fx, "grounding.out.pred_logits");
        Assert.That(prefixes, Is.Not.Empty);
        string[] names = ["pred_logits", "pred_boxes", "pred_boxes_xyxy", "presence_logit_dec"];
        foreach (var p in prefixes)
        {
            using var scope = NewDisposeScope();
            var cmp = new ProbeComparer(fx, p);
            using var o = new GroundingOutput();
            head.UpdateScoresAndBoxes(o, fx.Get(p + "dec.out.0").transpose(1, 2), fx.Get(p + "dec.out.1").transpose(1, 2),
                fx.Get(p + "enc.out.memory_text"), DetectorFixtures.PromptMask(fx, p), fx.Get(p + "dec.out.2").transpose(1, 2));
            cmp.Compare(p + "grounding.out.pred_logits", o.PredLogits!);
            cmp.Compare(p + "grounding.out.pred_boxes", o.PredBoxes!);
            cmp.Compare(p + "grounding.out.pred_boxes_xyxy", o.PredBoxesXyxy!);
            cmp.Compare(p + "grounding.out.presence_logit_dec", o.PresenceLogitDec!);
            Assert.That(o.AuxOutputs, Is.Empty, "no aux outputs at eval");
            Assert.That(o.PredLogitsO2m, Is.Null);
            results.AddRange(cmp.Results);
            required.AddRange(names.Select(n => p + "grounding.out." + n));
        }
        ProbeComparer.AssertAll(results, required);
    }

    /// <summary>
    /// End to end after the encoder (forward_grounding minus prompt encoding and encoder): decoder + scoring + boxes +
    /// segmentation head from enc.out.* and the neck levels; compares every recorded dec./score./seg./grounding.out. tensor.
    /// </summary>
    [TestCaseSource(typeof(DetectorFixtures), nameof(DetectorFixtures.GroundingScenarios))]
    public void GroundingHeadsFromEncoderOutputsMatch(string scenario)
    {
        using var fx = Fixtures.Tiny(scenario);
        using var dec = LoadDecoder();
        using var scoring = LoadScoring();
        using var seg = LoadSeg();
        var head = new GroundingHead(dec, scoring, seg, Sam3Config.Tiny.HardcodedInClasses);
        using var _ = no_grad();
        var results = new List<ComparisonResult>();
        var required = new List<string>();
        var prefixes = DetectorFixtures.Prefixes(fx, "enc.out.memory");
        var fpn = DetectorFixtures.BackboneFpn(fx, Sam3Config.Tiny);
        var (h, w) = DetectorFixtures.FeatSize(fx, Sam3Config.Tiny);
        foreach (var p in prefixes)
        {
            using var scope = NewDisposeScope();
            var cmp = new ProbeComparer(fx, p);
            var inputs = new GroundingInputs(fx.Get(p + "enc.out.memory"), fx.Get(p + "enc.out.pos_embed"), h, w,
                fx.Get(p + "enc.out.memory_text"), DetectorFixtures.PromptMask(fx, p), fpn, DetectorFixtures.ImageIds(p));
            using var o = head.Forward(inputs, cmp.Probe);
            cmp.Compare(p + "grounding.out.pred_logits", o.PredLogits!);
            cmp.Compare(p + "grounding.out.pred_boxes", o.PredBoxes!);
            cmp.Compare(p + "grounding.out.pred_boxes_xyxy", o.PredBoxesXyxy!);
            cmp.Compare(p + "grounding.out.presence_logit_dec", o.PresenceLogitDec!);
            cmp.Compare(p + "grounding.out.pred_masks", o.PredMasks!);
            Assert.That(o.Queries!.shape, Is.EqualTo(new long[] { 1, 16, 32 }));
            Assert.That(o.SemanticSeg!.shape, Is.EqualTo(new long[] { 1, 1, 96, 96 }));
            results.AddRange(cmp.Results);
            required.AddRange(fx.Tensors.Keys.Where(k => k.StartsWith(p, StringComparison.Ordinal) &&
                new[] { "dec.", "score.", "seg.", "grounding.out." }.Any(s => k.StartsWith(p + s, StringComparison.Ordinal))));
        }
        ProbeComparer.AssertAll(results, required);
    }

    /// <summary>Video detector option: pred_logits = clamp(inverse_sigmoid(σ(logit)·σ(presence)), ±10), from the image-model logits.</summary>
    [Test]
    public void JointBoxScoresOptionCombinesLogitAndPresence()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var dec = LoadDecoder();
        using var scoring = LoadScoring();
        var hc = Sam3Config.Tiny.HardcodedInClasses;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var hs = fx.Get("dec.out.0").transpose(1, 2);
        var refs = fx.Get("dec.out.1").transpose(1, 2);
        var pres = fx.Get("dec.out.2").transpose(1, 2);
        var prompt = fx.Get("enc.out.memory_text");
        var mask = DetectorFixtures.PromptMask(fx, "");
        using var image = new GroundingOutput();
        new GroundingHead(dec, scoring, null, hc).UpdateScoresAndBoxes(image, hs, refs, prompt, mask, pres);
        using var video = new GroundingOutput();
        new GroundingHead(dec, scoring, null, hc, GroundingOptions.VideoDetector).UpdateScoresAndBoxes(video, hs, refs, prompt, mask, pres);

        var raw = image.PredLogits!.to(ScalarType.Float64);
        var p = image.PresenceLogitDec!.to(ScalarType.Float64); // [B,1]
        var prob = (raw.sigmoid() * p.sigmoid().unsqueeze(1)).clamp(0, 1);
        double eps = hc.InverseSigmoidEps;
        var expected = (prob.clamp(min: eps) / (1 - prob).clamp(min: eps)).log().clamp(-hc.PredLogitsJointClamp, hc.PredLogitsJointClamp);
        double err = (video.PredLogits!.to(ScalarType.Float64) - expected).abs().max().item<double>();
        Assert.That(err, Is.LessThan(1e-4));
        Assert.That((video.PredBoxes! - image.PredBoxes!).abs().max().item<float>(), Is.EqualTo(0f), "boxes unaffected");
        Assert.Throws<Sam3Exception>(() =>
            new GroundingHead(dec, scoring, null, hc, GroundingOptions.VideoDetector).UpdateScoresAndBoxes(new GroundingOutput(), hs, refs, prompt, mask, null));
    }

    /// <summary>Training path: DAC doubles the queries; o2o outputs, o2m outputs and per-layer aux outputs are all produced.</summary>
    [Test]
    public void TrainingProducesO2mAndAuxOutputs()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var dec = LoadDecoder();
        using var scoring = LoadScoring();
        using var seg = LoadSeg();
        var head = new GroundingHead(dec, scoring, seg, Sam3Config.Tiny.HardcodedInClasses);
        dec.train(); scoring.train(); seg.train();
        using var scope = NewDisposeScope();
        var (h, w) = DetectorFixtures.FeatSize(fx, Sam3Config.Tiny);
        var inputs = new GroundingInputs(fx.Get("enc.out.memory"), fx.Get("enc.out.pos_embed"), h, w, fx.Get("enc.out.memory_text"),
            DetectorFixtures.PromptMask(fx, ""), DetectorFixtures.BackboneFpn(fx, Sam3Config.Tiny), DetectorFixtures.ImageIds(""));
        using var o = head.Forward(inputs);
        int layers = Sam3Config.Tiny.Decoder.NumLayers;
        long q = Sam3Config.Tiny.Decoder.NumQueries;
        Assert.That(head.ApplyDac, Is.True);
        Assert.That(o.PredLogits!.shape, Is.EqualTo(new long[] { 1, q, 1 }));
        Assert.That(o.PredLogitsO2m!.shape, Is.EqualTo(new long[] { 1, q, 1 }));
        Assert.That(o.PredBoxesO2m!.shape, Is.EqualTo(new long[] { 1, q, 4 }));
        Assert.That(o.PredMasks!.shape, Is.EqualTo(new long[] { 1, q, 96, 96 }));
        Assert.That(o.PredMasksO2m!.shape, Is.EqualTo(new long[] { 1, q, 96, 96 }));
        Assert.That(o.AuxOutputs, Has.Count.EqualTo(layers - 1));
        Assert.That(o.AuxOutputs.All(a => a.PredLogits is not null && a.PredBoxesO2m is not null && a.PresenceLogitDec is not null), Is.True);
        var loss = o.PredLogits.sum() + o.PredBoxes!.sum() + o.PredMasks.mean() + o.AuxOutputs[0].PredLogitsO2m!.sum();
        loss.backward();
        Assert.That(dec.query_embed.weight!.grad, Is.Not.Null);
        Assert.That(scoring.hs_proj.weight!.grad, Is.Not.Null);
        Assert.That(seg.mask_predictor.mask_embed.layers[0].weight!.grad, Is.Not.Null);
    }

    [Test]
    public void ManyForwardsDoNotLeakTensors()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var dec = LoadDecoder();
        using var scoring = LoadScoring();
        using var seg = LoadSeg();
        var head = new GroundingHead(dec, scoring, seg, Sam3Config.Tiny.HardcodedInClasses);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var (h, w) = DetectorFixtures.FeatSize(fx, Sam3Config.Tiny);
        var inputs = new GroundingInputs(fx.Get("enc.out.memory"), fx.Get("enc.out.pos_embed"), h, w, fx.Get("enc.out.memory_text"),
            DetectorFixtures.PromptMask(fx, ""), DetectorFixtures.BackboneFpn(fx, Sam3Config.Tiny), DetectorFixtures.ImageIds(""));
        using (head.Forward(inputs)) { } // warm-up (coordinate cache)
        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 5; i++)
            using (head.Forward(inputs)) { }
        long after = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Assert.That(after - before, Is.LessThanOrEqualTo(0), $"live tensors grew by {after - before} over 5 forwards");
    }
}
