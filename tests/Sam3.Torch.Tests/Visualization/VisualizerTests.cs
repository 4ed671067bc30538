using NUnit.Framework;
using Sam3.Torch.IO;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Visualization;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Visualization;

[TestFixture, Category("Fast")]
public class VisualizerTests
{
    private const int W = 64, H = 48;

    // ------------------------------------------------------------------------------------------------ helpers

    private static RgbImage Noise(int seed = 1, int w = W, int h = H)
    {
        var rng = new Random(seed);
        var data = new byte[w * h * 3];
        rng.NextBytes(data);
        return new RgbImage(w, h, data);
    }

    private static BinaryMask RectMask(int x0, int y0, int x1, int y1, int w = W, int h = H)
    {
        var m = new bool[h, w];
        for (int y = y0; y <= y1; y++)
            for (int x = x0; x <= x1; x++) m[y, x] = true;
        return BinaryMask.FromArray(m);
    }

    private static (byte R, byte G, byte B) Px(RgbImage im, int x, int y) => im[x, y];

    private static (byte R, byte G, byte B) C(RgbColor c) => (c.R, c.G, c.B);

    /// <summary>The alpha-blend formula in doubles: (1 − α)·p + α·c.</summary>
    private static double Blend(double p, double c, double a) => (1 - a) * p + a * c;

    private static void AssertClose((byte R, byte G, byte B) actual, double r, double g, double b, int tol, string what)
    {
        Assert.That(Math.Abs(actual.R - r), Is.LessThanOrEqualTo(tol), $"{what}: R {actual.R} vs {r}");
        Assert.That(Math.Abs(actual.G - g), Is.LessThanOrEqualTo(tol), $"{what}: G {actual.G} vs {g}");
        Assert.That(Math.Abs(actual.B - b), Is.LessThanOrEqualTo(tol), $"{what}: B {actual.B} vs {b}");
    }

    // ------------------------------------------------------------------------------------------------ masks

    [TestCase(0.5)]
    [TestCase(0.3)]
    [TestCase(1.0)]
    public void MaskOverlayFollowsTheBlendFormula(double alpha)
    {
        var image = Noise();
        var before = (byte[])image.Data.Clone();
        var m0 = RectMask(5, 5, 30, 20);
        var m1 = RectMask(20, 15, 50, 40); // overlaps m0 on x 20..30, y 15..20
        var options = new PlotOptions { MaskAlpha = alpha };
        var result = Visualizer.OverlayMasks(image, [m0, m1], options);

        Assert.That(image.Data, Is.EqualTo(before), "the input image is not modified");
        Assert.That(result.Width, Is.EqualTo(W));
        Assert.That(result.Height, Is.EqualTo(H));
        var c0 = Palette.At(0);
        var c1 = Palette.At(1);
        int exact = 0, total = 0;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
            {
                var p = Px(image, x, y);
                var q = Px(result, x, y);
                bool in0 = m0[x, y], in1 = m1[x, y];
                double r = p.R, g = p.G, b = p.B;
                if (in0) (r, g, b) = (Blend(r, c0.R, alpha), Blend(g, c0.G, alpha), Blend(b, c0.B, alpha));
                // A later mask blends over the earlier result (which was stored as bytes).
                if (in0 && in1) (r, g, b) = (Math.Round(r, MidpointRounding.AwayFromZero), Math.Round(g, MidpointRounding.AwayFromZero), Math.Round(b, MidpointRounding.AwayFromZero));
                if (in1) (r, g, b) = (Blend(r, c1.R, alpha), Blend(g, c1.G, alpha), Blend(b, c1.B, alpha));
                if (!in0 && !in1)
                {
                    Assert.That(q, Is.EqualTo(p), $"pixel ({x},{y}) outside every mask is unchanged");
                    continue;
                }
                AssertClose(q, r, g, b, 1, $"pixel ({x},{y})");
                total++;
                if (Math.Abs(q.R - r) <= 0.5 && Math.Abs(q.G - g) <= 0.5 && Math.Abs(q.B - b) <= 0.5) exact++;
            }
        TestContext.Out.WriteLine($"alpha {alpha}: {exact} of {total} masked pixels round to nearest exactly");
        Assert.That(exact, Is.EqualTo(total), "the blend rounds to nearest");
        if (alpha == 1.0) Assert.That(Px(result, 40, 30), Is.EqualTo(C(c1)));
    }

