using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Parity;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Visualization;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Processing;

/// <summary>
/// The SAM1-style interactive predictor (predict_inst) through <see cref="Sam3InteractivePredictor"/> on the tiny model:
/// shapes and ordering, refinement, batched boxes, the best-mask helper, the public immutable
/// <see cref="InteractivePrediction"/> (equal to the internal tensor result), errors, lifetime, and that the backbone
/// is not rerun. Expected values come from scenario d (tiny/d_predict_inst) or from the definitions of the outputs;
/// the internal <c>PredictCore</c>/<c>PredictBoxesCore</c> give the tensors the fixture comparisons need.
/// </summary>
[TestFixture, Category("Fast")]
public class Sam3InteractivePredictorTests
{
    private Sam3Model _sam = null!;
    private Sam3ImagePredictor _images = null!;
    private Sam3ImageState _state = null!;
    private Sam3InteractivePredictor _predictor = null!;
    private ScenarioFixture _fx = null!;
    private int _h, _w, _lowRes;

    // scenario d's prompts (parameters.calls; ParityRunner reads them from the JSON, these tests use them as examples)
    private static readonly PointPrompt Click1 = PointPrompt.Pixel(560, 400);
    private static readonly PointPrompt Click2 = PointPrompt.Pixel(800, 250);
    private static readonly Box[] Boxes = [Box.FromXyxy(100, 200, 600, 700), Box.FromXyxy(640, 150, 1000, 600), Box.FromXyxy(1000, 300, 1250, 500)];

    private static string Vocab => SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz");

    [OneTimeSetUp]
    public void SetUp()
    {
        var cfg = Sam3Config.Load(SharedData.Parity("tiny", "config.json"));
        _sam = Sam3Model.Load(TinyWeights.Path, new Sam3ModelOptions { Config = cfg, TokenizerPath = Vocab });
        Assert.That(_sam.HasInteractivePredictor, Is.True);
        _images = _sam.CreateImagePredictor();
        _predictor = _sam.CreateInteractivePredictor();
        // the interactive predictor sets images itself; the detector's state is accepted as well (BatchedStateSelectsTheImage)
        _state = _predictor.SetImage(SharedData.Parity("inputs", "test_image.jpg"));
        (_w, _h) = _state.ImageSizes[0];
        _lowRes = _predictor.LowResMaskSize;
        _fx = Fixtures.Tiny("d_predict_inst");
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        _fx?.Dispose();
        _state?.Dispose();
        _images?.Dispose();
        _sam?.Dispose();
    }

    /// <summary>Same shape and bit-identical values.</summary>
    private static bool Same(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        return a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();
    }

    private static float[] Floats(Tensor t)
    {
        using var scope = NewDisposeScope();
        return t.to(ScalarType.Float32).contiguous().data<float>().ToArray();
    }

