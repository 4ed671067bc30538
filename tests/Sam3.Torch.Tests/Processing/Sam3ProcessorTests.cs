using Sam3.Torch.Loading;
using System.Diagnostics;
using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Processing;

/// <summary>
/// The image prediction API (<see cref="Sam3Processor"/> / <see cref="Sam3ImageState"/>) on the tiny random-weight
/// model: behaviour (expected values from the parity fixtures or from mathematics: batch invariance, pixel ↔ normalised
/// boxes, re-thresholding of the raw outputs), typed errors on bad input, flat memory over 1,000 prompt calls and
/// cancellation. End-to-end parity itself is tested in <c>Parity/ImageScenarioParityTests</c>.
/// </summary>
[TestFixture, Category("Fast")]
public class Sam3ProcessorTests
{
    private const double Tol = 1e-4;

    private Sam3ImageModel _model = null!;
    private int _threads;
    private ClipBpeTokenizer _tokenizer = null!;
    private string _testImagePath = null!;
    private string _groceriesPath = null!;
    private RgbImage _testImage = null!;
    private RgbImage _groceries = null!;

    // Fixture facts (shared/parity/tiny/*.json).
    private string _promptA = null!;
    private double _thresholdA;
    private float[] _scoresA = null!;
    private (int H, int W) _sizeA;
    private double[] _thresholdsB = null!;
    private float[][] _scoresB = null!;
    private IReadOnlyList<string> _imagesB = null!;

    [OneTimeSetUp]
    public void LoadModel()
    {
        string parity = SharedData.Parity();
        // One intra-op thread: the tiny model's ops are far too small to gain from two, and on a loaded 2-core machine
        // OpenMP's spinning made each prompt call ~30× slower (≈1.5 s instead of ≈50 ms). Restored in TearDown.
        _threads = torch.get_num_threads();
        torch.set_num_threads(1);
        _model = Sam3ModelLoader.LoadImageModel(TinyWeights.Path, Sam3Config.Tiny);
        _tokenizer = ClipBpeTokenizer.FromBpeGz(SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"),
            new ClipTokenizerOptions { Text = Sam3Config.Tiny.Text });
        _testImagePath = SharedData.Parity("inputs", "test_image.jpg");
        _groceriesPath = SharedData.Parity("inputs", "groceries.jpg");
        _testImage = ImageLoader.Load(_testImagePath);
        _groceries = ImageLoader.Load(_groceriesPath);

        using (var a = JsonDocument.Parse(File.ReadAllText(SharedData.Parity("tiny", "a_image_text.json"))))
        {
            var p = a.RootElement.GetProperty("parameters");
            _promptA = p.GetProperty("prompt").GetString()!;
            _thresholdA = p.GetProperty("confidence_threshold")[0].GetDouble();
            _scoresA = p.GetProperty("all_kept_scores")[0].EnumerateArray().Select(x => x.GetSingle()).ToArray();
            var hw = p.GetProperty("original_hw");
            _sizeA = (hw[0].GetInt32(), hw[1].GetInt32());
            Assert.That(p.GetProperty("image").GetString(), Is.EqualTo("inputs/test_image.jpg"));
        }
        using (var b = JsonDocument.Parse(File.ReadAllText(SharedData.Parity("tiny", "b_image_batch_text.json"))))
        {
            var p = b.RootElement.GetProperty("parameters");
            Assert.That(p.GetProperty("prompt").GetString(), Is.EqualTo(_promptA));
            _thresholdsB = p.GetProperty("confidence_threshold").EnumerateArray().Select(x => x.GetDouble()).ToArray();
            _scoresB = p.GetProperty("all_kept_scores").EnumerateArray()
                .Select(s => s.EnumerateArray().Select(x => x.GetSingle()).ToArray()).ToArray();
            _imagesB = p.GetProperty("images").EnumerateArray().Select(x => Path.Combine(parity, x.GetString()!)).ToList();
        }
    }

    [OneTimeTearDown]
    public void DisposeModel()
    {
        _model?.Dispose();
        if (_threads > 0) torch.set_num_threads(_threads);
    }

    private Sam3Processor NewProcessor(double threshold = 0.5, int cache = 32) => new(_model, _tokenizer, threshold, cache);

    // ------------------------------------------------------------------ helpers

    private static float[] Floats(Tensor t)
    {
        if (t.numel() == 0) return [];
        using var scope = NewDisposeScope();
        return t.to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
    }

    /// <summary>Entry <paramref name="i"/> of the first dimension, flattened (no tensor left alive).</summary>
    private static float[] Floats(Tensor t, int i)
    {
        using var scope = NewDisposeScope();
        return Floats(t[i]);
    }

    private static double MaxAbsDiff(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        Assert.That(a.shape, Is.EqualTo(b.shape), "shapes differ");
        if (a.numel() == 0) return 0;
        return (a.to(ScalarType.Float32).cpu() - b.to(ScalarType.Float32).cpu()).abs().max().item<float>();
    }

