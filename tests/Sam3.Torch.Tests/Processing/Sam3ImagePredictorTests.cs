using System.Diagnostics;
using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Processing;

/// <summary>
/// The image prediction API (<see cref="Sam3Model.CreateImagePredictor"/> → <see cref="Sam3ImagePredictor"/>,
/// <see cref="Sam3ImageState"/>, <see cref="ImageDetections"/>) on the tiny random-weight model: behaviour (expected
/// values from the parity fixtures or from mathematics: batch invariance, pixel ↔ normalised boxes and points,
/// re-thresholding of the raw outputs), caller-owned results, typed errors on bad input (argument errors, disposed
/// objects, prompt and image errors), flat memory over 1,000 prompt calls and cancellation. The internal
/// <c>*Core</c> methods and <c>RawOutput</c> are used only where a check needs tensors or the raw per-query outputs.
/// End-to-end parity itself is tested in <c>Parity/ImageScenarioParityTests</c>.
/// </summary>
[TestFixture, Category("Fast")]
public class Sam3ImagePredictorTests
{
    private const double Tol = 1e-4;

    private Sam3Model _sam = null!;
    private int _threads;
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

    private static string Vocab => SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz");

    [OneTimeSetUp]
    public void LoadModel()
    {
        string parity = SharedData.Parity();
        // One intra-op thread: the tiny model's ops are far too small to gain from two, and on a loaded 2-core machine
        // OpenMP's spinning made each prompt call ~30× slower (≈1.5 s instead of ≈50 ms). Restored in TearDown.
        _threads = torch.get_num_threads();
        torch.set_num_threads(1);
        _sam = Sam3Model.Load(TinyWeights.Path, new Sam3ModelOptions { Config = Sam3Config.Tiny, TokenizerPath = Vocab });
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
        _sam?.Dispose();
        if (_threads > 0) torch.set_num_threads(_threads);
    }