    [Test]
    public void TensorMasksMatchArrayMasks()
    {
        var image = Noise(2);
        var m0 = RectMask(1, 2, 10, 30);
        var m1 = RectMask(40, 0, 63, 47);
        var fromArrays = Visualizer.OverlayMasks(image, [m0, m1]);
        using var scope = NewDisposeScope();
        var t = stack([tensor(m0.Data, new long[] { H, W }), tensor(m1.Data, new long[] { H, W })]).to(ScalarType.Bool);
        Assert.That(Visualizer.OverlayMasks(image, t).Data, Is.EqualTo(fromArrays.Data), "bool [N,H,W]");
        Assert.That(Visualizer.OverlayMasks(image, t.unsqueeze(1)).Data, Is.EqualTo(fromArrays.Data), "bool [N,1,H,W]");
        // Probabilities are thresholded at 0.5 (the reference's render_masklet_frame).
        var probs = t.to(ScalarType.Float32) * 0.4f + 0.3f; // 0.3 outside, 0.7 inside
        Assert.That(Visualizer.OverlayMasks(image, probs).Data, Is.EqualTo(fromArrays.Data), "float [N,H,W] > 0.5");
        var fromRle = BinaryMask.FromRle(CocoRle.Encode(m0.Data, H, W));
        Assert.That(fromRle.Data, Is.EqualTo(m0.Data));
    }

    [Test]
    public void ContourPaintsTheMaskBoundary()
    {
        var image = Noise(3);
        var mask = RectMask(10, 10, 40, 30);
        var result = Visualizer.OverlayMasks(image, [mask], new PlotOptions { ContourThickness = 1 });
        var color = C(Palette.At(0));
        foreach (var (x, y) in new[] { (10, 10), (25, 10), (40, 30), (10, 20), (40, 15), (25, 30) })
            Assert.That(Px(result, x, y), Is.EqualTo(color), $"boundary pixel ({x},{y})");
        var p = Px(image, 25, 20);
        var c = Palette.At(0);
        AssertClose(Px(result, 25, 20), Blend(p.R, c.R, 0.5), Blend(p.G, c.G, 0.5), Blend(p.B, c.B, 0.5), 1, "interior");
        Assert.That(Px(result, 5, 5), Is.EqualTo(Px(image, 5, 5)), "far outside");
    }

    [Test]
    public void MaskSizeMismatchThrows()
    {
        var image = Noise();
        var small = RectMask(0, 0, 3, 3, w: 10, h: 10);
        var ex = Assert.Throws<Sam3ImageException>(() => Visualizer.OverlayMasks(image, [small]));
        TestContext.Out.WriteLine(ex!.Message);
        Assert.Throws<Sam3ImageException>(() => Plot.Results(image, [small]));
        using var scope = NewDisposeScope();
        Assert.Throws<Sam3ImageException>(() => Visualizer.OverlayMasks(image, zeros(new long[] { 2, H + 1, W }, dtype: ScalarType.Bool)));
        Assert.Throws<Sam3Exception>(() => Visualizer.OverlayMasks(image, zeros(new long[] { H, W }, dtype: ScalarType.Bool)), "2-D tensor is not a batch");
        Assert.Throws<Sam3Exception>(() => BinaryMask.FromBytes(new byte[10], 3, 3));
    }