    /// <summary>|a-b| &lt;= atol + rtol·|b| elementwise (the project's fp32 bar).</summary>
    private static void AssertClose(float[] actual, float[] expected, double tol, string what)
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length), $"{what}: lengths differ");
        for (int i = 0; i < actual.Length; i++)
            Assert.That(Math.Abs(actual[i] - expected[i]), Is.LessThanOrEqualTo(tol + tol * Math.Abs(expected[i])),
                $"{what}[{i}]: {actual[i]} vs {expected[i]}");
    }

    /// <summary>Per-query scores sigmoid(logit)·sigmoid(presence) of image <paramref name="i"/>, from the raw outputs.</summary>
    private static float[] QueryProbabilities(GroundingOutput raw, int i)
    {
        var logits = Floats(raw.PredLogits!, i);            // [Q,1] flattened
        float presence = Floats(raw.PresenceLogitDec!, i)[0];
        double sp = 1 / (1 + Math.Exp(-presence));
        return logits.Select(l => (float)(1 / (1 + Math.Exp(-l)) * sp)).ToArray();
    }

    /// <summary>A snapshot of one image's results that outlives the state (results are owned by the state).</summary>
    private sealed record Snapshot(long[] Queries, float[] Scores, float[] Boxes, int H, int W, float[] Logits, float[] RawBoxes);

    private static Snapshot Snap(Sam3ImageState state, int i)
    {
        var r = state.Results![i];
        return new Snapshot(r.QueryIndices, r.ScoreArray(), Floats(r.Boxes), r.Height, r.Width,
            Floats(state.RawOutput!.PredLogits!, i), Floats(state.RawOutput!.PredBoxes!, i));
    }

    private static void AssertSame(Snapshot a, Snapshot b, double tol, string what)
    {
        Assert.That(a.Queries, Is.EqualTo(b.Queries), $"{what}: kept queries");
        AssertClose(a.Scores, b.Scores, tol, what + " scores");
        AssertClose(a.Logits, b.Logits, tol, what + " logits");
        AssertClose(a.RawBoxes, b.RawBoxes, tol, what + " normalised boxes");
        // Pixel boxes: the same tolerance relative to the image size.
        float scale = Math.Max(a.H, a.W);
        AssertClose(a.Boxes.Select(x => x / scale).ToArray(), b.Boxes.Select(x => x / scale).ToArray(), tol, what + " pixel boxes / size");
    }

    private Snapshot SingleRun(RgbImage image, string prompt, double threshold)
    {
        using var p = NewProcessor(threshold);
        using var s = p.SetImage(image);
        p.SetTextPrompt(s, prompt);
        return Snap(s, 0);
    }

    // ------------------------------------------------------------------ 1. behaviour

    [Test]
    public void TextPromptGivesMasksAtOriginalResolutionAndPixelBoxes()
    {
        using var p = NewProcessor(_thresholdA);
        using var state = p.SetImage(_testImagePath);
        Assert.That(state.BatchSize, Is.EqualTo(1));
        Assert.That(state.OriginalSizes[0], Is.EqualTo(_sizeA));
        var results = p.SetTextPrompt(state, _promptA);
        Assert.That(results, Has.Count.EqualTo(1));
        Assert.That(results, Is.SameAs(state.Results));
        var r = results[0];
        var (h, w) = _sizeA;

        // Fixture a: the kept scores at this threshold.
        Assert.That(r.Count, Is.EqualTo(_scoresA.Length));
        AssertClose(r.ScoreArray(), _scoresA, Tol, "scores vs fixture a");

        Assert.That((r.ImageIndex, r.Height, r.Width), Is.EqualTo((0, h, w)));
        Assert.That(r.Masks.shape, Is.EqualTo(new long[] { r.Count, h, w }));
        Assert.That(r.Masks.dtype, Is.EqualTo(ScalarType.Bool));
        Assert.That(r.MaskProbabilities.shape, Is.EqualTo(new long[] { r.Count, h, w }));
        Assert.That(r.Boxes.shape, Is.EqualTo(new long[] { r.Count, 4 }));
        using (var scope = NewDisposeScope())
        {
            Assert.That(r.Masks.eq(r.MaskProbabilities.gt(0.5)).all().item<bool>(), Is.True, "masks = probabilities > 0.5");
            Assert.That(r.MaskProbabilities.min().item<float>(), Is.GreaterThanOrEqualTo(0f));
            Assert.That(r.MaskProbabilities.max().item<float>(), Is.LessThanOrEqualTo(1f));
        }
        // The array accessors leave no native tensor behind (no dispose scope around them here).
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int k = 0; k < r.Count; k++)
        {
            var bytes = r.MaskBytes(k);
            Assert.That(bytes, Has.Length.EqualTo(h * w));
            Assert.That(bytes.Count(x => x == 1), Is.EqualTo(bytes.Count(x => x != 0)), "0/1 bytes");
        }
        Assert.That(r.BoxArray(), Has.Length.EqualTo(r.Count));
        Assert.That(r.ScoreArray(), Has.Length.EqualTo(r.Count));
        Assert.That(DisposeScopeManager.Statistics.ThreadTotalLiveCount, Is.EqualTo(live), "accessors left tensors alive");

        // Scores and pixel boxes follow from the raw per-query outputs (math: cxcywh → xyxy, × (W, H)).
        var probs = QueryProbabilities(state.RawOutput!, 0);
        var expectedKept = Enumerable.Range(0, probs.Length).Where(q => probs[q] > _thresholdA).Select(q => (long)q).ToArray();
        Assert.That(r.QueryIndices, Is.EqualTo(expectedKept));
        AssertClose(r.ScoreArray(), expectedKept.Select(q => probs[q]).ToArray(), 1e-6, "scores vs raw");
        var raw = Floats(state.RawOutput!.PredBoxes!, 0);
        var boxes = r.BoxArray();
        for (int k = 0; k < r.Count; k++)
        {
            long q = r.QueryIndices[k];
            float cx = raw[q * 4], cy = raw[q * 4 + 1], bw = raw[q * 4 + 2], bh = raw[q * 4 + 3];
            float[] expected = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h];
            AssertClose(boxes[k], expected, 1e-3, $"pixel box {k}");
        }
    }

    [Test]
    public void RawPerQueryOutputsAreExposed()
    {
        using var p = NewProcessor();
        using var state = p.SetImageBatch([_testImage, _groceries]);
        Assert.That(state.RawOutput, Is.Null);
        Assert.That(state.Results, Is.Null);
        p.SetTextPrompt(state, "person");
        var raw = state.RawOutput!;
        long q = Sam3Config.Tiny.Decoder.NumQueries;
        Assert.That(raw.PredLogits!.shape, Is.EqualTo(new long[] { 2, q, 1 }));
        Assert.That(raw.PredBoxes!.shape, Is.EqualTo(new long[] { 2, q, 4 }));
        Assert.That(raw.PresenceLogitDec!.shape, Is.EqualTo(new long[] { 2, 1 }));
        Assert.That(raw.PredMasks!.shape[0..2], Is.EqualTo(new long[] { 2, q }));
    }

    [Test]
    public void SameImageTwiceInABatchGivesIdenticalResults()
    {
        double thr = 0.1;
        using var p = NewProcessor(thr);
        using var state = p.SetImageBatch([_testImage, _testImage]);
        var results = p.SetTextPrompt(state, _promptA);
        Assert.That(results, Has.Count.EqualTo(2));
        Assert.That(results[1].ImageIndex, Is.EqualTo(1));
        Assert.That(results[0].Count, Is.GreaterThan(0), "the test needs detections at this threshold");
        var a = Snap(state, 0);
        var b = Snap(state, 1);
        AssertSame(a, b, Tol, "entry 1 vs entry 0");
        Assert.That(MaxAbsDiff(results[0].MaskProbabilities, results[1].MaskProbabilities), Is.LessThanOrEqualTo(Tol));
        AssertSame(a, SingleRun(_testImage, _promptA, thr), Tol, "batch vs single");
    }

    [Test]
    public void MixedBatchMatchesSingleRunsAndTheFixture()
    {
        Assert.That(_imagesB, Is.EqualTo(new[] { _groceriesPath, _testImagePath }).AsCollection, "fixture b's images");
        double thr = _thresholdsB.Min();
        using var p = NewProcessor(thr);
        using var state = p.SetImageBatch([_groceries, _testImage]);
        var results = p.SetTextPrompt(state, _promptA);
        Assert.That(results, Has.Count.EqualTo(2));
        Assert.That((results[0].Height, results[0].Width), Is.EqualTo((_groceries.Height, _groceries.Width)));
        Assert.That((results[1].Height, results[1].Width), Is.EqualTo((_testImage.Height, _testImage.Width)));
        Assert.That(results[0].Masks.shape[1..], Is.EqualTo(new long[] { _groceries.Height, _groceries.Width }));
        Assert.That(results[1].Masks.shape[1..], Is.EqualTo(new long[] { _testImage.Height, _testImage.Width }));
        AssertSame(Snap(state, 0), SingleRun(_groceries, _promptA, thr), Tol, "groceries: batch vs single");
        AssertSame(Snap(state, 1), SingleRun(_testImage, _promptA, thr), Tol, "test_image: batch vs single");

        // Fixture b: the kept scores of image i at its own threshold.
        for (int i = 0; i < 2; i++)
        {
            var r = p.SetConfidenceThreshold(_thresholdsB[i], state)!;
            AssertClose(r[i].ScoreArray(), _scoresB[i], Tol, $"image {i} scores vs fixture b");
        }
    }

    [Test]
    public void BoxesAccumulateAndCombineWithText()
    {
        var box1 = new BoxPrompt(0.42f, 0.55f, 0.3f, 0.6f);
        var box2 = new BoxPrompt(0.8f, 0.45f, 0.2f, 0.4f, Positive: false);
        using var p = NewProcessor(0.1);
        using var state = p.SetImage(_testImage);

        p.AddBoxPrompt(state, box1);
        Assert.That(state.Boxes, Is.EqualTo(new[] { box1 }));
        Assert.That(state.TextPrompt, Is.Null);
        var boxOnly = Snap(state, 0);
        p.AddBoxPrompt(state, box2);
        Assert.That(state.Boxes, Is.EqualTo(new[] { box1, box2 }));
        var twoBoxes = Snap(state, 0);
        Assert.That(MaxDiff(twoBoxes.Logits, boxOnly.Logits), Is.GreaterThan(1e-3), "the second box changes the prediction");

        p.ResetAllPrompts(state);
        p.SetTextPrompt(state, "person");
        var textOnly = Snap(state, 0);
        p.AddBoxPrompt(state, box1);
        Assert.That(state.TextPrompt, Is.EqualTo("person"));
        Assert.That(state.Boxes, Has.Count.EqualTo(1));
        var both = Snap(state, 0);
        Assert.That(MaxDiff(both.Logits, textOnly.Logits), Is.GreaterThan(1e-3), "text + box differs from text alone");
        Assert.That(MaxDiff(both.Logits, boxOnly.Logits), Is.GreaterThan(1e-3), "text + box differs from the box alone");

        // A box alone is the box with the dummy text (upstream add_geometric_prompt).
        p.ResetAllPrompts(state);
        p.SetTextPrompt(state, Sam3Processor.DummyTextPrompt);
        p.AddBoxPrompt(state, box1);
        AssertSame(Snap(state, 0), boxOnly, 1e-6, "box alone vs dummy text + box");

        // Setting a new text keeps the boxes.
        p.SetTextPrompt(state, "person");
        Assert.That(state.Boxes, Has.Count.EqualTo(1));
        AssertSame(Snap(state, 0), both, 1e-6, "text replaced, box kept");
    }

    private static double MaxDiff(float[] a, float[] b) => a.Zip(b, (x, y) => Math.Abs(x - y)).Max();

    [Test]
    public void ResetClearsPromptsButKeepsTheImage()
    {
        using var p = NewProcessor(0.1);
        using var state = p.SetImage(_testImage);
        p.SetTextPrompt(state, "car");
        p.AddBoxPrompt(state, new BoxPrompt(0.5f, 0.5f, 0.2f, 0.2f));
        p.AddPointPrompt(state, new PointPrompt(0.3f, 0.4f));
        Assert.That((state.Boxes.Count, state.Points.Count), Is.EqualTo((1, 1)));

        p.ResetAllPrompts(state);
        Assert.That(state.TextPrompt, Is.Null);
        Assert.That(state.Boxes, Is.Empty);
        Assert.That(state.Points, Is.Empty);
        Assert.That(state.Results, Is.Null);
        Assert.That(state.RawOutput, Is.Null);
        Assert.That(state.IsDisposed, Is.False);
        Assert.Throws<Sam3PromptException>(() => p.Predict(state), "no prompt left");
        Assert.That(p.SetConfidenceThreshold(0.2, state), Is.Null, "nothing to re-filter");

        p.SetTextPrompt(state, _promptA);
        AssertSame(Snap(state, 0), SingleRun(_testImage, _promptA, 0.2), 1e-6, "after reset vs fresh image");
    }

    [Test]
    public void ThresholdRefiltersWithoutRerunningAndIsMonotonic()
    {
        using var p = NewProcessor(0.9);
        using var state = p.SetImage(_testImage);
        int probeCalls = 0;
        p.SetTextPrompt(state, _promptA, (_, _) => probeCalls++);
        Assert.That(probeCalls, Is.GreaterThan(0), "the probe sees the network run");
        int networkCalls = probeCalls;
        var raw = state.RawOutput!;
        var probs = QueryProbabilities(raw, 0);
        long[] previous = state.Results![0].QueryIndices;
        foreach (double t in new[] { 0.9, 0.5, 0.3, 0.2, 0.15, 0.1, 0.05, 0.0 })
        {
            var r = p.SetConfidenceThreshold(t, state)!;
            Assert.That(p.ConfidenceThreshold, Is.EqualTo(t));
            Assert.That(state.RawOutput, Is.SameAs(raw), "the network was not rerun");
            Assert.That(r, Is.SameAs(state.Results));
            var kept = r[0].QueryIndices;
            Assert.That(kept, Is.EqualTo(Enumerable.Range(0, probs.Length).Where(q => probs[q] > t).Select(q => (long)q)), $"kept at {t}");
            Assert.That(kept, Is.SupersetOf(previous), $"lowering to {t} only adds detections");
            Assert.That(r[0].Masks.shape[0], Is.EqualTo(kept.Length));
            previous = kept;
        }
        Assert.That(previous, Has.Length.EqualTo(Sam3Config.Tiny.Decoder.NumQueries), "threshold 0 keeps every query");

        // Threshold 1 keeps nothing: empty but well-formed results.
        var none = p.SetConfidenceThreshold(1.0, state)!;
        Assert.That(none[0].Count, Is.EqualTo(0));
        Assert.That(none[0].Masks.shape, Is.EqualTo(new long[] { 0, _testImage.Height, _testImage.Width }));
        Assert.That(none[0].Boxes.shape, Is.EqualTo(new long[] { 0, 4 }));
        Assert.That(none[0].ScoreArray(), Is.Empty);
        Assert.That(none[0].BoxArray(), Is.Empty);
        Assert.That(none[0].QueryIndices, Is.Empty);
        Assert.Throws<ArgumentOutOfRangeException>(() => none[0].MaskBytes(0));
        Assert.That(probeCalls, Is.EqualTo(networkCalls), "no probe calls while re-filtering");

        // Without a state only the threshold changes.
        Assert.That(p.SetConfidenceThreshold(0.3), Is.Null);
        Assert.That(p.ConfidenceThreshold, Is.EqualTo(0.3));
        Assert.That(state.RawOutput, Is.SameAs(raw));
    }

    [Test]
    public void PixelBoxHelpersEqualTheNormalisedBox()
    {
        // test_image is 1280×720: xyxy (320, 180, 704, 540) = cxcywh (0.4, 0.5, 0.3, 0.5), exactly in float.
        Assert.That((_testImage.Width, _testImage.Height), Is.EqualTo((1280, 720)));
        using var p = NewProcessor(0.1);
        using var state = p.SetImage(_testImage);
        p.AddBoxPrompt(state, new BoxPrompt(0.4f, 0.5f, 0.3f, 0.5f));
        var normalised = Snap(state, 0);
        p.ResetAllPrompts(state);
        p.AddBoxPromptXyxy(state, 320, 180, 704, 540);
        Assert.That(state.Boxes.Single(), Is.EqualTo(new BoxPrompt(0.4f, 0.5f, 0.3f, 0.5f)));
        AssertSame(Snap(state, 0), normalised, 1e-6, "xyxy");
        p.ResetAllPrompts(state);
        p.AddBoxPromptXywh(state, 320, 180, 384, 360);
        AssertSame(Snap(state, 0), normalised, 1e-6, "xywh");

        // Negative pixel boxes keep their label; the whole image is a valid box.
        p.AddBoxPromptXyxy(state, 0, 0, 1280, 720, positive: false);
        Assert.That(state.Boxes[1], Is.EqualTo(new BoxPrompt(0.5f, 0.5f, 1f, 1f, false)));

        // A batch of same-sized images accepts pixel boxes.
        using var batch = p.SetImageBatch([_testImage, _testImage]);
        var r = p.AddBoxPromptXyxy(batch, 320, 180, 704, 540);
        Assert.That(r, Has.Count.EqualTo(2));
        AssertSame(Snap(batch, 1), normalised, Tol, "batch entry 1");
    }

    [Test]
    public void TextCacheKeepsAlternatingPromptsAndGivesFreshResults()
    {
        string[] prompts = ["person", "car"];
        var fresh = prompts.ToDictionary(x => x, x => SingleRun(_testImage, x, 0.1));
        Assert.That(MaxDiff(fresh["person"].Logits, fresh["car"].Logits), Is.GreaterThan(1e-3), "the two prompts differ");

        using var p = NewProcessor(0.1);
        using var state = p.SetImage(_testImage);
        Assert.That(p.CachedTextPrompts, Is.EqualTo(0));
        for (int i = 0; i < 6; i++)
        {
            string text = prompts[i % 2];
            p.SetTextPrompt(state, text);
            Assert.That(p.CachedTextPrompts, Is.EqualTo(Math.Min(i + 1, 2)));
            AssertSame(Snap(state, 0), fresh[text], 1e-6, $"call {i} ({text})");
        }

        // A cache of one evicts and re-encodes: still the same results.
        using var small = NewProcessor(0.1, cache: 1);
        using var s2 = small.SetImage(_testImage);
        for (int i = 0; i < 4; i++)
        {
            string text = prompts[i % 2];
            small.SetTextPrompt(s2, text);
            Assert.That(small.CachedTextPrompts, Is.EqualTo(1));
            AssertSame(Snap(s2, 0), fresh[text], 1e-6, $"cache 1, call {i} ({text})");
        }
    }

    [Test]
    public void PointsAccumulate()
    {
        using var p = NewProcessor(0.1);
        using var state = p.SetImage(_testImage);
        p.AddPointPrompt(state, new PointPrompt(0.4f, 0.5f));
        var one = Snap(state, 0);
        p.AddPointPrompt(state, new PointPrompt(0.6f, 0.3f, Positive: false));
        Assert.That(state.Points, Is.EqualTo(new[] { new PointPrompt(0.4f, 0.5f), new PointPrompt(0.6f, 0.3f, false) }));
        Assert.That(MaxDiff(Snap(state, 0).Logits, one.Logits), Is.GreaterThan(1e-3));
    }

    // ------------------------------------------------------------------ 2. bad input

    [Test]
    public void PromptBeforeImageIsAStateError()
    {
        using var p = NewProcessor();
        Sam3ImageState none = null!;
        Assert.Throws<Sam3StateException>(() => p.SetTextPrompt(none, "person"));
        Assert.Throws<Sam3StateException>(() => p.AddBoxPrompt(none, new BoxPrompt(0.5f, 0.5f, 0.1f, 0.1f)));
        Assert.Throws<Sam3StateException>(() => p.AddBoxPromptXyxy(none, 0, 0, 10, 10));
        Assert.Throws<Sam3StateException>(() => p.AddBoxPromptXywh(none, 0, 0, 10, 10));
        Assert.Throws<Sam3StateException>(() => p.AddPointPrompt(none, new PointPrompt(0.5f, 0.5f)));
        Assert.Throws<Sam3StateException>(() => p.Predict(none));
        Assert.Throws<Sam3StateException>(() => p.ResetAllPrompts(none));
    }

    [TestCase("")]
    [TestCase("   ")]
    [TestCase("\t\n")]
    [TestCase(null)]
    public void EmptyTextIsAPromptError(string? text)
    {
        using var p = NewProcessor();
        using var state = p.SetImage(_testImage);
        p.SetTextPrompt(state, "person");
        var results = state.Results;
        Assert.Throws<Sam3PromptException>(() => p.SetTextPrompt(state, text!));
        Assert.That(state.TextPrompt, Is.EqualTo("person"), "the previous prompt stays");
        Assert.That(state.Results, Is.SameAs(results));
    }

    private static IEnumerable<TestCaseData> BadBoxes()
    {
        yield return new TestCaseData(new BoxPrompt(1.5f, 0.5f, 0.2f, 0.2f)).SetName("Box_CxAbove1");
        yield return new TestCaseData(new BoxPrompt(0.5f, -0.1f, 0.2f, 0.2f)).SetName("Box_CyBelow0");
        yield return new TestCaseData(new BoxPrompt(0.5f, 0.5f, 1.2f, 0.2f)).SetName("Box_WAbove1");
        yield return new TestCaseData(new BoxPrompt(0.5f, 0.5f, 0f, 0.2f)).SetName("Box_ZeroWidth");
        yield return new TestCaseData(new BoxPrompt(0.5f, 0.5f, 0.2f, -0.1f)).SetName("Box_NegativeHeight");
        yield return new TestCaseData(new BoxPrompt(float.NaN, 0.5f, 0.2f, 0.2f)).SetName("Box_NaN");
        yield return new TestCaseData(new BoxPrompt(0.5f, 0.5f, float.PositiveInfinity, 0.2f)).SetName("Box_Infinity");
        yield return new TestCaseData(new BoxPrompt(0.5f, float.NegativeInfinity, 0.2f, 0.2f)).SetName("Box_NegativeInfinity");
    }

    [TestCaseSource(nameof(BadBoxes))]
    public void BadBoxIsAPromptError(BoxPrompt box)
    {
        using var p = NewProcessor();
        using var state = p.SetImage(_testImage);
        Assert.Throws<Sam3PromptException>(() => p.AddBoxPrompt(state, box));
        Assert.That(state.Boxes, Is.Empty, "a rejected box is not kept");
        Assert.That(state.Results, Is.Null);
    }

    [TestCase(-1f, 0f, 10f, 10f)]
    [TestCase(0f, 0f, 1281f, 10f)]
    [TestCase(0f, 0f, 10f, 721f)]
    [TestCase(10f, 10f, 10f, 20f)]
    [TestCase(10f, 20f, 20f, 5f)]
    [TestCase(float.NaN, 0f, 10f, 10f)]
    [TestCase(0f, 0f, float.PositiveInfinity, 10f)]
    public void BadPixelBoxIsAPromptError(float x0, float y0, float x1, float y1)
    {
        using var p = NewProcessor();
        using var state = p.SetImage(_testImage);
        Assert.Throws<Sam3PromptException>(() => p.AddBoxPromptXyxy(state, x0, y0, x1, y1));
        Assert.Throws<Sam3PromptException>(() => p.AddBoxPromptXywh(state, x0, y0, x1 - x0, y1 - y0));
        Assert.That(state.Boxes, Is.Empty);
    }

    [TestCase(float.NaN, 0.5f)]
    [TestCase(0.5f, float.PositiveInfinity)]
    [TestCase(1.1f, 0.5f)]
    [TestCase(0.5f, -0.01f)]
    public void BadPointIsAPromptError(float x, float y)
    {
        using var p = NewProcessor();
        using var state = p.SetImage(_testImage);
        Assert.Throws<Sam3PromptException>(() => p.AddPointPrompt(state, new PointPrompt(x, y)));
        Assert.That(state.Points, Is.Empty);
    }

    [Test]
    public void BadImagesAreImageErrors()
    {
        using var p = NewProcessor();
        Assert.Throws<Sam3ImageException>(() => p.SetImageBatch([]));
        Assert.Throws<Sam3ImageException>(() => p.SetImageBatch(null!));
        Assert.Throws<Sam3ImageException>(() => p.SetImageBatch([_testImage, null!]));
        Assert.Throws<Sam3ImageException>(() => p.SetImage((RgbImage)null!));
        Assert.Throws<Sam3ImageException>(() => p.SetImage((string)null!));
        Assert.Throws<Sam3ImageException>(() => p.SetImage(Path.Combine(Path.GetTempPath(), "no-such-image-" + Guid.NewGuid() + ".jpg")));

        int s = Sam3Config.Tiny.ImageSize;
        using var ok = torch.zeros(1, 3, s, s);
        using var wrong = torch.zeros(1, 3, s, s + 1);
        Assert.Throws<Sam3ImageException>(() => p.SetPreprocessed(null!, [(10, 10)]));
        Assert.Throws<Sam3ImageException>(() => p.SetPreprocessed(wrong, [(10, 10)]));
        Assert.Throws<Sam3ImageException>(() => p.SetPreprocessed(ok, null!));
        Assert.Throws<Sam3ImageException>(() => p.SetPreprocessed(ok, [(10, 10), (10, 10)]));
        Assert.Throws<Sam3ImageException>(() => p.SetPreprocessed(ok, [(0, 10)]));
        using var state = p.SetPreprocessed(ok, [(10, 12)]);
        Assert.That(state.OriginalSizes[0], Is.EqualTo((10, 12)));
    }

    [Test]
    public void DisposedStateIsAStateError()
    {
        using var p = NewProcessor(0.1);
        var state = p.SetImage(_testImage);
        p.SetTextPrompt(state, "person");
        state.Dispose();
        Assert.That(state.IsDisposed, Is.True);
        Assert.That(state.Results, Is.Null);
        Assert.That(state.RawOutput, Is.Null);
        Assert.Throws<Sam3StateException>(() => p.SetTextPrompt(state, "person"));
        Assert.Throws<Sam3StateException>(() => p.AddBoxPrompt(state, new BoxPrompt(0.5f, 0.5f, 0.1f, 0.1f)));
        Assert.Throws<Sam3StateException>(() => p.AddBoxPromptXyxy(state, 0, 0, 10, 10));
        Assert.Throws<Sam3StateException>(() => p.AddPointPrompt(state, new PointPrompt(0.5f, 0.5f)));
        Assert.Throws<Sam3StateException>(() => p.Predict(state));
        Assert.Throws<Sam3StateException>(() => p.ResetAllPrompts(state));
        Assert.Throws<Sam3StateException>(() => p.SetConfidenceThreshold(0.3, state));
        Assert.That(p.ConfidenceThreshold, Is.EqualTo(0.1), "a failed call changes nothing");
        Assert.DoesNotThrow(state.Dispose, "disposing twice is harmless");
    }

    [Test]
    public void DisposedProcessorThrowsObjectDisposed()
    {
        var p = NewProcessor();
        var state = p.SetImage(_testImage);
        p.SetTextPrompt(state, "person");
        p.Dispose();
        Assert.That(p.CachedTextPrompts, Is.EqualTo(0), "the text cache is freed");
        Assert.Throws<ObjectDisposedException>(() => p.SetImage(_testImage));
        Assert.Throws<ObjectDisposedException>(() => p.SetImageBatch([_testImage]));
        Assert.Throws<ObjectDisposedException>(() => p.SetTextPrompt(state, "person"));
        Assert.Throws<ObjectDisposedException>(() => p.AddBoxPrompt(state, new BoxPrompt(0.5f, 0.5f, 0.1f, 0.1f)));
        Assert.Throws<ObjectDisposedException>(() => p.Predict(state));
        Assert.Throws<ObjectDisposedException>(() => p.SetConfidenceThreshold(0.3, state));
        Assert.Throws<ObjectDisposedException>(() => p.ResetAllPrompts(state));
        Assert.DoesNotThrow(p.Dispose);
        // The state is the caller's and stays readable.
        Assert.That(state.Results![0].ScoreArray(), Is.Not.Null);
        state.Dispose();
    }

    [TestCase(-0.1)]
    [TestCase(1.1)]
    [TestCase(double.NaN)]
    [TestCase(double.PositiveInfinity)]
    public void ThresholdOutsideUnitIntervalIsAPromptError(double t)
    {
        Assert.Throws<Sam3PromptException>(() => new Sam3Processor(_model, _tokenizer, t));
        using var p = NewProcessor(0.4);
        using var state = p.SetImage(_testImage);
        p.SetTextPrompt(state, "person");
        var results = state.Results;
        Assert.Throws<Sam3PromptException>(() => p.SetConfidenceThreshold(t));
        Assert.Throws<Sam3PromptException>(() => p.SetConfidenceThreshold(t, state));
        Assert.That(p.ConfidenceThreshold, Is.EqualTo(0.4));
        Assert.That(state.Results, Is.SameAs(results));
    }

    [Test]
    public void PixelBoxesOnABatchOfDifferentSizesAreRefused()
    {
        using var p = NewProcessor();
        using var state = p.SetImageBatch([_groceries, _testImage]);
        Assert.Throws<Sam3PromptException>(() => p.AddBoxPromptXyxy(state, 10, 10, 100, 100));
        Assert.Throws<Sam3PromptException>(() => p.AddBoxPromptXywh(state, 10, 10, 90, 90));
        Assert.That(state.Boxes, Is.Empty);
        // Normalised boxes are fine on such a batch.
        Assert.That(p.AddBoxPrompt(state, new BoxPrompt(0.5f, 0.5f, 0.2f, 0.2f)), Has.Count.EqualTo(2));
    }

    [Test]
    public void NullArgumentsAreTypedErrors()
    {
        Assert.Throws<ArgumentNullException>(() => new Sam3Processor(null!, _tokenizer));
        Assert.Throws<ArgumentNullException>(() => new Sam3Processor(_model, null!));
    }

    [Test]
    public void BadInputLeavesTheProcessorWorking()
    {
        using var p = NewProcessor(0.1);
        using var state = p.SetImage(_testImage);
        var expected = SingleRun(_testImage, _promptA, 0.1);
        var attempts = new Action[]
        {
            () => p.SetTextPrompt(state, " "),
            () => p.AddBoxPrompt(state, new BoxPrompt(float.NaN, 0, 0, 0)),
            () => p.AddPointPrompt(state, new PointPrompt(2, 2)),
            () => p.AddBoxPromptXyxy(state, 5, 5, 1, 1),
            () => p.SetConfidenceThreshold(2, state),
            () => p.Predict(state),
            () => p.SetImageBatch([]),
        };
        foreach (var a in attempts) Assert.Throws(Is.InstanceOf<Sam3Exception>(), () => a());
        p.SetTextPrompt(state, _promptA);
        AssertSame(Snap(state, 0), expected, 1e-6, "after the bad calls");
    }

    // ------------------------------------------------------------------ 3. memory

    [Test]
    public void ThousandPromptCallsKeepMemoryFlat()
    {
        // test_image at a quarter of its size (320×180) keeps the per-call upsampling of the masks cheap; leaks of any
        // kind still show in the live-tensor count.
        using var p = NewProcessor(0.2);
        using var state = p.SetImage(Downscale(_testImage, 4));
        string[] texts = ["person", "car", "a red bus"];
        double[] thresholds = [0.1, 0.3, 0.2];
        const int calls = 1000, cycle = 5;
        long live200 = 0, rss200 = 0;
        var sw = Stopwatch.StartNew();
        for (int i = 1; i <= calls; i++)
        {
            int k = i / cycle;
            switch (i % cycle)
            {
                case 1: p.SetTextPrompt(state, texts[k % texts.Length]); break;
                case 2: p.SetConfidenceThreshold(thresholds[k % thresholds.Length], state); break;
                case 3:
                    if (k % 2 == 0) p.AddBoxPrompt(state, new BoxPrompt(0.3f + 0.1f * (k % 4), 0.5f, 0.2f, 0.3f, k % 4 == 0));
                    else p.AddPointPrompt(state, new PointPrompt(0.5f, 0.2f + 0.1f * (k % 5), k % 3 != 0));
                    break;
                case 4: p.SetConfidenceThreshold(thresholds[(k + 1) % thresholds.Length], state); break;
                case 0: p.ResetAllPrompts(state); break;
            }
            if (i == 200) (live200, rss200) = Measure();
        }
        sw.Stop();
        var (live1000, rss1000) = Measure();
        var stats = DisposeScopeManager.Statistics;
        TestContext.Out.WriteLine($"{calls} calls in {sw.Elapsed.TotalSeconds:F1} s; live tensors: {live200} at call 200, {live1000} at call {calls}; " +
            $"RSS: {rss200 / 1048576.0:F1} MB at call 200, {rss1000 / 1048576.0:F1} MB at call {calls} (growth {(rss1000 - rss200) / 1048576.0:F1} MB)");
        TestContext.Out.WriteLine($"dispose-scope statistics: {stats}");
        Assert.That(p.CachedTextPrompts, Is.EqualTo(texts.Length));
        Assert.That(live1000, Is.EqualTo(live200), "live tensors after call 1000 vs call 200");
        Assert.That(rss1000 - rss200, Is.LessThan(64L << 20), "RSS growth between call 200 and call 1000");
    }

    /// <summary>Every <paramref name="f"/>-th pixel in both directions.</summary>
    private static RgbImage Downscale(RgbImage image, int f)
    {
        int w = image.Width / f, h = image.Height / f;
        var data = new byte[w * h * 3];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < 3; c++)
                    data[(y * w + x) * 3 + c] = image.Data[((y * f) * image.Width + x * f) * 3 + c];
        return new RgbImage(w, h, data);
    }

    private static (long Live, long Rss) Measure()
    {
        for (int i = 0; i < 2; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        using var proc = Process.GetCurrentProcess();
        proc.Refresh();
        return (DisposeScopeManager.Statistics.ThreadTotalLiveCount, proc.WorkingSet64);
    }

    // ------------------------------------------------------------------ 4. cancellation

    [Test]
    public void CancelledTokenBeforeSetImageThrowsAndChangesNothing()
    {
        using var p = NewProcessor(0.1);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Assert.Throws<OperationCanceledException>(() => p.SetImage(_testImage, cts.Token));
        Assert.Throws<OperationCanceledException>(() => p.SetImage(_testImagePath, cts.Token));
        Assert.Throws<OperationCanceledException>(() => p.SetImageBatch([_testImage, _groceries], cts.Token));
        using (var x = torch.zeros(1, 3, Sam3Config.Tiny.ImageSize, Sam3Config.Tiny.ImageSize))
            Assert.Throws<OperationCanceledException>(() => p.SetPreprocessed(x, [(10, 10)], cts.Token));
        Assert.That(DisposeScopeManager.Statistics.ThreadTotalLiveCount, Is.EqualTo(live), "no tensors left behind");
        using var state = p.SetImage(_testImage);
        p.SetTextPrompt(state, _promptA);
        AssertSame(Snap(state, 0), SingleRun(_testImage, _promptA, 0.1), 1e-6, "after cancellation");
    }

    [Test]
    public void CancelledTokenBeforePredictThrowsAndLeavesTheStateUsable()
    {
        using var p = NewProcessor(0.1);
        using var state = p.SetImage(_testImage);
        p.SetTextPrompt(state, _promptA);
        var results = state.Results!;
        var raw = state.RawOutput;
        var before = Snap(state, 0);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.Throws<OperationCanceledException>(() => p.Predict(state, cancellationToken: cts.Token));
        Assert.Throws<OperationCanceledException>(() => p.SetTextPrompt(state, "car", cancellationToken: cts.Token));
        Assert.Throws<OperationCanceledException>(() => p.AddBoxPrompt(state, new BoxPrompt(0.5f, 0.5f, 0.2f, 0.2f), cancellationToken: cts.Token));
        Assert.Throws<OperationCanceledException>(() => p.AddPointPrompt(state, new PointPrompt(0.5f, 0.5f), cancellationToken: cts.Token));
        // Nothing changed: prompts, results (still alive) and raw outputs.
        Assert.That(state.TextPrompt, Is.EqualTo(_promptA));
        Assert.That(state.Boxes, Is.Empty);
        Assert.That(state.Points, Is.Empty);
        Assert.That(state.Results, Is.SameAs(results));
        Assert.That(state.RawOutput, Is.SameAs(raw));
        AssertSame(Snap(state, 0), before, 0, "results after the cancelled calls");
        // And it still works.
        p.AddBoxPrompt(state, new BoxPrompt(0.5f, 0.5f, 0.2f, 0.2f));
        Assert.That(state.Boxes, Has.Count.EqualTo(1));
        p.ResetAllPrompts(state);
        p.SetTextPrompt(state, _promptA);
        AssertSame(Snap(state, 0), before, 1e-6, "after cancellation");
    }
}
