using Sam3.Torch.Loading;
using NUnit.Framework;
using Sam3.Torch.Batched;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Batched;

/// <summary>
/// The batched query API beyond the parity scenario: typed errors naming the bad query, the box-only default text,
/// top-k against the unpruned run, RLE against the bool masks, upstream's merge of repeated ids, and batching that does
/// not change a query's result. Runs the tiny model on the shared images.
/// </summary>
[TestFixture, Category("Slow")]
public class BatchedApiTests
{
    private Sam3ImageModel _model = null!;
    private Sam3BatchedPredictor _predictor = null!;
    private RgbImage _truck = null!, _groceries = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        var cfg = Sam3Config.Load(SharedData.Parity("tiny", "config.json"));
        _model = Sam3ModelLoader.LoadImageModel(SharedData.Parity("tiny", "model.safetensors"), cfg);
        var tokenizer = ClipBpeTokenizer.FromBpeGz(SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"), new ClipTokenizerOptions { Text = cfg.Text });
        _predictor = new Sam3BatchedPredictor(_model, tokenizer);
        _truck = ImageLoader.Load(SharedData.Parity("inputs", "truck.jpg"));
        _groceries = ImageLoader.Load(SharedData.Parity("inputs", "groceries.jpg"));
    }

    [OneTimeTearDown]
    public void TearDown() => _model?.Dispose();

    private static InferenceMetadata Meta(long id, RgbImage img) => new(id, id, 1, img.Height, img.Width);

    private static readonly PostProcessImage All = new() { DetectionThreshold = -1, MaxDetsPerImg = -1, IouType = IouType.Bbox };

    // ------------------------------------------------------------------ typed errors naming the query

    private Sam3QueryException Bad(params Datapoint[] dps)
        => Assert.Throws<Sam3QueryException>(() => _predictor.PredictTensors(dps, All).Dispose())!;

    [Test]
    public void QueryOnAnImageThatDoesNotExistIsNamed()
    {
        var e = Bad(new Datapoint(_truck, [new FindQuery("car", Meta(1, _truck)), new FindQuery("tire", Meta(7, _truck), imageId: 1)]));
        Assert.That(e.CocoImageId, Is.EqualTo(7));
        Assert.That(e.Message, Does.Contain("coco_image_id=7").And.Contain("'tire'").And.Contain("image 1 does not exist"));
    }

    [Test]
    public void BoxOutsideTheImageIsNamed()
    {
        // groceries is 800x534: x1 = 801 is one pixel past the right edge
        var e = Bad(new Datapoint(_groceries, [new FindQuery("bag", Meta(3, _groceries), [QB(700, 10, 801, 20)])]));
        Assert.That(e.CocoImageId, Is.EqualTo(3));
        Assert.That(e.Message, Does.Contain("coco_image_id=3").And.Contain("outside the 800x534 image"));
        // on the border is inside
        using var ok = _predictor.PredictTensors([new Datapoint(_groceries, [new FindQuery("bag", Meta(3, _groceries), [QB(0, 0, 800, 534)])])], All);
        Assert.That(ok.Keys, Is.EqualTo(new long[] { 3 }));
    }

    [Test]
    public void InvertedBoxIsNamed()
    {
        var e = Bad(new Datapoint(_groceries, [new FindQuery("bag", Meta(5, _groceries), [QB(100, 10, 50, 20)])]));
        Assert.That(e.Message, Does.Contain("coco_image_id=5").And.Contain("empty or inverted"));
    }

    [Test]
    public void EmptyTextWithoutBoxesIsNamed()
    {
        var e = Bad(new Datapoint(_truck, [new FindQuery("car", Meta(1, _truck))]), new Datapoint(_groceries, [new FindQuery("  ", Meta(2, _groceries))]));
        Assert.That(e.CocoImageId, Is.EqualTo(2));
        Assert.That(e.Message, Does.Contain("coco_image_id=2").And.Contain("empty query text and no boxes"));
    }

    [Test]
    public void RepeatedCocoImageIdIsNamedUnlessMergingIsAsked()
    {
        var dps = new[]
        {
            new Datapoint(_truck, [new FindQuery("car", Meta(4, _truck))]),
            new Datapoint(_groceries, [new FindQuery("bag", Meta(4, _groceries))]),
        };
        var e = Bad(dps);
        Assert.That(e.CocoImageId, Is.EqualTo(4));
        Assert.That(e.Message, Does.Contain("'bag'").And.Contain("already used by").And.Contain("'car'"));

        // upstream's behaviour on request: one key, the two queries' detections concatenated in query order
        using var merged = _predictor.PredictTensors(dps, new PostProcessImage { MergeRepeatedIds = true, IouType = IouType.Bbox });
        using var car = _predictor.PredictTensors([dps[0]], All);
        using var bag = _predictor.PredictTensors([dps[1]], All);
        Assert.That(merged.Keys, Is.EqualTo(new long[] { 4 }));
        Assert.That(merged[4].Count, Is.EqualTo(car[4].Count + bag[4].Count));
        var expected = car[4].ScoreArray().Concat(bag[4].ScoreArray()).ToArray();
        Assert.That(merged[4].ScoreArray(), Is.EqualTo(expected).Within(1e-4));
        // masks of images of different sizes cannot be concatenated (upstream's torch.cat fails): a typed error naming the id
        var m = Assert.Throws<Sam3QueryException>(() => _predictor.PredictTensors(dps, new PostProcessImage { MergeRepeatedIds = true }).Dispose())!;
        Assert.That(m.CocoImageId, Is.EqualTo(4));
        Assert.That(m.Message, Does.Contain("different original sizes"));
    }

