using Sam3.Torch.Loading;
using System.Diagnostics;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Parity;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Processing;

/// <summary>
/// The SAM1-style interactive predictor (predict_inst) through the public API on the tiny model: shapes and ordering,
/// refinement, batched boxes, the best-mask helper, errors, lifetime, and that the backbone is not rerun. Expected
/// values come from scenario d (tiny/d_predict_inst) or from the definitions of the outputs.
/// </summary>
[TestFixture, Category("Fast")]
public class InteractivePredictorTests
{
    private Sam3ImageModel _model = null!;
    private Sam3Processor _processor = null!;
    private Sam3ImageState _state = null!;
    private InteractiveImagePredictor _predictor = null!;
    private ScenarioFixture _fx = null!;
    private int _h, _w, _lowRes;

    // scenario d's prompts (parameters.calls; ParityRunner reads them from the JSON, these tests use them as examples)
    private static readonly InteractivePoint Click1 = InteractivePoint.Positive(560, 400);
    private static readonly InteractivePoint Click2 = InteractivePoint.Positive(800, 250);
    private static readonly PixelBox[] Boxes = [new(100, 200, 600, 700), new(640, 150, 1000, 600), new(1000, 300, 1250, 500)];

    [OneTimeSetUp]
    public void SetUp()
    {
        var cfg = Sam3Config.Load(SharedData.Parity("tiny", "config.json"));
        _model = Sam3ModelLoader.LoadImageModel(TinyWeights.Path, cfg);
        var tokenizer = ClipBpeTokenizer.FromBpeGz(SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"), new ClipTokenizerOptions { Text = cfg.Text });
        _processor = new Sam3Processor(_model, tokenizer);
        _state = _processor.SetImage(SharedData.Parity("inputs", "test_image.jpg"));
        (_h, _w) = _state.OriginalSizes[0];
        _predictor = new InteractiveImagePredictor(_model);
        _lowRes = _predictor.LowResMaskSize;
        _fx = Fixtures.Tiny("d_predict_inst");
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        _fx?.Dispose();
        _state?.Dispose();
        _processor?.Dispose();
        _model?.Dispose();
    }

    /// <summary>Same shape and bit-identical values.</summary>
    private static bool Same(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        return a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();
    }

    private InteractivePrediction Call1() => _predictor.Predict(_state, InteractivePrompt.FromPoints(Click1));

    [Test]
    public void MultimaskGivesThreeMasksInTokenOrder()
    {
        using var scope = NewDisposeScope();
        Tensor? decoderMasks = null;
        using var r = _predictor.Predict(_state, InteractivePrompt.FromPoints(Click1), probe: (n, t) =>
        {
            // probe tensors live only during the call: keep a copy outside its dispose scope
            if (n == "sam.mask_decoder.0") decoderMasks = t.clone().DetachFromDisposeScope();
        });
        Assert.That(r.Masks.shape, Is.EqualTo(new long[] { 3, _h, _w }));
        Assert.That(r.Masks.dtype, Is.EqualTo(ScalarType.Bool));
        Assert.That(r.IouScores.shape, Is.EqualTo(new long[] { 3 }));
        Assert.That(r.LowResLogits.shape, Is.EqualTo(new long[] { 3, _lowRes, _lowRes }));
        Assert.That(r.MaskLogits, Is.Null);
        Assert.That(r.IsBatched, Is.False);
        Assert.That(r.NumMasks, Is.EqualTo(3));
        // not re-sorted: the decoder's multimask tokens 1..3 in order, and the reference's order (predict returns them as is)
        Assert.That(decoderMasks, Is.Not.Null);
        Assert.That(Same(r.LowResLogits, decoderMasks![0].clamp(-32, 32)), Is.True);
        decoderMasks.Dispose();
        Fixtures.AssertClose(_fx, "call1.iou_predictions", r.IouScores);
        Fixtures.AssertClose(_fx, "call1.low_res_masks", r.LowResLogits);
        Fixtures.AssertClose(_fx, "call1.masks", r.Masks);
    }

    [Test]
    public void SingleMaskGivesOneMask()
    {
        using var r = _predictor.Predict(_state, new InteractivePrompt { Box = Boxes[1], MultimaskOutput = false });
        Assert.That(r.Masks.shape, Is.EqualTo(new long[] { 1, _h, _w }));
        Assert.That(r.IouScores.shape, Is.EqualTo(new long[] { 1 }));
        Assert.That(r.LowResLogits.shape, Is.EqualTo(new long[] { 1, _lowRes, _lowRes }));
        Assert.That(r.ObjectScoreLogits.shape, Is.EqualTo(new long[] { 1 }));
        Fixtures.AssertClose(_fx, "call3.low_res_masks", r.LowResLogits);
        Fixtures.AssertClose(_fx, "call3.masks", r.Masks);
    }

    [Test]
    public void MaskInputRefinesTheOutput()
    {
        using var scope = NewDisposeScope();
        using var first = Call1();
        var maskInput = first.BestLowResLogits();
        var clicks = new[] { Click1, Click2 };
        using var plain = _predictor.Predict(_state, new InteractivePrompt { Points = clicks, MultimaskOutput = false });
        using var refined = _predictor.Predict(_state, new InteractivePrompt { Points = clicks, MaskInput = maskInput, MultimaskOutput = false });
        double change = (refined.LowResLogits - plain.LowResLogits).abs().max().item<float>();
        TestContext.Out.WriteLine($"max |refined − plain| low-res logit: {change}");
        Assert.That(change, Is.GreaterThan(1e-2), "the mask input has no effect");
        Fixtures.AssertClose(_fx, "call2.low_res_masks", refined.LowResLogits);
        Fixtures.AssertClose(_fx, "call2.masks", refined.Masks);
        // [4N,4N] and [1,1,4N,4N] are accepted as well and mean the same
        using var flat = _predictor.Predict(_state, new InteractivePrompt { Points = clicks, MaskInput = maskInput[0], MultimaskOutput = false });
        using var four = _predictor.Predict(_state, new InteractivePrompt { Points = clicks, MaskInput = maskInput.unsqueeze(0), MultimaskOutput = false });
        Assert.That(Same(flat.LowResLogits, refined.LowResLogits) && Same(four.LowResLogits, refined.LowResLogits), Is.True);
        // the mask input alone is a valid prompt
        using var maskOnly = _predictor.Predict(_state, new InteractivePrompt { MaskInput = maskInput, MultimaskOutput = false });
        Assert.That(maskOnly.Masks.shape, Is.EqualTo(new long[] { 1, _h, _w }));
    }

    [Test]
    public void BatchedBoxesGiveOneMaskSetPerBox()
    {
        using var single = _predictor.PredictBoxes(_state, Boxes, multimaskOutput: false);
        Assert.That(single.IsBatched, Is.True);
        Assert.That(single.NumPrompts, Is.EqualTo(3));
        Assert.That(single.Masks.shape, Is.EqualTo(new long[] { 3, 1, _h, _w }));
        Assert.That(single.IouScores.shape, Is.EqualTo(new long[] { 3, 1 }));
        Assert.That(single.LowResLogits.shape, Is.EqualTo(new long[] { 3, 1, _lowRes, _lowRes }));
        Fixtures.AssertClose(_fx, "call4.low_res_masks", single.LowResLogits);
        Fixtures.AssertClose(_fx, "call4.masks", single.Masks);

        using var multi = _predictor.PredictBoxes(_state, Boxes, multimaskOutput: true, returnLogits: true);
        Assert.That(multi.Masks.shape, Is.EqualTo(new long[] { 3, 3, _h, _w }));
        Assert.That(multi.MaskLogits!.shape, Is.EqualTo(new long[] { 3, 3, _h, _w }));

        // box k of the batch = the same box alone (the image is repeated per prompt set)
        using var alone = _predictor.Predict(_state, new InteractivePrompt { Box = Boxes[1], MultimaskOutput = false });
        using var scope = NewDisposeScope();
        Assert.That((single.LowResLogits[1] - alone.LowResLogits).abs().max().item<float>(), Is.LessThan(1e-5f));
        // one box through PredictBoxes keeps the prompt dimension
        using var one = _predictor.PredictBoxes(_state, [Boxes[1]], multimaskOutput: false);
        Assert.That(one.Masks.shape, Is.EqualTo(new long[] { 1, 1, _h, _w }));
        Assert.That(Same(one.LowResLogits[0], alone.LowResLogits), Is.True);
    }

    [Test]
    public void BestMaskHelperPicksTheHighestIou()
    {
        using var scope = NewDisposeScope();
        using var r = Call1();
        var iou = r.IouArray();
        int expected = Array.IndexOf(iou, iou.Max());
        Assert.That(r.BestIndex(), Is.EqualTo(expected));
        // the reference's call2 used low_res_masks[argmax(call1.iou_predictions)]
        Assert.That(r.BestIndex(), Is.EqualTo(_fx.Get("call1.iou_predictions").argmax().item<long>()));
        Assert.That(Same(r.BestMask(), r.Masks[expected]), Is.True);
        var best = r.BestLowResLogits();
        Assert.That(best.shape, Is.EqualTo(new long[] { 1, _lowRes, _lowRes }));
        Assert.That(Same(best, r.LowResLogits[expected].unsqueeze(0)), Is.True);
        var bytes = r.MaskBytes(expected);
        Assert.That(bytes.Length, Is.EqualTo(_h * _w));
        Assert.That(bytes.Count(b => b == 1), Is.EqualTo(r.Masks[expected].sum().item<long>()));

        using var batch = _predictor.PredictBoxes(_state, Boxes, multimaskOutput: true);
        for (int k = 0; k < 3; k++)
        {
            var row = batch.IouArray(k);
            Assert.That(batch.BestIndex(k), Is.EqualTo(Array.IndexOf(row, row.Max())));
            Assert.That(Same(batch.BestMask(k), batch.Masks[k, batch.BestIndex(k)]), Is.True);
        }
        Assert.Throws<Sam3PromptException>(() => batch.BestIndex(3));
    }

    [Test]
    public void MasksAreThePostprocessedLogitsAboveTheThreshold()
    {
        using var scope = NewDisposeScope();
        using var r = _predictor.Predict(_state, InteractivePrompt.FromPoints(Click1) with { ReturnLogits = true });
        Assert.That(r.MaskLogits!.shape, Is.EqualTo(new long[] { 3, _h, _w }));
        Assert.That(Same(r.Masks, r.MaskLogits.gt(0)), Is.True);
        // logits = hole filling (≤ 256 px, +10) of the unclamped low-res logits, then bilinear upsampling
        var expected = MaskPost.PostprocessSam1Masks(r.LowResLogits.unsqueeze(0), _h, _w, _model.Config.HardcodedInClasses).squeeze(0);
        Assert.That((expected - r.MaskLogits).abs().max().item<float>(), Is.LessThan(1e-5f));
    }

    [Test]
    public void ReferenceLowResLogitsPostprocessToTheReferenceMasks()
    {
        // The fixture's own low-res logits through our post-processing give the fixture's masks, except where the
        // upsampled logit is ~0 (fp32 rounding of the bilinear sum differs between torch builds: call1 has one such pixel,
        // at logit 1.2e-7 here, 3.7e-7 in float64).
        using var scope = NewDisposeScope();
        var hc = _model.Config.HardcodedInClasses;
        foreach (var tag in new[] { "call1", "call2", "call3" })
        {
            var logits = MaskPost.PostprocessSam1Masks(_fx.Get($"{tag}.low_res_masks").unsqueeze(0), _h, _w, hc).squeeze(0);
            var differ = logits.gt(0).ne(_fx.Get($"{tag}.masks"));
            long mism = differ.sum().item<long>();
            double worst = mism == 0 ? 0 : logits.masked_select(differ).abs().max().item<float>();
            TestContext.Out.WriteLine($"{tag}: {mism} mismatching pixels, largest |logit| among them {worst:G3}");
            Assert.That(mism, Is.LessThanOrEqualTo(2), tag);
            Assert.That(worst, Is.LessThan(1e-5), $"{tag}: a mask pixel differs away from the decision boundary");
        }
    }

    [Test]
    public void BatchedStateSelectsTheImage()
    {
        using var scope = NewDisposeScope();
        var truck = SharedData.Parity("inputs", "truck.jpg");
        using var pair = _processor.SetImageBatch([Sam3.Torch.IO.ImageLoader.Load(SharedData.Parity("inputs", "test_image.jpg")), Sam3.Torch.IO.ImageLoader.Load(truck)]);
        using var alone = _processor.SetImage(truck);
        var (h1, w1) = pair.OriginalSizes[1];
        var prompt = InteractivePrompt.FromPoints(InteractivePoint.Positive(w1 / 2f, h1 / 2f));
        using var a = _predictor.Predict(pair, prompt, imageIndex: 1);
        using var b = _predictor.Predict(alone, prompt);
        Assert.That(a.ImageIndex, Is.EqualTo(1));
        Assert.That(a.Masks.shape, Is.EqualTo(new long[] { 3, h1, w1 }));
        Assert.That((a.LowResLogits - b.LowResLogits).abs().max().item<float>(), Is.LessThan(1e-4f));
        using var c = _predictor.Predict(pair, InteractivePrompt.FromPoints(Click1), imageIndex: 0);
        Fixtures.AssertClose(_fx, "call1.low_res_masks", c.LowResLogits);
    }

    [Test]
    public void InvalidPromptsAreTypedErrors()
    {
        using var scope = NewDisposeScope();
        void Bad(InteractivePrompt p, string what, int imageIndex = 0)
        {
            var e = Assert.Throws<Sam3PromptException>(() => _predictor.Predict(_state, p, imageIndex), what);
            TestContext.Out.WriteLine($"{what}: {e!.Message}");
        }
        Bad(new InteractivePrompt(), "empty prompt");
        Bad(new InteractivePrompt { MultimaskOutput = false }, "empty prompt (single mask)");
        Bad(InteractivePrompt.FromPoints(new InteractivePoint(_w + 1, 10)), "point right of the image");
        Bad(InteractivePrompt.FromPoints(new InteractivePoint(10, -0.5f)), "point above the image");
        Bad(InteractivePrompt.FromPoints(new InteractivePoint(10, 10, 2)), "label 2");
        Bad(InteractivePrompt.FromPoints(new InteractivePoint(10, 10, -1)), "label -1");
        Bad(InteractivePrompt.FromPoints(new InteractivePoint(float.NaN, 10)), "NaN point");
        Bad(InteractivePrompt.FromPoints(new InteractivePoint(10, float.PositiveInfinity)), "infinite point");
        Bad(InteractivePrompt.FromBox(new PixelBox(0, 0, float.NaN, 10)), "NaN box");
        Bad(InteractivePrompt.FromBox(new PixelBox(0, 0, _w + 10, 10)), "box outside");
        Bad(InteractivePrompt.FromBox(new PixelBox(50, 50, 10, 10)), "inverted box");
        Bad(new InteractivePrompt { MaskInput = torch.zeros(1, 64, 64) }, "mask input of the wrong size");
        Bad(new InteractivePrompt { MaskInput = torch.zeros(3, _lowRes, _lowRes) }, "mask input with 3 masks");
        Bad(new InteractivePrompt { MaskInput = torch.zeros(1, _lowRes, _lowRes, dtype: ScalarType.Bool) }, "bool mask input");
        var nanMask = torch.zeros(1, _lowRes, _lowRes);
        nanMask[0, 5, 5] = torch.tensor(float.NaN);
        Bad(new InteractivePrompt { MaskInput = nanMask }, "NaN in mask input");
        Bad(InteractivePrompt.FromPoints(Click1), "image index 1 of a single image", imageIndex: 1);
        Bad(InteractivePrompt.FromPoints(Click1), "negative image index", imageIndex: -1);
        Assert.Throws<Sam3PromptException>(() => _predictor.PredictBoxes(_state, []));
        Assert.Throws<Sam3PromptException>(() => _predictor.PredictBoxes(_state, [Boxes[0], new PixelBox(0, 0, 10, _h + 1)]));
        Assert.Throws<Sam3PromptException>(() => _predictor.PredictBoxes(_state, Boxes, imageIndex: 2));
    }

    [Test]
    public void DisposedStateAndModelWithoutHeadsAreStateErrors()
    {
        var state = _processor.SetImage(SharedData.Parity("inputs", "test_image.jpg"));
        state.Dispose();
        Assert.Throws<Sam3StateException>(() => _predictor.Predict(state, InteractivePrompt.FromPoints(Click1)));
        Assert.Throws<Sam3StateException>(() => _predictor.PredictBoxes(state, Boxes));
        Assert.Throws<Sam3StateException>(() => _predictor.Predict(null!, InteractivePrompt.FromPoints(Click1)));

        using var noHeads = new Sam3ImageModel(_model.Config, enableInstInteractivity: false);
        var e = Assert.Throws<Sam3StateException>(() => new InteractiveImagePredictor(noHeads));
        Assert.That(e!.Message, Does.Contain("interactive heads"));
    }

    [Test]
    public void RepeatedCallsLeaveNoLiveTensors()
    {
        var live = new List<long>();
        using var first = Call1();
        for (int i = 0; i < 5; i++)
        {
            using (var mask = first.BestLowResLogits())
            using (var a = _predictor.Predict(_state, new InteractivePrompt { Points = [Click1, Click2], MaskInput = mask, MultimaskOutput = false, ReturnLogits = true }))
            using (var b = _predictor.PredictBoxes(_state, Boxes, multimaskOutput: false))
            {
                _ = a.BestIndex();
            }
            live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        TestContext.Out.WriteLine($"live tensors after each call: {string.Join(", ", live)}");
        Assert.That(live[4], Is.EqualTo(live[1]), "live tensor count grows across interactive calls");
    }

    [Test]
    public void PredictDoesNotRunTheBackbone()
    {
        // Evidence without timing: poison every vision-backbone weight with NaN after SetImage; predictions must be
        // unchanged (a backbone pass would turn everything into NaN). The weights are restored afterwards.
        using var before = Call1();
        var saved = new List<(Tensor param, Tensor copy)>();
        try
        {
            using (torch.no_grad())
                foreach (var p in _model.backbone.vision_backbone.trunk.parameters())
                {
                    saved.Add((p, p.detach().clone().DetachFromDisposeScope()));
                    p.fill_(float.NaN);
                }
            using var after = Call1();
            Assert.That(Same(after.LowResLogits, before.LowResLogits), Is.True);
            Assert.That(Same(after.IouScores, before.IouScores), Is.True);
            Assert.That(Same(after.Masks, before.Masks), Is.True);
        }
        finally
        {
            using (torch.no_grad())
                foreach (var (p, copy) in saved) { p.copy_(copy); copy.Dispose(); }
        }
    }

    [Test]
    public void LatencyOfOneInteractiveCall()
    {
        using (Call1()) { } // warm-up
        var sw = Stopwatch.StartNew();
        const int n = 5;
        for (int i = 0; i < n; i++) using (Call1()) { }
        double click = sw.Elapsed.TotalMilliseconds / n;
        sw.Restart();
        for (int i = 0; i < n; i++) using (_predictor.PredictBoxes(_state, Boxes, multimaskOutput: false)) { }
        double boxes = sw.Elapsed.TotalMilliseconds / n;
        TestContext.Out.WriteLine($"tiny config, {_w}x{_h} image, CPU ({Environment.ProcessorCount} cores): one click (3 masks) {click:F1} ms; 3 batched boxes {boxes:F1} ms");
        Assert.That(click, Is.GreaterThan(0));
    }
}