    // ------------------------------------------------------------------------------------------------ boxes

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    public void BoxBorderHasTheBoxColourAndNothingElseChanges(int thickness)
    {
        var image = Noise(4);
        float[] boxes = [10.3f, 5.7f, 30.9f, 25.2f, 45f, 30f, 55f, 44f];
        var result = Visualizer.DrawBoxes(image, boxes, new PlotOptions { BoxThickness = thickness });
        // Box 0 covers integer corners (10,5)..(30,25) inclusive: floor of each coordinate.
        var boxesInt = new[] { (X0: 10, Y0: 5, X1: 30, Y1: 25), (X0: 45, Y0: 30, X1: 55, Y1: 44) };
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
            {
                int owner = -1;
                for (int i = 0; i < 2; i++)
                {
                    var b = boxesInt[i];
                    bool inside = x >= b.X0 && x <= b.X1 && y >= b.Y0 && y <= b.Y1;
                    bool interior = x >= b.X0 + thickness && x <= b.X1 - thickness && y >= b.Y0 + thickness && y <= b.Y1 - thickness;
                    if (inside && !interior) owner = i;
                }
                if (owner >= 0) Assert.That(Px(result, x, y), Is.EqualTo(C(Palette.At(owner))), $"border pixel ({x},{y}) of box {owner}");
                else Assert.That(Px(result, x, y), Is.EqualTo(Px(image, x, y)), $"pixel ({x},{y}) off every border is unchanged");
            }
    }

    [Test]
    public void BoxesAreClippedAndCheckedAndAcceptTensors()
    {
        var image = Noise(5);
        // Partly outside: left and top edges lie outside the image and are not drawn; right/bottom are.
        var result = Visualizer.DrawBoxes(image, [-20f, -10f, 20f, 15f], new PlotOptions { BoxThickness = 1 });
        var c = C(Palette.At(0));
        Assert.That(Px(result, 20, 0), Is.EqualTo(c));
        Assert.That(Px(result, 0, 15), Is.EqualTo(c));
        Assert.That(Px(result, 0, 0), Is.EqualTo(Px(image, 0, 0)), "the clipped-away top-left edges are not drawn at the border");
        // Entirely outside: nothing changes.
        Assert.That(Visualizer.DrawBoxes(image, [100f, 100f, 200f, 200f]).Data, Is.EqualTo(image.Data));
        // Corners in any order.
        Assert.That(Visualizer.DrawBoxes(image, [30f, 25f, 10f, 5f]).Data, Is.EqualTo(Visualizer.DrawBoxes(image, [10f, 5f, 30f, 25f]).Data));
        Assert.Throws<Sam3Exception>(() => Visualizer.DrawBoxes(image, [1f, 2f, float.NaN, 4f]));
        Assert.Throws<Sam3Exception>(() => Visualizer.DrawBoxes(image, [1f, 2f, 3f]));
        Assert.Throws<Sam3Exception>(() => Visualizer.DrawBoxes(image, [1f, 2f, 3f, 4f], new PlotOptions { BoxThickness = 0 }));
        using var scope = NewDisposeScope();
        float[] flat = [10.3f, 5.7f, 30.9f, 25.2f, 45f, 30f, 55f, 44f];
        Assert.That(Visualizer.DrawBoxes(image, tensor(flat, new long[] { 2, 4 })).Data, Is.EqualTo(Visualizer.DrawBoxes(image, flat).Data));
        Assert.Throws<Sam3Exception>(() => Visualizer.DrawBoxes(image, zeros(2, 3)));
    }

    // ------------------------------------------------------------------------------------------------ points