    [Test]
    public void BoxOnlyQueryUsesTheVisualText()
    {
        var q = new FindQuery(null, Meta(1, _groceries), [QB(508, 139, 584, 342)]);
        Assert.That(q.QueryText, Is.EqualTo(FindQuery.VisualText));
        using var batch = _predictor.Collate([new Datapoint(_groceries, [q])]);
        Assert.That(batch.FindTextBatch, Is.EqualTo(new[] { "visual" }));
    }

    // ------------------------------------------------------------------ post-processing

    [Test]
    public void TopKKeepsTheKBestScoresOfTheUnprunedRunInDescendingOrder()
    {
        var dp = new Datapoint(_groceries, [new FindQuery("visual", Meta(3, _groceries), [QB(508, 139, 584, 342), QB(336, 85, 480, 160)])]);
        using var all = _predictor.PredictTensors([dp], All);
        using var top = _predictor.PredictTensors([dp], new PostProcessImage { MaxDetsPerImg = 5, IouType = IouType.Bbox });
        var expected = all[3].ScoreArray().OrderByDescending(s => s).Take(5).ToArray();
        Assert.That(all[3].Count, Is.EqualTo(_model.Config.Decoder.NumQueries));
        Assert.That(top[3].ScoreArray(), Is.EqualTo(expected).Within(1e-6));
        // boxes follow their scores
        var allBoxes = all[3].BoxArray();
        var allScores = all[3].ScoreArray();
        var topBoxes = top[3].BoxArray();
        for (int k = 0; k < 5; k++)
        {
            int i = Array.IndexOf(allScores, allScores.OrderByDescending(s => s).ElementAt(k));
            Assert.That(topBoxes[k], Is.EqualTo(allBoxes[i]).Within(1e-3));
        }
    }

    [Test]
    public void TopKMasksEqualTheUnprunedRunsMasksOfTheSameQueries()
    {
        // Only the top-k detections are upsampled to the original size: their masks must be the unpruned run's masks
        // of the same queries (selected here by score order).
        var dp = new Datapoint(_groceries, [new FindQuery("visual", Meta(3, _groceries), [QB(508, 139, 584, 342), QB(336, 85, 480, 160)])]);
        using var all = _predictor.PredictTensors([dp], new PostProcessImage { DetectionThreshold = -1, MaxDetsPerImg = -1 });
        using var top = _predictor.PredictTensors([dp], new PostProcessImage { MaxDetsPerImg = 5 });
        var allScores = all[3].ScoreArray();
        var topScores = top[3].ScoreArray();
        Assert.That(top[3].Masks!.shape, Is.EqualTo(new long[] { 5, 1, _groceries.Height, _groceries.Width }));
        for (int k = 0; k < 5; k++)
        {
            // the query (or, on a score tie, one of the queries) with the k-th best score; the two runs are separate
            // forwards, so scores are matched within 1e-6 and masks within the parity bar's 0.1 % of pixels
            var candidates = Enumerable.Range(0, allScores.Length).Where(i => Math.Abs(allScores[i] - topScores[k]) <= 1e-6).ToArray();
            Assert.That(candidates, Is.Not.Empty, $"top-k score {k} is one of the unpruned scores");
            long pixels = (long)_groceries.Height * _groceries.Width;
            bool any = candidates.Any(i =>
            {
                using var differ = top[3].Masks![k].ne(all[3].Masks![i]).sum();
                return differ.item<long>() <= pixels / 1000;
            });
            Assert.That(any, Is.True, $"top-k mask {k} = the unpruned mask of query {string.Join(" or ", candidates)}");
        }
    }