    /// <summary>Element-wise identical arrays (NUnit's collection equality is too slow for megapixel masks).</summary>
    private static void AssertIdentical<T>(ReadOnlySpan<T> actual, ReadOnlySpan<T> expected, string what) where T : IEquatable<T>
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what}: lengths differ");
        int i = 0;
        while (i < actual.Length && actual[i].Equals(expected[i])) i++;
        Assert.That(i, Is.EqualTo(actual.Length), i < actual.Length ? $"{what}: first difference at {i}: {actual[i]} vs {expected[i]}" : what);
    }

    private InteractiveTensors Call1() => _predictor.PredictCore(_state, InteractivePrompt.FromPoints(Click1));

    /// <summary>The public result holds exactly the data of the tensor result.</summary>
    private static void AssertPublicEqualsTensors(InteractivePrediction r, InteractiveTensors t, string what)
    {
        Assert.That((r.ImageIndex, r.Width, r.Height, r.IsBatched), Is.EqualTo((t.ImageIndex, t.Width, t.Height, t.IsBatched)), what);
        Assert.That((r.PromptCount, r.MaskCount), Is.EqualTo((t.NumPrompts, t.NumMasks)), what);
        Assert.That(r.HasUpsampledLogits, Is.EqualTo(t.MaskLogits is not null), what);
        using var scope = NewDisposeScope();
        var obj = Floats(t.ObjectScoreLogits);
        for (int p = 0; p < t.NumPrompts; p++)
        {
            Assert.That(r.IouScores(p), Is.EqualTo(t.IouArray(p)), $"{what}: IoU of prompt {p}");
            Assert.That(r.BestIndex(p), Is.EqualTo(t.BestIndex(p)), $"{what}: best of prompt {p}");
            Assert.That(r.ObjectScoreLogit(p), Is.EqualTo(obj[p]), $"{what}: object score of prompt {p}");
            for (int k = 0; k < t.NumMasks; k++)
            {
                AssertIdentical<byte>(r.Masks(p)[k].Data, t.MaskBytes(k, p), $"{what}: mask {k} of prompt {p}");
                var low = r.LowResLogits(k, p);
                Assert.That((low.Width, low.Height), Is.EqualTo((t.LowResLogits.shape[^1], t.LowResLogits.shape[^2])));
                AssertIdentical<float>(low.Values, Floats(t.IsBatched ? t.LowResLogits[p, k] : t.LowResLogits[k]),
                    $"{what}: low-res logits {k} of prompt {p}");
                if (t.MaskLogits is not null)
                    AssertIdentical<float>(r.UpsampledLogits(k, p).Values, Floats(t.IsBatched ? t.MaskLogits[p, k] : t.MaskLogits[k]),
                        $"{what}: upsampled logits {k} of prompt {p}");
            }
        }
    }

    [Test]
    public void MultimaskGivesThreeMasksInTokenOrder()
    {
        using var scope = NewDisposeScope();
        Tensor? decoderMasks = null;
        InteractiveTensors r;
        using (_sam.Record((n, t) =>
        {
            // observer tensors live only during the call: keep a copy outside its dispose scope
            if (n == "sam.mask_decoder.0") decoderMasks = t.clone().DetachFromDisposeScope();
        }))
            r = Call1();
        using (r)
        {
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

            // The public result: three masks at the original size, the same data.
            var pub = _predictor.Predict(_state, InteractivePrompt.FromPoints(Click1));
            Assert.That((pub.PromptCount, pub.MaskCount, pub.IsBatched), Is.EqualTo((1, 3, false)));
            Assert.That(pub.Masks().Select(m => (m.Width, m.Height)), Is.All.EqualTo((_w, _h)));
            Assert.That(pub.HasUpsampledLogits, Is.False);
            Assert.Throws<InvalidOperationException>(() => pub.UpsampledLogits(0));
            AssertPublicEqualsTensors(pub, r, "call1");
        }
    }

    [Test]
    public void SingleMaskGivesOneMask()
    {
        var prompt = new InteractivePrompt { Box = Boxes[1], MultimaskOutput = false };
        using var r = _predictor.PredictCore(_state, prompt);
        Assert.That(r.Masks.shape, Is.EqualTo(new long[] { 1, _h, _w }));
        Assert.That(r.IouScores.shape, Is.EqualTo(new long[] { 1 }));
        Assert.That(r.LowResLogits.shape, Is.EqualTo(new long[] { 1, _lowRes, _lowRes }));
        Assert.That(r.ObjectScoreLogits.shape, Is.EqualTo(new long[] { 1 }));
        Fixtures.AssertClose(_fx, "call3.low_res_masks", r.LowResLogits);
        Fixtures.AssertClose(_fx, "call3.masks", r.Masks);
        var pub = _predictor.Predict(_state, prompt);
        Assert.That((pub.PromptCount, pub.MaskCount), Is.EqualTo((1, 1)));
        AssertPublicEqualsTensors(pub, r, "call3");
        // FromBox's default is single-mask output.
        Assert.That(_predictor.Predict(_state, InteractivePrompt.FromBox(Boxes[1])).MaskCount, Is.EqualTo(1));
    }

    [Test]
    public void BoxesAndPointsInAnySpaceOrFormatMeanTheSame()
    {
        // 1280×720: the pixel box xyxy (640, 150, 1000, 600) as pixel xywh and as normalised cxcywh; Click1 normalised.
        Assert.That((_w, _h), Is.EqualTo((1280, 720)));
        using var scope = NewDisposeScope();
        using var pixel = _predictor.PredictCore(_state, new InteractivePrompt { Box = Boxes[1], MultimaskOutput = false });
        var variants = new (string Name, Box Box)[]
        {
            ("pixel xywh", Box.FromXywh(640, 150, 360, 450)),
            ("normalised cxcywh", Box.FromCxcywh(820f / 1280, 375f / 720, 360f / 1280, 450f / 720)),
            ("normalised xyxy", Box.FromXyxy(0.5f, 150f / 720, 1000f / 1280, 600f / 720, CoordinateSpace.Normalized)),
        };
        foreach (var (name, box) in variants)
        {
            using var v = _predictor.PredictCore(_state, new InteractivePrompt { Box = box, MultimaskOutput = false });
            Assert.That((v.LowResLogits - pixel.LowResLogits).abs().max().item<float>(), Is.LessThan(1e-4f), name);
        }
        using var px = Call1();
        using var normalised = _predictor.PredictCore(_state, InteractivePrompt.FromPoints(PointPrompt.Normalized(560f / 1280, 400f / 720)));
        Assert.That((normalised.LowResLogits - px.LowResLogits).abs().max().item<float>(), Is.LessThan(1e-4f), "normalised click");
    }

    [Test]
    public void MaskInputRefinesTheOutput()
    {
        using var scope = NewDisposeScope();
        var first = _predictor.Predict(_state, InteractivePrompt.FromPoints(Click1));
        var maskInput = first.BestLowResLogits();
        Assert.That((maskInput.Width, maskInput.Height), Is.EqualTo((_lowRes, _lowRes)));
        var clicks = new[] { Click1, Click2 };
        using var plain = _predictor.PredictCore(_state, new InteractivePrompt { Points = clicks, MultimaskOutput = false });
        using var refined = _predictor.PredictCore(_state, new InteractivePrompt { Points = clicks, MaskInput = maskInput, MultimaskOutput = false });
        double change = (refined.LowResLogits - plain.LowResLogits).abs().max().item<float>();
        TestContext.Out.WriteLine($"max |refined − plain| low-res logit: {change}");
        Assert.That(change, Is.GreaterThan(1e-2), "the mask input has no effect");
        Fixtures.AssertClose(_fx, "call2.low_res_masks", refined.LowResLogits);
        Fixtures.AssertClose(_fx, "call2.masks", refined.Masks);
        // A copy made through the public constructor means the same
        var copy = new MaskLogits(maskInput.Width, maskInput.Height, maskInput.Values);
        using var fromCopy = _predictor.PredictCore(_state, new InteractivePrompt { Points = clicks, MaskInput = copy, MultimaskOutput = false });
        Assert.That(Same(fromCopy.LowResLogits, refined.LowResLogits), Is.True);
        // the mask input alone is a valid prompt
        var maskOnly = _predictor.Predict(_state, new InteractivePrompt { MaskInput = maskInput, MultimaskOutput = false });
        Assert.That(maskOnly.MaskCount, Is.EqualTo(1));
        Assert.That((maskOnly.Masks()[0].Width, maskOnly.Masks()[0].Height), Is.EqualTo((_w, _h)));
    }

    [Test]
    public void BatchedBoxesGiveOneMaskSetPerBox()
    {
        using var single = _predictor.PredictBoxesCore(_state, Boxes, multimaskOutput: false);
        Assert.That(single.IsBatched, Is.True);
        Assert.That(single.NumPrompts, Is.EqualTo(3));
        Assert.That(single.Masks.shape, Is.EqualTo(new long[] { 3, 1, _h, _w }));
        Assert.That(single.IouScores.shape, Is.EqualTo(new long[] { 3, 1 }));
        Assert.That(single.LowResLogits.shape, Is.EqualTo(new long[] { 3, 1, _lowRes, _lowRes }));
        Fixtures.AssertClose(_fx, "call4.low_res_masks", single.LowResLogits);
        Fixtures.AssertClose(_fx, "call4.masks", single.Masks);
        AssertPublicEqualsTensors(_predictor.PredictBoxes(_state, Boxes, multimaskOutput: false), single, "call4");

        using var multi = _predictor.PredictBoxesCore(_state, Boxes, multimaskOutput: true, returnLogits: true);
        Assert.That(multi.Masks.shape, Is.EqualTo(new long[] { 3, 3, _h, _w }));
        Assert.That(multi.MaskLogits!.shape, Is.EqualTo(new long[] { 3, 3, _h, _w }));
        var multiPub = _predictor.PredictBoxes(_state, Boxes, multimaskOutput: true, returnLogits: true);
        Assert.That((multiPub.PromptCount, multiPub.MaskCount, multiPub.IsBatched, multiPub.HasUpsampledLogits), Is.EqualTo((3, 3, true, true)));
        AssertPublicEqualsTensors(multiPub, multi, "batched multimask");

        // box k of the batch = the same box alone (the image is repeated per prompt set)
        using var alone = _predictor.PredictCore(_state, new InteractivePrompt { Box = Boxes[1], MultimaskOutput = false });
        using var scope = NewDisposeScope();
        Assert.That((single.LowResLogits[1] - alone.LowResLogits).abs().max().item<float>(), Is.LessThan(1e-5f));
        // one box through PredictBoxes keeps the prompt dimension
        using var one = _predictor.PredictBoxesCore(_state, [Boxes[1]], multimaskOutput: false);
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

        // The public helpers agree.
        var pub = _predictor.Predict(_state, InteractivePrompt.FromPoints(Click1));
        Assert.That(pub.BestIndex(), Is.EqualTo(expected));
        Assert.That(pub.BestMask(), Is.SameAs(pub.Masks()[expected]));
        AssertIdentical<byte>(pub.BestMask().Data, bytes, "best mask");
        Assert.That(pub.BestMask().Area(), Is.EqualTo(r.Masks[expected].sum().item<long>()));
        AssertIdentical<float>(pub.BestLowResLogits().Values, Floats(r.LowResLogits[expected]), "best low-res logits");

        using var batch = _predictor.PredictBoxesCore(_state, Boxes, multimaskOutput: true);
        var batchPub = _predictor.PredictBoxes(_state, Boxes, multimaskOutput: true);
        for (int k = 0; k < 3; k++)
        {
            var row = batch.IouArray(k);
            Assert.That(batch.BestIndex(k), Is.EqualTo(Array.IndexOf(row, row.Max())));
            Assert.That(Same(batch.BestMask(k), batch.Masks[k, batch.BestIndex(k)]), Is.True);
            Assert.That(batchPub.BestIndex(k), Is.EqualTo(batch.BestIndex(k)));
        }
        Assert.Throws<Sam3PromptException>(() => batch.BestIndex(3));
        // on the public result an index out of range is an argument error
        Assert.Throws<ArgumentOutOfRangeException>(() => batchPub.BestIndex(3));
        Assert.Throws<ArgumentOutOfRangeException>(() => batchPub.Masks(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => batchPub.LowResLogits(3, 0));
    }

    [Test]
    public void MasksAreThePostprocessedLogitsAboveTheThreshold()
    {
        using var scope = NewDisposeScope();
        var prompt = InteractivePrompt.FromPoints(Click1) with { ReturnLogits = true };
        using var r = _predictor.PredictCore(_state, prompt);
        Assert.That(r.MaskLogits!.shape, Is.EqualTo(new long[] { 3, _h, _w }));
        Assert.That(Same(r.Masks, r.MaskLogits.gt(0)), Is.True);
        // logits = hole filling (≤ 256 px, +10) of the unclamped low-res logits, then bilinear upsampling
        var expected = MaskPost.PostprocessSam1Masks(r.LowResLogits.unsqueeze(0), _h, _w, _sam.Config.HardcodedInClasses).squeeze(0);
        Assert.That((expected - r.MaskLogits).abs().max().item<float>(), Is.LessThan(1e-5f));
        // Public: each mask is its upsampled logits > the mask threshold (0).
        var pub = _predictor.Predict(_state, prompt);
        Assert.That(_predictor.MaskThreshold, Is.EqualTo(0));
        for (int k = 0; k < 3; k++)
        {
            var up = pub.UpsampledLogits(k);
            Assert.That((up.Width, up.Height), Is.EqualTo((_w, _h)));
            AssertIdentical<byte>(up.ToMask((float)_predictor.MaskThreshold).Data, pub.Masks()[k].Data, $"mask {k}");
        }
    }

    [Test]
    public void ReferenceLowResLogitsPostprocessToTheReferenceMasks()
    {
        // The fixture's own low-res logits through our post-processing give the fixture's masks, except where the
        // upsampled logit is ~0 (fp32 rounding of the bilinear sum differs between torch builds: call1 has one such pixel,
        // at logit 1.2e-7 here, 3.7e-7 in float64).
        using var scope = NewDisposeScope();
        var hc = _sam.Config.HardcodedInClasses;
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
        // a batched state of the detector API is accepted by the interactive predictor of the same model
        using var pair = _images.SetImages([ImageLoader.Load(SharedData.Parity("inputs", "test_image.jpg")), ImageLoader.Load(truck)]);
        using var alone = _predictor.SetImage(truck);
        var (w1, h1) = pair.ImageSizes[1];
        var prompt = InteractivePrompt.FromPoints(PointPrompt.Pixel(w1 / 2f, h1 / 2f));
        using var a = _predictor.PredictCore(pair, prompt, imageIndex: 1);
        using var b = _predictor.PredictCore(alone, prompt);
        Assert.That(a.ImageIndex, Is.EqualTo(1));
        Assert.That(a.Masks.shape, Is.EqualTo(new long[] { 3, h1, w1 }));
        Assert.That((a.LowResLogits - b.LowResLogits).abs().max().item<float>(), Is.LessThan(1e-4f));
        var pub = _predictor.Predict(pair, prompt, imageIndex: 1);
        Assert.That((pub.ImageIndex, pub.Width, pub.Height), Is.EqualTo((1, w1, h1)));
        using var c = _predictor.PredictCore(pair, InteractivePrompt.FromPoints(Click1), imageIndex: 0);
        Fixtures.AssertClose(_fx, "call1.low_res_masks", c.LowResLogits);
    }

    [Test]
    public void InvalidPromptsAreTypedErrors()
    {
        void Bad(InteractivePrompt p, string what)
        {
            var e = Assert.Throws<Sam3PromptException>(() => _predictor.Predict(_state, p), what);
            TestContext.Out.WriteLine($"{what}: {e!.Message}");
        }
        Bad(new InteractivePrompt(), "empty prompt");
        Bad(new InteractivePrompt { MultimaskOutput = false }, "empty prompt (single mask)");
        Bad(InteractivePrompt.FromPoints(PointPrompt.Pixel(_w + 1, 10)), "point right of the image");
        Bad(InteractivePrompt.FromPoints(PointPrompt.Pixel(10, -0.5f)), "point above the image");
        Bad(InteractivePrompt.FromPoints(PointPrompt.Normalized(1.01f, 0.5f)), "normalised point right of the image");
        Bad(InteractivePrompt.FromPoints(PointPrompt.Pixel(float.NaN, 10)), "NaN point");
        Bad(InteractivePrompt.FromPoints(PointPrompt.Pixel(10, float.PositiveInfinity)), "infinite point");
        Bad(InteractivePrompt.FromBox(Box.FromXyxy(0, 0, float.NaN, 10)), "NaN box");
        Bad(InteractivePrompt.FromBox(Box.FromXyxy(0, 0, _w + 10, 10)), "box outside");
        Bad(InteractivePrompt.FromBox(Box.FromXyxy(50, 50, 10, 10)), "inverted box");
        Bad(InteractivePrompt.FromBox(Box.FromXywh(50, 50, 0, 10)), "empty box");
        Bad(InteractivePrompt.FromBox(Box.FromCxcywh(0.9f, 0.5f, 0.3f, 0.2f)), "normalised box outside");
        Bad(new InteractivePrompt { MaskInput = new MaskLogits(64, 64, new float[64 * 64]) }, "mask input of the wrong size");
        Bad(new InteractivePrompt { MaskInput = new MaskLogits(_lowRes, _lowRes / 2, new float[_lowRes * (_lowRes / 2)]) }, "non-square mask input");
        var nan = new float[_lowRes * _lowRes];
        nan[5 * _lowRes + 5] = float.NaN;
        Bad(new InteractivePrompt { MaskInput = new MaskLogits(_lowRes, _lowRes, nan) }, "NaN in mask input");
        Assert.Throws<Sam3PromptException>(() => _predictor.PredictBoxes(_state, []));
        Assert.Throws<Sam3PromptException>(() => _predictor.PredictBoxes(_state, [Boxes[0], Box.FromXyxy(0, 0, 10, _h + 1)]));

        // Argument errors: out-of-range image index, null arguments, malformed MaskLogits.
        Assert.Throws<ArgumentOutOfRangeException>(() => _predictor.Predict(_state, InteractivePrompt.FromPoints(Click1), imageIndex: 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => _predictor.Predict(_state, InteractivePrompt.FromPoints(Click1), imageIndex: -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => _predictor.PredictBoxes(_state, Boxes, imageIndex: 2));
        Assert.Throws<ArgumentNullException>(() => _predictor.Predict(_state, null!));
        Assert.Throws<ArgumentNullException>(() => _predictor.Predict(null!, InteractivePrompt.FromPoints(Click1)));
        Assert.Throws<ArgumentNullException>(() => _predictor.PredictBoxes(_state, null!));
        Assert.Throws<ArgumentNullException>(() => _predictor.SetImage((RgbImage)null!));
        Assert.Throws<ArgumentException>(() => _predictor.SetImage(" "));
        Assert.Throws<ArgumentException>(() => _ = new MaskLogits(4, 4, (ReadOnlySpan<float>)new float[15]));
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new MaskLogits(0, 4, ReadOnlySpan<float>.Empty));
    }

    [Test]
    public void DisposedStateIsObjectDisposedAndModelWithoutHeadsIsAStateError()
    {
        var state = _predictor.SetImage(SharedData.Parity("inputs", "test_image.jpg"));
        state.Dispose();
        Assert.Throws<ObjectDisposedException>(() => _predictor.Predict(state, InteractivePrompt.FromPoints(Click1)));
        Assert.Throws<ObjectDisposedException>(() => _predictor.PredictBoxes(state, Boxes));

        using var noHeads = Sam3Model.FromNetwork(new Sam3ImageModel(_sam.Config, enableInstInteractivity: false), _sam.Tokenizer);
        Assert.That(noHeads.HasInteractivePredictor, Is.False);
        var e = Assert.Throws<Sam3StateException>(() => noHeads.CreateInteractivePredictor());
        Assert.That(e!.Message, Does.Contain("interactive heads"));
    }

    [Test]
    public void RepeatedCallsLeaveNoLiveTensors()
    {
        var live = new List<long>();
        var first = _predictor.Predict(_state, InteractivePrompt.FromPoints(Click1));
        var firstIou = first.IouScores().ToArray();
        var firstMask = first.BestMask().Data.ToArray();
        for (int i = 0; i < 5; i++)
        {
            var a = _predictor.Predict(_state, new InteractivePrompt
            {
                Points = [Click1, Click2], MaskInput = first.BestLowResLogits(), MultimaskOutput = false, ReturnLogits = true,
            });
            var b = _predictor.PredictBoxes(_state, Boxes, multimaskOutput: false);
            _ = a.BestIndex() + b.BestIndex(2);
            using (var t = _predictor.PredictCore(_state, InteractivePrompt.FromBox(Boxes[0]))) _ = t.BestIndex();
            live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        TestContext.Out.WriteLine($"live tensors after each call: {string.Join(", ", live)}");
        Assert.That(live[4], Is.EqualTo(live[1]), "live tensor count grows across interactive calls");
        // The first result is the caller's: later calls leave it as it was.
        Assert.That(first.IouScores(), Is.EqualTo(firstIou));
        AssertIdentical<byte>(first.BestMask().Data, firstMask, "first best mask");
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
                foreach (var p in _sam.Network.backbone.vision_backbone.trunk.parameters())
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
}