    [Test]
    public void PointsAreGreenAndRedStars()
    {
        var image = Noise(6);
        var options = new PlotOptions { MarkerRadius = 8 };
        float[] xy = [15f, 20f, 45f, 25f, 30f, 40f];
        int[] labels = [1, 0, 2]; // 2 is neither positive nor negative: not drawn, as in the reference
        var result = Visualizer.DrawPoints(image, xy, labels, options);
        Assert.That(Px(result, 15, 20), Is.EqualTo(C(RgbColor.Green)), "positive point centre");
        Assert.That(Px(result, 45, 25), Is.EqualTo(C(RgbColor.Red)), "negative point centre");
        Assert.That(Px(result, 30, 40), Is.EqualTo(Px(image, 30, 40)), "label 2 is not drawn");
        // Nothing farther than the marker radius + outline + antialiasing from a drawn point changes.
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
            {
                double d0 = Math.Sqrt((x - 15.0) * (x - 15.0) + (y - 20.0) * (y - 20.0));
                double d1 = Math.Sqrt((x - 45.0) * (x - 45.0) + (y - 25.0) * (y - 25.0));
                if (Math.Min(d0, d1) > options.MarkerRadius + 2)
                    Assert.That(Px(result, x, y), Is.EqualTo(Px(image, x, y)), $"pixel ({x},{y})");
            }
        // The outline is white: on a black image only the outline can make near-white pixels.
        var black = new RgbImage(W, H, new byte[W * H * 3]);
        bool NearWhite(RgbImage im) => Enumerable.Range(0, W * H).Any(i => Math.Min(im.Data[3 * i], Math.Min(im.Data[3 * i + 1], im.Data[3 * i + 2])) >= 150);
        Assert.That(NearWhite(Visualizer.DrawPoints(black, xy, labels, options)), Is.True, "white outline");
        Assert.That(NearWhite(Visualizer.DrawPoints(black, xy, labels, options with { MarkerEdgeThickness = 0 })), Is.False, "no outline");

        using var scope = NewDisposeScope();
        var fromTensors = Visualizer.DrawPoints(image, tensor(xy, new long[] { 3, 2 }), tensor(new long[] { 1, 0, 2 }), options);
        Assert.That(fromTensors.Data, Is.EqualTo(result.Data));
        Assert.Throws<Sam3Exception>(() => Visualizer.DrawPoints(image, xy, [1, 0], options));
        Assert.Throws<Sam3Exception>(() => Visualizer.DrawPoints(image, [1f, 2f, 3f], [1], options));
        Assert.Throws<Sam3Exception>(() => Visualizer.DrawPoints(image, [float.PositiveInfinity, 2f], [1], options));
    }

    // ------------------------------------------------------------------------------------------------ labels

    [Test]
    public void LabelsStayOnAPanelNearTheBox()
    {
        var image = Noise(7, 600, 120);
        float[] boxes = [60f, 50f, 150f, 110f, 400f, 0f, 480f, 40f];
        var result = Visualizer.DrawLabels(image, boxes, ["(id=0, prob=0.26)", "(id=1, prob=0.19)"]);
        int changedAbove = 0, changedFar = 0, changedInsideTop = 0;
        for (int y = 0; y < 120; y++)
            for (int x = 0; x < 600; x++)
            {
                if (Px(result, x, y) == Px(image, x, y)) continue;
                // Box 0 has room above: its panel lies just above row 50, from column 60 on.
                if (y < 50 && y >= 20 && x >= 60 && x < 320) changedAbove++;
                // Box 1 touches the top: its panel goes inside the box, just under the top edge, from column 400 on.
                else if (y <= 35 && x >= 400) changedInsideTop++;
                else changedFar++;
            }
        // The panel is a white blend at α = 0.75: its corner pixel equals the formula (±1).
        var p = Px(image, 60, 49);
        AssertClose(Px(result, 60, 49), Blend(p.R, 255, 0.75), Blend(p.G, 255, 0.75), Blend(p.B, 255, 0.75), 1, "panel corner");
        Assert.Throws<Sam3Exception>(() => Visualizer.DrawLabels(image, boxes, ["only one"]));
    }

    // ------------------------------------------------------------------------------------------------ Plot.Results