    [Test]
    public void RleMasksDecodeToTheBoolMasks()
    {
        var dp = new Datapoint(_groceries, [new FindQuery(null, Meta(3, _groceries), [QB(508, 139, 584, 342), QB(336, 85, 480, 160)])]);
        var post = new PostProcessImage { MaxDetsPerImg = 3, DetectionThreshold = 0.3 };
        // one forward, post-processed both ways: two forwards need not agree to the last bit (with LibTorch's scalar
        // kernels, ATEN_CPU_CAPABILITY=default, repeated calls alternate between two results 1e-7 apart)
        using var batch = _predictor.Collate([dp]);
        using var output = _predictor.Forward(batch);
        using var masks = post.Process(output, batch.FindMetadatas);
        using var rle = new PostProcessImage { MaxDetsPerImg = 3, DetectionThreshold = 0.3, ConvertMaskToRle = true }.Process(output, batch.FindMetadatas);
        Assert.That(rle[3].Masks, Is.Null);
        Assert.That(rle[3].MasksRle, Has.Count.EqualTo(masks[3].Count));
        var m = masks[3].Masks!;
        Assert.That(m.shape, Is.EqualTo(new long[] { masks[3].Count, 1, _groceries.Height, _groceries.Width }));
        Assert.That(masks[3].Count, Is.GreaterThan(0));
        for (int k = 0; k < masks[3].Count; k++)
        {
            using var decoded = rle[3].MasksRle![k].ToTensor();
            using var same = decoded.to(ScalarType.Bool).eq(m[k, 0]).all();
            Assert.That(same.item<bool>(), Is.True, $"mask {k}");
            Assert.That(rle[3].MasksRle![k].Area(), Is.GreaterThan(0));
        }
    }

    [Test]
    public void BatchingDoesNotChangeAQuerysResult()
    {
        var carQ = new FindQuery("car", Meta(1, _truck));
        var hint = new FindQuery("grocery bag", Meta(4, _groceries), [QB(368, 166, 444, 342), QB(336, 85, 480, 160, positive: false)]);
        var post = new PostProcessImage { MaxDetsPerImg = 4, IouType = IouType.Bbox };
        using var together = _predictor.PredictTensors([new Datapoint(_truck, [carQ, new FindQuery("tire", Meta(2, _truck))]), new Datapoint(_groceries, [hint])], post);
        using var car = _predictor.PredictTensors([new Datapoint(_truck, [carQ])], post);
        using var alone = _predictor.PredictTensors([new Datapoint(_groceries, [hint])], post);
        Assert.That(together[1].ScoreArray(), Is.EqualTo(car[1].ScoreArray()).Within(1e-5));
        Assert.That(together[4].ScoreArray(), Is.EqualTo(alone[4].ScoreArray()).Within(1e-5));
        Assert.That(together[4].BoxArray().SelectMany(b => b), Is.EqualTo(alone[4].BoxArray().SelectMany(b => b)).Within(1e-2));
        Assert.That(together[1].Masks, Is.Null);
    }

    [Test]
    public void RepeatedCallsLeaveNoTensorAlive()
    {
        var dp = new Datapoint(_groceries, [new FindQuery("grocery bag", Meta(1, _groceries)), new FindQuery(null, Meta(2, _groceries), [QB(508, 139, 584, 342)])]);
        var post = new PostProcessImage { MaxDetsPerImg = 3, ConvertMaskToRle = true };
        var live = new List<long>();
        for (int i = 0; i < 4; i++)
        {
            using (var r = _predictor.PredictTensors([dp], post))
            {
                foreach (var d in r.Values) { _ = d.ScoreArray(); _ = d.BoxArray(); _ = d.LabelArray(); }
            }
            live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        TestContext.Out.WriteLine($"live tensors after each call: {string.Join(", ", live)}");
        Assert.That(live[3], Is.EqualTo(live[1]), "live tensor count grows across batched calls");
    }

    // ------------------------------------------------------------------ transform

    [Test]
    public void PillowBilinearUpscaleOfTwoPixels()
    {
        // Pillow's support-1 triangle at scale 1/2 (worked by hand from Resample.c): centres 0.25, 0.75, 1.25, 1.75 →
        // weights (1), (0.75, 0.25), (0.25, 0.75), (1) → 0, 50, 150, 200
        byte[] src = [0, 0, 0, 200, 200, 200];
        var dst = PilResize.ResizeRgb(src, 2, 1, 4, 1, filter: PilResize.Filter.Bilinear);
        Assert.That(dst.Where((_, i) => i % 3 == 0), Is.EqualTo(new byte[] { 0, 50, 150, 200 }));
        Assert.That(PilResize.ResizeRgb(src, 2, 1, 2, 1, filter: PilResize.Filter.Bilinear), Is.EqualTo(src));
    }

    [Test]
    public void BoxesBecomeNormalisedCxcywh()
    {
        var t = _predictor.Transform;
        int s = t.Size;
        var (cx, cy, w, h) = t.TransformBox(new QueryBox(0, 0, 800, 534), 800, 534);
        Assert.That(new[] { cx, cy, w, h }, Is.EqualTo(new[] { 0.5f, 0.5f, 1f, 1f }).Within(1e-6));
        (cx, cy, w, h) = t.TransformBox(new QueryBox(200, 267, 400, 534), 800, 534);
        Assert.That(new[] { cx, cy, w, h }, Is.EqualTo(new[] { 0.375f, 0.75f, 0.25f, 0.5f }).Within(1e-6));
        Assert.That(s, Is.GreaterThan(0));
    }
    private static BoxPrompt QB(float x0, float y0, float x1, float y1, bool positive = true) => BoxPrompt.Xyxy(x0, y0, x1, y1, positive);
}
