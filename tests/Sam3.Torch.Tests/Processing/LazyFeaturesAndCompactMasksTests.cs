using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Parity;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Processing;

/// <summary>
/// The memory paths of the image predictor (issue 15 item 3) on the tiny model: the SAM2 neck deferred to the first
/// interactive call (scenario d's predict_inst results and set_image SAM2 features from that state), masks streamed
/// into the results or kept as COCO RLE (scenario a's masks), and the mask chunk setting. Expected values come from the
/// fixtures; the eager and deferred states are also compared with each other, which must agree bit for bit.
/// </summary>
[TestFixture, Category("Fast"), Category("Parity")]
public class LazyFeaturesAndCompactMasksTests
{
    private Sam3Model _sam = null!;
    private int _threads;
    private string _image = null!;

    private static string Vocab => SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz");

    [OneTimeSetUp]
    public void SetUp()
    {
        // one intra-op thread: the tiny model gains nothing from more, and a loaded machine makes OpenMP spin
        _threads = torch.get_num_threads();
        torch.set_num_threads(1);
        var cfg = Sam3Config.Load(SharedData.Parity("tiny", "config.json"));
        _sam = Sam3Model.Load(TinyWeights.Path, new Sam3ModelOptions { Config = cfg, TokenizerPath = Vocab });
        _image = SharedData.Parity("inputs", "test_image.jpg");
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        _sam?.Dispose();
        torch.set_num_threads(_threads);
    }

    private static bool Identical(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        return a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.eq(b).all().item<bool>();
    }

    [Test]
    public void DeferredSam2NeckGivesScenarioDResultsOnTheFirstInteractiveCall()
    {
        using var fx = Fixtures.Tiny("d_predict_inst");
        using var images = _sam.CreateImagePredictor(); // default: SAM2 neck deferred
        var interactive = _sam.CreateInteractivePredictor();
        using var lazy = images.SetImage(_image);
        Assert.That(lazy.HasSam2Features, Is.False, "a text-only state holds no SAM2-neck features");
        Assert.That(lazy.Backbone.DeferredTrunk, Is.Not.Null, "the trunk output is kept for them");

        using (var r = interactive.PredictCore(lazy, InteractivePrompt.FromPoints(PointPrompt.Pixel(560, 400))))
        {
            Fixtures.AssertClose(fx, "call1.iou_predictions", r.IouScores);
            Fixtures.AssertClose(fx, "call1.low_res_masks", r.LowResLogits);
            Fixtures.AssertClose(fx, "call1.masks", r.Masks);
        }
        Assert.That(lazy.HasSam2Features, Is.True);
        Assert.That(lazy.Backbone.DeferredTrunk, Is.Null, "the trunk output is freed once the neck has run");
        var fpn = lazy.Backbone.Sam2!.BackboneFpn;
        for (int i = 0; i < fpn.Length; i++) Fixtures.AssertClose(fx, $"state.sam2_backbone_fpn.{i}", fpn[i]);

        // upstream's eager set_image (the interactive predictor's SetImage, or the option) gives the very same features
        using var eager = interactive.SetImage(_image);
        using var eagerOption = _sam.CreateImagePredictor(new ImagePredictorOptions { PrecomputeInteractiveFeatures = true });
        using var eager2 = eagerOption.SetImage(_image);
        Assert.That(eager.HasSam2Features && eager2.HasSam2Features, Is.True);
        Assert.That(eager.Backbone.DeferredTrunk, Is.Null);
        for (int i = 0; i < fpn.Length; i++)
        {
            Assert.That(Identical(fpn[i], eager.Backbone.Sam2!.BackboneFpn[i]), $"level {i}: deferred = eager");
            Assert.That(Identical(fpn[i], eager2.Backbone.Sam2!.BackboneFpn[i]), $"level {i}: deferred = PrecomputeInteractiveFeatures");
            Assert.That(Identical(lazy.Backbone.Sam2!.VisionPosEnc[i], eager.Backbone.Sam2!.VisionPosEnc[i]), $"position encoding {i}");
        }
        // the SAM3 features the detector reads do not depend on the choice
        for (int i = 0; i < lazy.Backbone.BackboneFpn.Length; i++)
            Assert.That(Identical(lazy.Backbone.BackboneFpn[i], eager.Backbone.BackboneFpn[i]), $"SAM3 level {i}");
    }

    [Test]
    public void StreamedAndCompactMasksEqualScenarioA()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        var p = fx.Parameters;
        double threshold = p.GetProperty("confidence_threshold")[0].GetDouble();
        string prompt = p.GetProperty("prompt").GetString()!;
        int expected = p.GetProperty("num_detections").GetInt32();

        foreach (var (name, options) in new[]
                 {
                     ("bytes", new ImagePredictorOptions { ConfidenceThreshold = threshold }),
                     ("compact", new ImagePredictorOptions { ConfidenceThreshold = threshold, CompactMasks = true }),
                     // one mask per chunk: the chunk setting bounds the temporaries, never the values
                     ("compact, 1-element chunks", new ImagePredictorOptions { ConfidenceThreshold = threshold, CompactMasks = true, MaskChunkElements = 1 }),
                     ("bytes, 1-element chunks", new ImagePredictorOptions { ConfidenceThreshold = threshold, MaskChunkElements = 1 }),
                 })
        {
            using var predictor = _sam.CreateImagePredictor(options);
            using var state = predictor.SetImage(_image);
            var r = predictor.SetTextPrompt(state, prompt)[0];
            Assert.That(r.Count, Is.EqualTo(expected), name);
            using var scope = NewDisposeScope();
            if (options.CompactMasks)
            {
                // the stored RLE is what ToRle returns; its area needs no decoding
                for (int k = 0; k < r.Count; k++)
                {
                    var rle = r[k].ToRle();
                    Assert.That(ReferenceEquals(rle, r[k].ToRle()), Is.True, $"{name}: mask {k} keeps its RLE");
                    Assert.That(r[k].Mask.Area(), Is.EqualTo(rle.Area()), $"{name}: area of mask {k}");
                }
            }
            var masks = torch.stack(r.Select(d => torch.tensor(d.Mask.Data).view(r.Height, r.Width).to(ScalarType.Bool)).ToArray()).unsqueeze(1);
            Fixtures.AssertClose(fx, "output.masks", masks);
            for (int k = 0; k < r.Count; k++)
                Assert.That(r[k].Mask.Area(), Is.EqualTo(r[k].Mask.Data.LongCount(x => x != 0)), $"{name}: area of mask {k} after decoding");
        }
    }

    [Test]
    public void MaskChunkElementsMustBePositive()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => _sam.CreateImagePredictor(new ImagePredictorOptions { MaskChunkElements = 0 }));
        Assert.That(e!.Message, Does.Contain("MaskChunkElements"));
        Assert.That(e.ActualValue, Is.EqualTo(0L));
    }
}