    [Test]
    public void ResultsOnTheFixture()
    {
        string imagePath = SharedData.Parity("inputs", "test_image.jpg");
        using var file = SafetensorsFile.Open(SharedData.Parity("tiny", "a_image_text.safetensors"));
        using var scope = NewDisposeScope();
        var image = ImageLoader.Load(imagePath);
        var masks = file.Load("output.masks");   // bool [K,1,H,W]
        var boxes = file.Load("output.boxes");   // [K,4] xyxy pixels
        var scores = file.Load("output.scores"); // [K]
        var plotted = Plot.Results(image, masks, boxes, scores);
        Assert.That(plotted.Width, Is.EqualTo(image.Width));
        Assert.That(plotted.Height, Is.EqualTo(image.Height));

        // Without labels: a pixel that is in no mask and on no box border is unchanged; a masked pixel off the borders
        // is the blend of the masks over it.
        var noLabels = Plot.Results(image, masks, boxes, scores, new PlotOptions { ShowLabels = false });
        var binary = BinaryMask.FromTensorBatch(masks);
        float[] b = boxes.contiguous().data<float>().ToArray();
        var rng = new Random(11);
        int checkedOutside = 0, checkedInside = 0;
        for (int trial = 0; trial < 20000; trial++)
        {
            int x = rng.Next(image.Width), y = rng.Next(image.Height);
            bool onBorder = false;
            for (int i = 0; i < binary.Length; i++)
            {
                int x0 = (int)Math.Floor(Math.Min(b[4 * i], b[4 * i + 2])), x1 = (int)Math.Floor(Math.Max(b[4 * i], b[4 * i + 2]));
                int y0 = (int)Math.Floor(Math.Min(b[4 * i + 1], b[4 * i + 3])), y1 = (int)Math.Floor(Math.Max(b[4 * i + 1], b[4 * i + 3]));
                bool inside = x >= x0 && x <= x1 && y >= y0 && y <= y1;
                bool interior = x >= x0 + 2 && x <= x1 - 2 && y >= y0 + 2 && y <= y1 - 2;
                onBorder |= inside && !interior;
            }
            if (onBorder) continue;
            var p = Px(image, x, y);
            double r = p.R, g = p.G, bl = p.B;
            bool any = false;
            for (int i = 0; i < binary.Length; i++)
            {
                if (!binary[i][x, y]) continue;
                if (any) (r, g, bl) = (Math.Round(r, MidpointRounding.AwayFromZero), Math.Round(g, MidpointRounding.AwayFromZero), Math.Round(bl, MidpointRounding.AwayFromZero));
                var c = Palette.At(i);
                (r, g, bl) = (Blend(r, c.R, 0.5), Blend(g, c.G, 0.5), Blend(bl, c.B, 0.5));
                any = true;
            }
            if (any) { AssertClose(Px(noLabels, x, y), r, g, bl, 1, $"masked pixel ({x},{y})"); checkedInside++; }
            else { Assert.That(Px(noLabels, x, y), Is.EqualTo(p), $"pixel ({x},{y})"); checkedOutside++; }
        }
        TestContext.Out.WriteLine($"checked {checkedInside} masked and {checkedOutside} unmasked pixels; boxes [{string.Join(", ", b.Select(v => v.ToString("F1")))}], scores [{string.Join(", ", scores.data<float>().ToArray().Select(v => v.ToString("F3")))}]");
        Assert.That(checkedInside, Is.GreaterThan(100));
        Assert.That(checkedOutside, Is.GreaterThan(100));
        // Labels only add pixels near the boxes' top-left corners.
        int differ = 0;
        for (int i = 0; i < plotted.Data.Length; i++) if (plotted.Data[i] != noLabels.Data[i]) differ++;
        Assert.That(differ, Is.GreaterThan(0), "labels were drawn");

        // Array entry point agrees with the tensor one.
        var fromArrays = Plot.Results(image, binary, b, scores.data<float>().ToArray());
        Assert.That(fromArrays.Data.AsSpan().SequenceEqual(plotted.Data), Is.True);

        // For a human look: SAM3_OVERLAY_OUT=/path.png writes the rendering there (replacing an older rendering).
        string? outPath = Environment.GetEnvironmentVariable("SAM3_OVERLAY_OUT");
        if (!string.IsNullOrEmpty(outPath)) ImageWriter.Save(plotted, outPath, overwrite: true);
    }