    private Sam3ImagePredictor NewPredictor(double threshold = 0.5, int cache = 32) =>
        _sam.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = threshold, TextCacheCapacity = cache });

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

    /// <summary>Element-wise identical arrays (NUnit's collection equality is too slow for megapixel masks).</summary>
    private static void AssertIdentical<T>(ReadOnlySpan<T> actual, ReadOnlySpan<T> expected, string what) where T : IEquatable<T>
    {
        Assert.That(actual.Length, Is.EqualTo(expected.Length), $"{what}: lengths differ");
        int i = 0;
        while (i < actual.Length && actual[i].Equals(expected[i])) i++;
        Assert.That(i, Is.EqualTo(actual.Length), i < actual.Length ? $"{what}: first difference at {i}: {actual[i]} vs {expected[i]}" : what);
    }

    private static float[] Xyxy(Box b) => b.ToXyxy() is var (x0, y0, x1, y1) ? [x0, y0, x1, y1] : [];

    /// <summary>Internal tensor results, disposed together.</summary>
    private sealed class Owned(IReadOnlyList<DetectionTensors> items) : IDisposable
    {
        public DetectionTensors this[int i] => items[i];
        public int Count => items.Count;
        public void Dispose()
        {
            foreach (var t in items) t.Dispose();
        }
    }

    /// <summary>One image's public results plus the state's raw per-query outputs, as plain arrays.</summary>
    private sealed record Snapshot(int[] Queries, float[] Scores, float[] Boxes, int H, int W, float[] Logits, float[] RawBoxes);

    private static Snapshot Snap(IReadOnlyList<ImageDetections> results, Sam3ImageState state, int i)
    {
        var r = results[i];
        Assert.That(r.ImageIndex, Is.EqualTo(i));
        return new Snapshot(r.Select(d => d.QueryIndex).ToArray(), r.Scores(), r.SelectMany(d => Xyxy(d.Box)).ToArray(), r.Height, r.Width,
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
        using var p = NewPredictor(threshold);
        using var s = p.SetImage(image);
        return Snap(p.SetTextPrompt(s, prompt), s, 0);
    }

    /// <summary>A deep copy of public results (to prove later calls leave them alone).</summary>
    private sealed record Copy(int Index, int W, int H, int[] Queries, float[] Scores, Box[] Boxes, byte[][] Masks);

    private static Copy DeepCopy(ImageDetections r) => new(r.ImageIndex, r.Width, r.Height, r.Select(d => d.QueryIndex).ToArray(),
        r.Scores(), r.Boxes(), r.Masks().Select(m => m.Data.ToArray()).ToArray());

    private static void AssertUnchanged(ImageDetections r, Copy c, string what)
    {
        Assert.That((r.ImageIndex, r.Width, r.Height), Is.EqualTo((c.Index, c.W, c.H)), what);
        Assert.That(r.Select(d => d.QueryIndex), Is.EqualTo(c.Queries), what + ": queries");
        Assert.That(r.Scores(), Is.EqualTo(c.Scores), what + ": scores");
        Assert.That(r.Boxes(), Is.EqualTo(c.Boxes), what + ": boxes");
        Assert.That(r.Count, Is.EqualTo(c.Masks.Length), what + ": count");
        for (int k = 0; k < r.Count; k++)
        {
            Assert.That(r[k].Index, Is.EqualTo(k));
            AssertIdentical<byte>(r[k].Mask.Data, c.Masks[k], $"{what}: mask {k}");
        }
    }

    // ------------------------------------------------------------------ 1. behaviour

    [Test]
    public void TextPromptGivesMasksAtOriginalResolutionAndPixelBoxes()
    {
        using var p = NewPredictor(_thresholdA);
        Assert.That(p.ConfidenceThreshold, Is.EqualTo(_thresholdA));
        using var state = p.SetImage(_testImagePath);
        var (h, w) = _sizeA;
        Assert.That(state.ImageCount, Is.EqualTo(1));
        Assert.That(state.ImageSizes[0], Is.EqualTo((w, h)));
        var results = p.SetTextPrompt(state, _promptA);
        Assert.That(results, Has.Count.EqualTo(1));
        Assert.That(state.TextPrompt, Is.EqualTo(_promptA));
        var r = results[0];

        // Fixture a: the kept scores at this threshold.
        Assert.That(r.Count, Is.EqualTo(_scoresA.Length));
        AssertClose(r.Scores(), _scoresA, Tol, "scores vs fixture a");

        Assert.That((r.ImageIndex, r.Height, r.Width), Is.EqualTo((0, h, w)));
        for (int k = 0; k < r.Count; k++)
        {
            var d = r[k];
            Assert.That(d.Index, Is.EqualTo(k));
            Assert.That((d.Mask.Width, d.Mask.Height), Is.EqualTo((w, h)), $"mask {k} at the original resolution");
            Assert.That(d.Mask.Data.All(x => x <= 1), "0/1 bytes");
            Assert.That((d.Box.Format, d.Box.Space), Is.EqualTo((BoxFormat.Xyxy, CoordinateSpace.Pixels)));
            Assert.That(d.Score, Is.InRange(0f, 1f));
            AssertIdentical<byte>(d.ToRle().Decode(), d.Mask.Data, $"RLE of mask {k} decodes to the mask");
        }

        // The public data equals the tensor results of the same raw outputs (masks = probabilities > 0.5).
        using (var core = new Owned(p.SetConfidenceThresholdCore(_thresholdA, state)!))
        using (var scope = NewDisposeScope())
        {
            var t = core[0];
            Assert.That(t.Masks.shape, Is.EqualTo(new long[] { r.Count, h, w }));
            Assert.That(t.Masks.dtype, Is.EqualTo(ScalarType.Bool));
            Assert.That(t.MaskProbabilities.shape, Is.EqualTo(new long[] { r.Count, h, w }));
            Assert.That(t.Boxes.shape, Is.EqualTo(new long[] { r.Count, 4 }));
            Assert.That(t.Masks.eq(t.MaskProbabilities.gt(0.5)).all().item<bool>(), Is.True, "masks = probabilities > 0.5");
            if (r.Count > 0)
            {
                Assert.That(t.MaskProbabilities.min().item<float>(), Is.GreaterThanOrEqualTo(0f));
                Assert.That(t.MaskProbabilities.max().item<float>(), Is.LessThanOrEqualTo(1f));
            }
            Assert.That(t.ScoreArray(), Is.EqualTo(r.Scores()));
            Assert.That(t.QueryIndices, Is.EqualTo(r.Select(d => (long)d.QueryIndex)));
            var tb = t.BoxArray();
            for (int k = 0; k < r.Count; k++)
            {
                Assert.That(Xyxy(r[k].Box), Is.EqualTo(tb[k]), $"box {k}");
                AssertIdentical<byte>(r[k].Mask.Data, t.MaskBytes(k), $"mask {k}");
            }
        }

        // Public calls leave no native tensor behind: re-filtering and re-prompting (cached text; the raw outputs are
        // replaced, not added) keep the live-tensor count.
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        p.SetConfidenceThreshold(_thresholdA, state);
        p.SetTextPrompt(state, _promptA);
        Assert.That(DisposeScopeManager.Statistics.ThreadTotalLiveCount, Is.EqualTo(live), "public calls left tensors alive");

        // Scores and pixel boxes follow from the raw per-query outputs (math: cxcywh → xyxy, × (W, H)).
        var probs = QueryProbabilities(state.RawOutput!, 0);
        var expectedKept = Enumerable.Range(0, probs.Length).Where(q => probs[q] > _thresholdA).ToArray();
        Assert.That(r.Select(d => d.QueryIndex), Is.EqualTo(expectedKept));
        AssertClose(r.Scores(), expectedKept.Select(q => probs[q]).ToArray(), 1e-6, "scores vs raw");
        var raw = Floats(state.RawOutput!.PredBoxes!, 0);
        for (int k = 0; k < r.Count; k++)
        {
            int q = r[k].QueryIndex;
            float cx = raw[q * 4], cy = raw[q * 4 + 1], bw = raw[q * 4 + 2], bh = raw[q * 4 + 3];
            float[] expected = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h];
            AssertClose(Xyxy(r[k].Box), expected, 1e-3, $"pixel box {k}");
            // The other coordinate spaces of the same box: normalised cxcywh is the raw output.
            var n = r[k].Box.ToNormalized(w, h).ToCxcywh();
            AssertClose([n.Cx, n.Cy, n.Width, n.Height], [cx, cy, bw, bh], 1e-5, $"normalised cxcywh box {k}");
        }
    }

    [Test]
    public void RawPerQueryOutputsAreExposed()
    {
        using var p = NewPredictor();
        using var state = p.SetImages([_testImage, _groceries]);
        Assert.That(state.ImageCount, Is.EqualTo(2));
        Assert.That(state.RawOutput, Is.Null);
        var results = p.SetTextPrompt(state, "person");
        Assert.That(results.Select(r => r.ImageIndex), Is.EqualTo(new[] { 0, 1 }));
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
        using var p = NewPredictor(thr);
        using var state = p.SetImages([_testImage, _testImage]);
        var results = p.SetTextPrompt(state, _promptA);
        Assert.That(results, Has.Count.EqualTo(2));
        Assert.That(results[1].ImageIndex, Is.EqualTo(1));
        Assert.That(results[0].Count, Is.GreaterThan(0), "the test needs detections at this threshold");
        var a = Snap(results, state, 0);
        var b = Snap(results, state, 1);
        AssertSame(a, b, Tol, "entry 1 vs entry 0");
        using (var core = new Owned(p.SetConfidenceThresholdCore(thr, state)!))
            Assert.That(MaxAbsDiff(core[0].MaskProbabilities, core[1].MaskProbabilities), Is.LessThanOrEqualTo(Tol));
        AssertSame(a, SingleRun(_testImage, _promptA, thr), Tol, "batch vs single");
    }

    [Test]
    public void MixedBatchMatchesSingleRunsAndTheFixture()
    {
        Assert.That(_imagesB, Is.EqualTo(new[] { _groceriesPath, _testImagePath }).AsCollection, "fixture b's images");
        double thr = _thresholdsB.Min();
        using var p = NewPredictor(thr);
        using var state = p.SetImages([_groceries, _testImage]);
        Assert.That(state.ImageSizes, Is.EqualTo(new[] { (_groceries.Width, _groceries.Height), (_testImage.Width, _testImage.Height) }));
        var results = p.SetTextPrompt(state, _promptA);
        Assert.That(results, Has.Count.EqualTo(2));
        Assert.That((results[0].Height, results[0].Width), Is.EqualTo((_groceries.Height, _groceries.Width)));
        Assert.That((results[1].Height, results[1].Width), Is.EqualTo((_testImage.Height, _testImage.Width)));
        Assert.That(results[0].Masks().All(m => (m.Width, m.Height) == (_groceries.Width, _groceries.Height)), "groceries mask sizes");
        Assert.That(results[1].Masks().All(m => (m.Width, m.Height) == (_testImage.Width, _testImage.Height)), "test_image mask sizes");
        AssertSame(Snap(results, state, 0), SingleRun(_groceries, _promptA, thr), Tol, "groceries: batch vs single");
        AssertSame(Snap(results, state, 1), SingleRun(_testImage, _promptA, thr), Tol, "test_image: batch vs single");

        // Fixture b: the kept scores of image i at its own threshold.
        for (int i = 0; i < 2; i++)
        {
            var r = p.SetConfidenceThreshold(_thresholdsB[i], state)!;
            AssertClose(r[i].Scores(), _scoresB[i], Tol, $"image {i} scores vs fixture b");
        }
    }

    [Test]
    public void BoxesAccumulateAndCombineWithText()
    {
        var box1 = BoxPrompt.NormalizedCxcywh(0.42f, 0.55f, 0.3f, 0.6f);
        var box2 = BoxPrompt.NormalizedCxcywh(0.8f, 0.45f, 0.2f, 0.4f, positive: false);
        using var p = NewPredictor(0.1);
        using var state = p.SetImage(_testImage);

        var boxOnly = Snap(p.AddBox(state, box1), state, 0);
        Assert.That(state.Boxes, Is.EqualTo(new[] { box1 }));
        Assert.That(state.TextPrompt, Is.Null);
        var twoBoxes = Snap(p.AddBox(state, box2), state, 0);
        Assert.That(state.Boxes, Is.EqualTo(new[] { box1, box2 }));
        Assert.That(MaxDiff(twoBoxes.Logits, boxOnly.Logits), Is.GreaterThan(1e-3), "the second box changes the prediction");

        p.ResetPrompts(state);
        var textOnly = Snap(p.SetTextPrompt(state, "person"), state, 0);
        var both = Snap(p.AddBox(state, box1), state, 0);
        Assert.That(state.TextPrompt, Is.EqualTo("person"));
        Assert.That(state.Boxes, Has.Count.EqualTo(1));
        Assert.That(MaxDiff(both.Logits, textOnly.Logits), Is.GreaterThan(1e-3), "text + box differs from text alone");
        Assert.That(MaxDiff(both.Logits, boxOnly.Logits), Is.GreaterThan(1e-3), "text + box differs from the box alone");

        // A box alone is the box with the dummy text (upstream add_geometric_prompt).
        p.ResetPrompts(state);
        p.SetTextPrompt(state, Sam3ImagePredictor.DummyTextPrompt);
        AssertSame(Snap(p.AddBox(state, box1), state, 0), boxOnly, 1e-6, "box alone vs dummy text + box");

        // Setting a new text keeps the boxes.
        var replaced = p.SetTextPrompt(state, "person");
        Assert.That(state.Boxes, Has.Count.EqualTo(1));
        AssertSame(Snap(replaced, state, 0), both, 1e-6, "text replaced, box kept");

        // Predict reruns the current prompts: the same result.
        AssertSame(Snap(p.Predict(state), state, 0), both, 1e-6, "Predict with the current prompts");
    }

    private static double MaxDiff(float[] a, float[] b) => a.Zip(b, (x, y) => Math.Abs(x - y)).Max();

    [Test]
    public void ResultsStayValidAndUnchangedAfterLaterCalls()
    {
        // Results are caller-owned copies: later prompt calls, re-thresholding, resets and even disposing the state and
        // the predictor leave them as they were (the old API freed them on the next call).
        var p = NewPredictor(0.1);
        var state = p.SetImages([_testImage, _groceries]);
        var first = p.SetTextPrompt(state, _promptA);
        Assert.That(first[0].Count, Is.GreaterThan(0), "the test needs detections");
        var copies = first.Select(DeepCopy).ToArray();
        var expected = Snap(first, state, 0);

        var second = p.SetTextPrompt(state, "car");
        Assert.That(second, Is.Not.SameAs(first));
        Assert.That(second[0], Is.Not.SameAs(first[0]));
        p.AddBox(state, BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 0.2f, 0.2f));
        p.AddPoint(state, PointPrompt.Normalized(0.3f, 0.4f));
        var none = p.SetConfidenceThreshold(1.0, state)!;
        Assert.That(none[0].Count, Is.EqualTo(0));
        p.ResetPrompts(state);
        for (int i = 0; i < 2; i++) AssertUnchanged(first[i], copies[i], $"image {i} after later calls");

        state.Dispose();
        p.Dispose();
        for (int i = 0; i < 2; i++) AssertUnchanged(first[i], copies[i], $"image {i} after disposing state and predictor");
        // And they are what a fresh single-image run gives.
        var fresh = SingleRun(_testImage, _promptA, 0.1);
        Assert.That(expected.Queries, Is.EqualTo(fresh.Queries));
        AssertClose(first[0].Scores(), fresh.Scores, Tol, "kept results vs a fresh run");
    }

    [Test]
    public void ResetClearsPromptsButKeepsTheImage()
    {
        using var p = NewPredictor(0.1);
        using var state = p.SetImage(_testImage);
        p.SetTextPrompt(state, "car");
        p.AddBox(state, BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 0.2f, 0.2f));
        p.AddPoint(state, PointPrompt.Normalized(0.3f, 0.4f));
        Assert.That((state.Boxes.Count, state.Points.Count), Is.EqualTo((1, 1)));

        p.ResetPrompts(state);
        Assert.That(state.TextPrompt, Is.Null);
        Assert.That(state.Boxes, Is.Empty);
        Assert.That(state.Points, Is.Empty);
        Assert.That(state.RawOutput, Is.Null);
        Assert.That(state.IsDisposed, Is.False);
        Assert.Throws<Sam3PromptException>(() => p.Predict(state), "no prompt left");
        Assert.That(p.SetConfidenceThreshold(0.2, state), Is.Null, "nothing to re-filter");

        var r = p.SetTextPrompt(state, _promptA);
        AssertSame(Snap(r, state, 0), SingleRun(_testImage, _promptA, 0.2), 1e-6, "after reset vs fresh image");
    }

    [Test]
    public void ThresholdRefiltersWithoutRerunningAndIsMonotonic()
    {
        using var p = NewPredictor(0.9);
        using var state = p.SetImage(_testImage);
        int recorded = 0;
        IReadOnlyList<ImageDetections> first;
        using (var rec = _sam.Record((_, _) => recorded++))
        {
            first = p.SetTextPrompt(state, _promptA);
            Assert.That(recorded, Is.GreaterThan(0), "the recorder sees the network run");
            Assert.That(rec.Names, Has.Count.EqualTo(recorded));
            Assert.That(rec.Names, Does.Contain("text.out.1"));
        }
        int networkCalls = recorded;
        var firstCopy = DeepCopy(first[0]);
        var raw = state.RawOutput!;
        var probs = QueryProbabilities(raw, 0);
        int[] previous = first[0].Select(d => d.QueryIndex).ToArray();
        using (var rec = _sam.Record((_, _) => recorded++))
        {
            foreach (double t in new[] { 0.9, 0.5, 0.3, 0.2, 0.15, 0.1, 0.05, 0.0 })
            {
                var r = p.SetConfidenceThreshold(t, state)!;
                Assert.That(p.ConfidenceThreshold, Is.EqualTo(t));
                Assert.That(state.RawOutput, Is.SameAs(raw), "the network was not rerun");
                var kept = r[0].Select(d => d.QueryIndex).ToArray();
                Assert.That(kept, Is.EqualTo(Enumerable.Range(0, probs.Length).Where(q => probs[q] > t)), $"kept at {t}");
                Assert.That(kept, Is.SupersetOf(previous), $"lowering to {t} only adds detections");
                Assert.That(r[0].Masks(), Has.Count.EqualTo(kept.Length));
                previous = kept;
            }
            Assert.That(previous, Has.Length.EqualTo(Sam3Config.Tiny.Decoder.NumQueries), "threshold 0 keeps every query");

            // Threshold 1 keeps nothing: empty but well-formed results.
            var none = p.SetConfidenceThreshold(1.0, state)!;
            Assert.That(none, Has.Count.EqualTo(1));
            Assert.That(none[0].Count, Is.EqualTo(0));
            Assert.That((none[0].Width, none[0].Height), Is.EqualTo((_testImage.Width, _testImage.Height)));
            Assert.That(none[0].Scores(), Is.Empty);
            Assert.That(none[0].Boxes(), Is.Empty);
            Assert.That(none[0].Masks(), Is.Empty);
            Assert.That(none[0], Is.Empty);
            using (var core = new Owned(p.SetConfidenceThresholdCore(1.0, state)!))
            {
                Assert.That(core[0].Masks.shape, Is.EqualTo(new long[] { 0, _testImage.Height, _testImage.Width }));
                Assert.That(core[0].Boxes.shape, Is.EqualTo(new long[] { 0, 4 }));
                Assert.That(core[0].ScoreArray(), Is.Empty);
                Assert.That(core[0].BoxArray(), Is.Empty);
                Assert.That(core[0].QueryIndices, Is.Empty);
                Assert.Throws<ArgumentOutOfRangeException>(() => core[0].MaskBytes(0));
            }
            Assert.That(rec.Names, Is.Empty, "nothing recorded while re-filtering");
        }
        Assert.That(recorded, Is.EqualTo(networkCalls), "no network call while re-filtering");

        // Without a state only the threshold changes.
        Assert.That(p.SetConfidenceThreshold(0.3), Is.Null);
        Assert.That(p.ConfidenceThreshold, Is.EqualTo(0.3));
        Assert.That(state.RawOutput, Is.SameAs(raw));
        AssertUnchanged(first[0], firstCopy, "the first call's results after re-filtering");
    }

    [Test]
    public void PixelBoxesInEveryFormatEqualTheNormalisedBox()
    {
        // test_image is 1280×720: xyxy (320, 180, 704, 540) = cxcywh (0.4, 0.5, 0.3, 0.5) normalised.
        Assert.That((_testImage.Width, _testImage.Height), Is.EqualTo((1280, 720)));
        using var p = NewPredictor(0.1);
        using var state = p.SetImage(_testImage);
        var normalised = Snap(p.AddBox(state, BoxPrompt.NormalizedCxcywh(0.4f, 0.5f, 0.3f, 0.5f)), state, 0);
        var same = new (string Name, Box Box)[]
        {
            ("pixel xyxy", Box.FromXyxy(320, 180, 704, 540)),
            ("pixel xywh", Box.FromXywh(320, 180, 384, 360)),
            ("pixel cxcywh", Box.FromCxcywh(512, 360, 384, 360, CoordinateSpace.Pixels)),
            ("normalised xyxy", Box.FromXyxy(0.25f, 0.25f, 0.55f, 0.75f, CoordinateSpace.Normalized)),
            ("normalised xywh", Box.FromXywh(0.25f, 0.25f, 0.3f, 0.5f, CoordinateSpace.Normalized)),
        };
        foreach (var (name, box) in same)
        {
            p.ResetPrompts(state);
            var r = p.AddBox(state, new BoxPrompt(box));
            Assert.That(state.Boxes.Single(), Is.EqualTo(new BoxPrompt(box)), $"{name}: kept as given");
            AssertSame(Snap(r, state, 0), normalised, 1e-6, name);
        }

        // Negative pixel boxes keep their label; the whole image is a valid box.
        p.AddBox(state, BoxPrompt.Xyxy(0, 0, 1280, 720, positive: false));
        Assert.That(state.Boxes[1], Is.EqualTo(new BoxPrompt(Box.FromXyxy(0, 0, 1280, 720), false)));

        // A batch of same-sized images accepts pixel boxes.
        using var batch = p.SetImages([_testImage, _testImage]);
        var rb = p.AddBox(batch, BoxPrompt.Xyxy(320, 180, 704, 540));
        Assert.That(rb, Has.Count.EqualTo(2));
        AssertSame(Snap(rb, batch, 1), normalised, Tol, "batch entry 1");
    }

    [Test]
    public void TextCacheKeepsAlternatingPromptsAndGivesFreshResults()
    {
        string[] prompts = ["person", "car"];
        var fresh = prompts.ToDictionary(x => x, x => SingleRun(_testImage, x, 0.1));
        Assert.That(MaxDiff(fresh["person"].Logits, fresh["car"].Logits), Is.GreaterThan(1e-3), "the two prompts differ");

        using var p = NewPredictor(0.1);
        using var state = p.SetImage(_testImage);
        Assert.That(p.CachedTextPrompts, Is.EqualTo(0));
        for (int i = 0; i < 6; i++)
        {
            string text = prompts[i % 2];
            var r = p.SetTextPrompt(state, text);
            Assert.That(p.CachedTextPrompts, Is.EqualTo(Math.Min(i + 1, 2)));
            AssertSame(Snap(r, state, 0), fresh[text], 1e-6, $"call {i} ({text})");
        }

        // A cache of one evicts and re-encodes: still the same results.
        using var small = NewPredictor(0.1, cache: 1);
        using var s2 = small.SetImage(_testImage);
        for (int i = 0; i < 4; i++)
        {
            string text = prompts[i % 2];
            var r = small.SetTextPrompt(s2, text);
            Assert.That(small.CachedTextPrompts, Is.EqualTo(1));
            AssertSame(Snap(r, s2, 0), fresh[text], 1e-6, $"cache 1, call {i} ({text})");
        }
    }

    [Test]
    public void PointsAccumulateAndPixelPointsEqualNormalisedOnes()
    {
        using var p = NewPredictor(0.1);
        using var state = p.SetImage(_testImage);
        var one = Snap(p.AddPoint(state, PointPrompt.Normalized(0.4f, 0.5f)), state, 0);
        var two = Snap(p.AddPoint(state, PointPrompt.Normalized(0.6f, 0.3f, positive: false)), state, 0);
        Assert.That(state.Points, Is.EqualTo(new[] { PointPrompt.Normalized(0.4f, 0.5f), PointPrompt.Normalized(0.6f, 0.3f, false) }));
        Assert.That(MaxDiff(two.Logits, one.Logits), Is.GreaterThan(1e-3));

        // 1280×720: pixel (512, 360) is normalised (0.4, 0.5).
        p.ResetPrompts(state);
        var px = Snap(p.AddPoint(state, PointPrompt.Pixel(512, 360)), state, 0);
        Assert.That(state.Points.Single(), Is.EqualTo(PointPrompt.Pixel(512, 360)), "kept as given");
        AssertSame(px, one, 1e-6, "pixel point vs normalised point");
    }

    // ------------------------------------------------------------------ 2. bad input

    [Test]
    public void NullArgumentsAreArgumentNullErrors()
    {
        using var p = NewPredictor();
        Sam3ImageState none = null!;
        Assert.Throws<ArgumentNullException>(() => p.SetTextPrompt(none, "person"));
        Assert.Throws<ArgumentNullException>(() => p.AddBox(none, BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 0.1f, 0.1f)));
        Assert.Throws<ArgumentNullException>(() => p.AddBox(none, BoxPrompt.Xyxy(0, 0, 10, 10)));
        Assert.Throws<ArgumentNullException>(() => p.AddPoint(none, PointPrompt.Normalized(0.5f, 0.5f)));
        Assert.Throws<ArgumentNullException>(() => p.Predict(none));
        Assert.Throws<ArgumentNullException>(() => p.ResetPrompts(none));
        using var state = p.SetImage(_testImage);
        Assert.Throws<ArgumentNullException>(() => p.SetTextPrompt(state, null!));
        Assert.That(state.TextPrompt, Is.Null);
        Assert.Throws<ArgumentNullException>(() => Sam3Model.Load(null!));
        Assert.Throws<ArgumentException>(() => Sam3Model.Load(" "));
        Assert.Throws<ArgumentNullException>(() => Sam3Model.CreateUntrained(null!, Vocab));
    }

    [TestCase("")]
    [TestCase("   ")]
    [TestCase("\t\n")]
    public void EmptyTextIsAPromptError(string text)
    {
        using var p = NewPredictor();
        using var state = p.SetImage(_testImage);
        p.SetTextPrompt(state, "person");
        var raw = state.RawOutput;
        var e = Assert.Throws<Sam3PromptException>(() => p.SetTextPrompt(state, text));
        Assert.That(e!.Message, Does.Contain($"'{text}'"), "the message names the value");
        Assert.That(state.TextPrompt, Is.EqualTo("person"), "the previous prompt stays");
        Assert.That(state.RawOutput, Is.SameAs(raw));
    }

    private static IEnumerable<TestCaseData> BadBoxes()
    {
        yield return new TestCaseData(BoxPrompt.NormalizedCxcywh(1.5f, 0.5f, 0.2f, 0.2f)).SetName("Box_CxAbove1");
        yield return new TestCaseData(BoxPrompt.NormalizedCxcywh(0.5f, -0.1f, 0.2f, 0.2f)).SetName("Box_CyBelow0");
        yield return new TestCaseData(BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 1.2f, 0.2f)).SetName("Box_WAbove1");
        yield return new TestCaseData(BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 0f, 0.2f)).SetName("Box_ZeroWidth");
        yield return new TestCaseData(BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 0.2f, -0.1f)).SetName("Box_NegativeHeight");
        yield return new TestCaseData(BoxPrompt.NormalizedCxcywh(float.NaN, 0.5f, 0.2f, 0.2f)).SetName("Box_NaN");
        yield return new TestCaseData(BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, float.PositiveInfinity, 0.2f)).SetName("Box_Infinity");
        yield return new TestCaseData(BoxPrompt.NormalizedCxcywh(0.5f, float.NegativeInfinity, 0.2f, 0.2f)).SetName("Box_NegativeInfinity");
        yield return new TestCaseData(new BoxPrompt(Box.FromXyxy(0.5f, 0.5f, 1.01f, 0.7f, CoordinateSpace.Normalized))).SetName("Box_NormalisedXyxyAbove1");
    }

    [TestCaseSource(nameof(BadBoxes))]
    public void BadBoxIsAPromptError(BoxPrompt box)
    {
        using var p = NewPredictor();
        using var state = p.SetImage(_testImage);
        Assert.Throws<Sam3PromptException>(() => p.AddBox(state, box));
        Assert.That(state.Boxes, Is.Empty, "a rejected box is not kept");
        Assert.That(state.RawOutput, Is.Null);
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
        using var p = NewPredictor();
        using var state = p.SetImage(_testImage);
        Assert.Throws<Sam3PromptException>(() => p.AddBox(state, BoxPrompt.Xyxy(x0, y0, x1, y1)));
        Assert.Throws<Sam3PromptException>(() => p.AddBox(state, new BoxPrompt(Box.FromXywh(x0, y0, x1 - x0, y1 - y0))));
        Assert.That(state.Boxes, Is.Empty);
    }

    [TestCase(float.NaN, 0.5f)]
    [TestCase(0.5f, float.PositiveInfinity)]
    [TestCase(1.1f, 0.5f)]
    [TestCase(0.5f, -0.01f)]
    public void BadPointIsAPromptError(float x, float y)
    {
        using var p = NewPredictor();
        using var state = p.SetImage(_testImage);
        Assert.Throws<Sam3PromptException>(() => p.AddPoint(state, PointPrompt.Normalized(x, y)));
        // The same numbers scaled to pixels of the 1280×720 image are as bad.
        Assert.Throws<Sam3PromptException>(() => p.AddPoint(state, PointPrompt.Pixel(x * 1280, y * 720)));
        Assert.That(state.Points, Is.Empty);
        Assert.That(state.RawOutput, Is.Null);
    }

    [Test]
    public void BadImagesAreArgumentOrImageErrors()
    {
        using var p = NewPredictor();
        Assert.Throws<ArgumentException>(() => p.SetImages([]));
        Assert.Throws<ArgumentNullException>(() => p.SetImages(null!));
        var e = Assert.Throws<ArgumentException>(() => p.SetImages([_testImage, null!]));
        Assert.That(e!.Message, Does.Contain("image 1"), "names the null entry");
        Assert.Throws<ArgumentNullException>(() => p.SetImage((RgbImage)null!));
        Assert.Throws<ArgumentNullException>(() => p.SetImage((string)null!));
        Assert.Throws<ArgumentException>(() => p.SetImage(" "));
        string missing = Path.Combine(Path.GetTempPath(), "no-such-image-" + Guid.NewGuid() + ".jpg");
        var ie = Assert.Throws<Sam3ImageException>(() => p.SetImage(missing));
        Assert.That(ie!.Message, Does.Contain(missing));

        // Already-normalised model inputs (internal path of the parity runner): shape and sizes are image errors.
        int s = Sam3Config.Tiny.ImageSize;
        using var ok = torch.zeros(1, 3, s, s);
        using var wrong = torch.zeros(1, 3, s, s + 1);
        Assert.Throws<Sam3ImageException>(() => Sam3ImagePredictor.SetPreprocessed(_sam, wrong, [(10, 10)]));
        Assert.Throws<Sam3ImageException>(() => Sam3ImagePredictor.SetPreprocessed(_sam, ok, [(10, 10), (10, 10)]));
        Assert.Throws<Sam3ImageException>(() => Sam3ImagePredictor.SetPreprocessed(_sam, ok, [(0, 10)]));
        using var state = Sam3ImagePredictor.SetPreprocessed(_sam, ok, [(10, 12)]);
        Assert.That(state.ImageSizes[0], Is.EqualTo((12, 10)), "(width, height)");
    }

    [Test]
    public void DisposedStateIsObjectDisposed()
    {
        using var p = NewPredictor(0.1);
        var state = p.SetImage(_testImage);
        var results = p.SetTextPrompt(state, "person");
        var copy = DeepCopy(results[0]);
        state.Dispose();
        Assert.That(state.IsDisposed, Is.True);
        Assert.That(state.RawOutput, Is.Null);
        Assert.Throws<ObjectDisposedException>(() => p.SetTextPrompt(state, "person"));
        Assert.Throws<ObjectDisposedException>(() => p.AddBox(state, BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 0.1f, 0.1f)));
        Assert.Throws<ObjectDisposedException>(() => p.AddBox(state, BoxPrompt.Xyxy(0, 0, 10, 10)));
        Assert.Throws<ObjectDisposedException>(() => p.AddPoint(state, PointPrompt.Normalized(0.5f, 0.5f)));
        Assert.Throws<ObjectDisposedException>(() => p.Predict(state));
        Assert.Throws<ObjectDisposedException>(() => p.ResetPrompts(state));
        Assert.Throws<ObjectDisposedException>(() => p.SetConfidenceThreshold(0.3, state));
        Assert.That(p.ConfidenceThreshold, Is.EqualTo(0.1), "a failed call changes nothing");
        Assert.That(state.Boxes, Is.Empty);
        Assert.That(state.Points, Is.Empty);
        Assert.DoesNotThrow(state.Dispose, "disposing twice is harmless");
        AssertUnchanged(results[0], copy, "results of a disposed state");
    }

    [Test]
    public void DisposedPredictorIsObjectDisposedAndTheStateStaysUsable()
    {
        var p = NewPredictor(0.1);
        using var state = p.SetImage(_testImage);
        var results = p.SetTextPrompt(state, _promptA);
        var expected = Snap(results, state, 0);
        p.Dispose();
        Assert.That(p.CachedTextPrompts, Is.EqualTo(0), "the text cache is freed");
        Assert.Throws<ObjectDisposedException>(() => p.SetImage(_testImage));
        Assert.Throws<ObjectDisposedException>(() => p.SetImage(_testImagePath));
        Assert.Throws<ObjectDisposedException>(() => p.SetImages([_testImage]));
        Assert.Throws<ObjectDisposedException>(() => p.SetTextPrompt(state, "person"));
        Assert.Throws<ObjectDisposedException>(() => p.AddBox(state, BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 0.1f, 0.1f)));
        Assert.Throws<ObjectDisposedException>(() => p.AddPoint(state, PointPrompt.Normalized(0.5f, 0.5f)));
        Assert.Throws<ObjectDisposedException>(() => p.Predict(state));
        Assert.Throws<ObjectDisposedException>(() => p.SetConfidenceThreshold(0.3, state));
        Assert.Throws<ObjectDisposedException>(() => p.SetConfidenceThreshold(0.3));
        Assert.Throws<ObjectDisposedException>(() => p.ResetPrompts(state));
        Assert.DoesNotThrow(p.Dispose);
        // The state belongs to the model, not the predictor: another predictor of the same model continues on it.
        Assert.That(state.TextPrompt, Is.EqualTo(_promptA));
        using var q = NewPredictor(0.1);
        AssertSame(Snap(q.Predict(state), state, 0), expected, 1e-6, "another predictor on the same state");
    }

    [Test]
    public void DisposedModelIsObjectDisposedAndResultsStayReadable()
    {
        var model = Sam3Model.Load(TinyWeights.Path, new Sam3ModelOptions { Config = Sam3Config.Tiny, TokenizerPath = Vocab });
        Assert.That(model.IsDisposed, Is.False);
        Assert.That(model.CheckpointPath, Is.EqualTo(Path.GetFullPath(TinyWeights.Path)));
        var p = model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = 0 });
        var interactive = model.CreateInteractivePredictor();
        var state = p.SetImage(_testImage);
        var results = p.SetTextPrompt(state, "person");
        Assert.That(results[0].Count, Is.EqualTo(Sam3Config.Tiny.Decoder.NumQueries), "threshold 0 keeps every query");
        var copy = DeepCopy(results[0]);

        model.Dispose();
        Assert.That(model.IsDisposed, Is.True);
        Assert.Throws<ObjectDisposedException>(() => model.CreateImagePredictor());
        Assert.Throws<ObjectDisposedException>(() => model.CreateInteractivePredictor());
        Assert.Throws<ObjectDisposedException>(() => model.Record());
        Assert.Throws<ObjectDisposedException>(() => p.SetImage(_testImage));
        Assert.Throws<ObjectDisposedException>(() => p.SetTextPrompt(state, "person"));
        Assert.Throws<ObjectDisposedException>(() => p.Predict(state));
        Assert.Throws<ObjectDisposedException>(() => p.SetConfidenceThreshold(0.3, state));
        Assert.Throws<ObjectDisposedException>(() => interactive.SetImage(_testImage));
        Assert.Throws<ObjectDisposedException>(() => interactive.Predict(state, InteractivePrompt.FromPoints(PointPrompt.Pixel(10, 10))));
        AssertUnchanged(results[0], copy, "results of a disposed model");
        Assert.DoesNotThrow(state.Dispose);
        Assert.DoesNotThrow(p.Dispose);
        Assert.DoesNotThrow(model.Dispose, "disposing twice is harmless");
    }

    [Test]
    public void AStateFromAnotherModelIsRefused()
    {
        using var other = Sam3Model.CreateUntrained(Sam3Config.Tiny, Vocab);
        using var otherPredictor = other.CreateImagePredictor();
        using var theirs = otherPredictor.SetImage(_testImage);
        using var p = NewPredictor(0.1);
        var calls = new (string Name, Action Call)[]
        {
            ("SetTextPrompt", () => p.SetTextPrompt(theirs, "person")),
            ("AddBox", () => p.AddBox(theirs, BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 0.2f, 0.2f))),
            ("AddPoint", () => p.AddPoint(theirs, PointPrompt.Normalized(0.5f, 0.5f))),
            ("Predict", () => p.Predict(theirs)),
            ("ResetPrompts", () => p.ResetPrompts(theirs)),
            ("SetConfidenceThreshold", () => p.SetConfidenceThreshold(0.3, theirs)),
            ("interactive Predict", () => _sam.CreateInteractivePredictor().Predict(theirs, InteractivePrompt.FromPoints(PointPrompt.Pixel(10, 10)))),
            ("interactive PredictBoxes", () => _sam.CreateInteractivePredictor().PredictBoxes(theirs, [Box.FromXyxy(0, 0, 10, 10)])),
        };
        foreach (var (name, call) in calls)
        {
            var e = Assert.Throws<ArgumentException>(call, name);
            Assert.That(e!.ParamName, Is.EqualTo("state"), name);
        }
        Assert.That(p.ConfidenceThreshold, Is.EqualTo(0.1), "a refused call changes nothing");
        Assert.That((theirs.TextPrompt, theirs.Boxes.Count, theirs.Points.Count), Is.EqualTo(((string?)null, 0, 0)));
        // The state still works with its own model.
        Assert.That(otherPredictor.SetTextPrompt(theirs, "person"), Has.Count.EqualTo(1));
    }

    [TestCase(-0.1)]
    [TestCase(1.1)]
    [TestCase(double.NaN)]
    [TestCase(double.PositiveInfinity)]
    public void ThresholdOutsideUnitIntervalIsAnArgumentError(double t)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => _sam.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = t }));
        using var p = NewPredictor(0.4);
        using var state = p.SetImage(_testImage);
        p.SetTextPrompt(state, "person");
        var raw = state.RawOutput;
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => p.SetConfidenceThreshold(t));
        Assert.That(e!.ActualValue, Is.EqualTo(t), "the exception carries the offending value");
        Assert.Throws<ArgumentOutOfRangeException>(() => p.SetConfidenceThreshold(t, state));
        Assert.That(p.ConfidenceThreshold, Is.EqualTo(0.4));
        Assert.That(state.RawOutput, Is.SameAs(raw));
    }

    [TestCase(0)]
    [TestCase(-3)]
    public void TextCacheCapacityBelowOneIsAnArgumentError(int capacity)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => _sam.CreateImagePredictor(new ImagePredictorOptions { TextCacheCapacity = capacity }));
        Assert.That(e!.ActualValue, Is.EqualTo(capacity));
    }

    [Test]
    public void PixelPromptsOnABatchOfDifferentSizesAreRefused()
    {
        using var p = NewPredictor();
        using var state = p.SetImages([_groceries, _testImage]);
        Assert.Throws<Sam3PromptException>(() => p.AddBox(state, BoxPrompt.Xyxy(10, 10, 100, 100)));
        Assert.Throws<Sam3PromptException>(() => p.AddBox(state, new BoxPrompt(Box.FromXywh(10, 10, 90, 90))));
        Assert.Throws<Sam3PromptException>(() => p.AddPoint(state, PointPrompt.Pixel(10, 10)));
        Assert.That(state.Boxes, Is.Empty);
        Assert.That(state.Points, Is.Empty);
        // Normalised prompts are fine on such a batch.
        Assert.That(p.AddBox(state, BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 0.2f, 0.2f)), Has.Count.EqualTo(2));
        Assert.That(p.AddPoint(state, PointPrompt.Normalized(0.5f, 0.5f)), Has.Count.EqualTo(2));
    }

    [Test]
    public void BadInputLeavesThePredictorWorking()
    {
        using var p = NewPredictor(0.1);
        using var state = p.SetImage(_testImage);
        var expected = SingleRun(_testImage, _promptA, 0.1);
        var attempts = new (Type Expected, Action Call)[]
        {
            (typeof(Sam3PromptException), () => p.SetTextPrompt(state, " ")),
            (typeof(Sam3PromptException), () => p.AddBox(state, BoxPrompt.NormalizedCxcywh(float.NaN, 0, 0, 0))),
            (typeof(Sam3PromptException), () => p.AddPoint(state, PointPrompt.Normalized(2, 2))),
            (typeof(Sam3PromptException), () => p.AddBox(state, BoxPrompt.Xyxy(5, 5, 1, 1))),
            (typeof(ArgumentOutOfRangeException), () => p.SetConfidenceThreshold(2, state)),
            (typeof(Sam3PromptException), () => p.Predict(state)),
            (typeof(ArgumentException), () => p.SetImages([])),
            (typeof(ArgumentNullException), () => p.SetTextPrompt(state, null!)),
        };
        foreach (var (type, call) in attempts) Assert.Throws(type, call);
        AssertSame(Snap(p.SetTextPrompt(state, _promptA), state, 0), expected, 1e-6, "after the bad calls");
    }

    // ------------------------------------------------------------------ 3. memory

    [Test, Category("Slow")]
    public void ThousandPromptCallsKeepMemoryFlat()
    {
        // test_image at a quarter of its size (320×180) keeps the per-call upsampling of the masks cheap; leaks of any
        // kind still show in the live-tensor count.
        using var p = NewPredictor(0.2);
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
                    if (k % 2 == 0) p.AddBox(state, BoxPrompt.NormalizedCxcywh(0.3f + 0.1f * (k % 4), 0.5f, 0.2f, 0.3f, k % 4 == 0));
                    else p.AddPoint(state, PointPrompt.Normalized(0.5f, 0.2f + 0.1f * (k % 5), k % 3 != 0));
                    break;
                case 4: p.SetConfidenceThreshold(thresholds[(k + 1) % thresholds.Length], state); break;
                case 0: p.ResetPrompts(state); break;
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

    private static (long Live, long Rss) Measure() => MemoryProbe.Measure();

    // ------------------------------------------------------------------ 4. cancellation

    [Test]
    public void CancelledTokenBeforeSetImageThrowsAndChangesNothing()
    {
        using var p = NewPredictor(0.1);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Assert.Throws<OperationCanceledException>(() => p.SetImage(_testImage, cts.Token));
        Assert.Throws<OperationCanceledException>(() => p.SetImage(_testImagePath, cts.Token));
        Assert.Throws<OperationCanceledException>(() => p.SetImages([_testImage, _groceries], cts.Token));
        using (var x = torch.zeros(1, 3, Sam3Config.Tiny.ImageSize, Sam3Config.Tiny.ImageSize))
            Assert.Throws<OperationCanceledException>(() => Sam3ImagePredictor.SetPreprocessed(_sam, x, [(10, 10)], cts.Token));
        Assert.That(DisposeScopeManager.Statistics.ThreadTotalLiveCount, Is.EqualTo(live), "no tensors left behind");
        using var state = p.SetImage(_testImage);
        AssertSame(Snap(p.SetTextPrompt(state, _promptA), state, 0), SingleRun(_testImage, _promptA, 0.1), 1e-6, "after cancellation");
    }

    [Test]
    public void CancelledTokenBeforePredictThrowsAndLeavesTheStateUsable()
    {
        using var p = NewPredictor(0.1);
        using var state = p.SetImage(_testImage);
        var results = p.SetTextPrompt(state, _promptA);
        var copy = DeepCopy(results[0]);
        var raw = state.RawOutput;
        var before = Snap(results, state, 0);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.Throws<OperationCanceledException>(() => p.Predict(state, cancellationToken: cts.Token));
        Assert.Throws<OperationCanceledException>(() => p.SetTextPrompt(state, "car", cancellationToken: cts.Token));
        Assert.Throws<OperationCanceledException>(() => p.AddBox(state, BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 0.2f, 0.2f), cancellationToken: cts.Token));
        Assert.Throws<OperationCanceledException>(() => p.AddPoint(state, PointPrompt.Normalized(0.5f, 0.5f), cancellationToken: cts.Token));
        // Nothing changed: prompts, raw outputs, and the results already returned.
        Assert.That(state.TextPrompt, Is.EqualTo(_promptA));
        Assert.That(state.Boxes, Is.Empty);
        Assert.That(state.Points, Is.Empty);
        Assert.That(state.RawOutput, Is.SameAs(raw));
        AssertUnchanged(results[0], copy, "results after the cancelled calls");
        // Re-filtering the kept raw outputs gives the same detections, exactly.
        var refiltered = p.SetConfidenceThreshold(0.1, state)!;
        AssertSame(Snap(refiltered, state, 0), before, 0, "raw outputs after the cancelled calls");
        AssertUnchanged(refiltered[0], copy, "re-filtered results");
        // And it still works.
        p.AddBox(state, BoxPrompt.NormalizedCxcywh(0.5f, 0.5f, 0.2f, 0.2f));
        Assert.That(state.Boxes, Has.Count.EqualTo(1));
        p.ResetPrompts(state);
        AssertSame(Snap(p.SetTextPrompt(state, _promptA), state, 0), before, 1e-6, "after cancellation");
    }
}