    [Test]
    public void ResultsChecksCounts()
    {
        var image = Noise();
        var m = RectMask(1, 1, 5, 5);
        Assert.Throws<Sam3Exception>(() => Plot.Results(image, [m, m], [1f, 1f, 5f, 5f]));
        Assert.Throws<Sam3Exception>(() => Plot.Results(image, [m], [1f, 1f, 5f, 5f], [0.5f, 0.2f]));
        Assert.Throws<Sam3Exception>(() => Plot.Results(image, [m], options: new PlotOptions { MaskAlpha = 1.5 }));
        // Masks only, no boxes: labels go to the mask's bounding box; the result still differs from the image.
        var r = Plot.Results(image, [m], null, [0.9f]);
        Assert.That(r.Data, Is.Not.EqualTo(image.Data));
        Assert.That(PlotOptions.DefaultLabel(3, 0.2604f), Is.EqualTo("(id=3, prob=0.26)"));
        Assert.That(PlotOptions.DefaultLabel(3, null), Is.EqualTo("(id=3)"));
    }

    // ------------------------------------------------------------------------------------------------ saving

    [Test]
    public void SavingRefusesToOverwriteAndRoundTrips()
    {
        string dir = Path.Combine(Path.GetTempPath(), "sam3-viz-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var image = Noise(8);
            string png = Path.Combine(dir, "out.png");
            ImageWriter.Save(image, png);
            var loaded = ImageLoader.Load(png);
            Assert.That(loaded.Data, Is.EqualTo(image.Data), "PNG is lossless");

            byte[] original = File.ReadAllBytes(png);
            var other = Noise(9);
            var ex = Assert.Throws<Sam3Exception>(() => ImageWriter.Save(other, png));
            TestContext.Out.WriteLine(ex!.Message);
            Assert.That(File.ReadAllBytes(png), Is.EqualTo(original), "the existing file is untouched");
            ImageWriter.Save(other, png, overwrite: true);
            Assert.That(ImageLoader.Load(png).Data, Is.EqualTo(other.Data), "overwrite: true replaces it");

            // JPEG (lossy; chroma subsampling would wreck pure noise, so a smooth gradient is used).
            var smoothData = new byte[W * H * 3];
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++)
                {
                    int i = 3 * (y * W + x);
                    (smoothData[i], smoothData[i + 1], smoothData[i + 2]) = ((byte)(x * 4), (byte)(y * 5), (byte)(128 + x - y));
                }
            var smooth = new RgbImage(W, H, smoothData);
            string jpg = Path.Combine(dir, "out.JPEG");
            ImageWriter.Save(smooth, jpg, jpegQuality: 95);
            var j = ImageLoader.Load(jpg);
            double meanAbs = j.Data.Zip(smooth.Data, (a, b) => Math.Abs(a - b)).Average();
            TestContext.Out.WriteLine($"JPEG q95 mean |diff| on a gradient: {meanAbs:F2}");
            Assert.That(File.ReadAllBytes(jpg).Take(2), Is.EqualTo(new byte[] { 0xFF, 0xD8 }), "JPEG magic");
            Assert.That(meanAbs, Is.LessThan(3), "channel order kept (a swap would differ by tens of levels)");

            Assert.That(ImageLoader.Decode(ImageWriter.EncodePng(image)).Data, Is.EqualTo(image.Data));
            Assert.That(ImageWriter.EncodePng(image).Take(4), Is.EqualTo(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }));

            Assert.Throws<Sam3Exception>(() => ImageWriter.Save(image, Path.Combine(dir, "out.gif")));
            Assert.Throws<Sam3Exception>(() => ImageWriter.Save(image, Path.Combine(dir, "missing", "out.png")));
            Assert.Throws<Sam3Exception>(() => ImageWriter.Save(image, ""));
            Assert.Throws<Sam3Exception>(() => ImageWriter.EncodeJpeg(image, 0));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
