using NUnit.Framework;

namespace Sam3.Torch.Tests.Processing;

/// <summary>
/// The one prompt vocabulary (<see cref="Box"/>, <see cref="PointPrompt"/>, <see cref="BoxPrompt"/>): format conversions
/// checked against the formulas of the reference's <c>sam3/model/box_ops.py</c> (box_cxcywh_to_xyxy, box_cxcywh_to_xywh,
/// box_xywh_to_xyxy, box_xywh_to_cxcywh, box_xyxy_to_xywh, box_xyxy_to_cxcywh), written out here in double; space
/// conversions against x·W, y·H (and x/W, y/H). Every conversion of one step is a single float32 operation per number
/// (a sum or difference of exact terms, a product, a quotient), so the float result must be the double result rounded
/// once to float — exactly. Composite conversions (space then format) are checked to a few float ulps.
/// </summary>
[TestFixture, Category("Fast")]
public class BoxConversionTests
{
    // ------------------------------------------------------------------ reference formulas (box_ops.py), in double

    private static double[] RefCxcywhToXyxy(double[] b) => [b[0] - 0.5 * b[2], b[1] - 0.5 * b[3], b[0] + 0.5 * b[2], b[1] + 0.5 * b[3]];
    private static double[] RefCxcywhToXywh(double[] b) => [b[0] - 0.5 * b[2], b[1] - 0.5 * b[3], b[2], b[3]];
    private static double[] RefXywhToXyxy(double[] b) => [b[0], b[1], b[0] + b[2], b[1] + b[3]];
    private static double[] RefXywhToCxcywh(double[] b) => [b[0] + 0.5 * b[2], b[1] + 0.5 * b[3], b[2], b[3]];
    private static double[] RefXyxyToXywh(double[] b) => [b[0], b[1], b[2] - b[0], b[3] - b[1]];
    private static double[] RefXyxyToCxcywh(double[] b) => [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]];

    private static double[] RefConvert(double[] b, BoxFormat from, BoxFormat to) => (from, to) switch
    {
        _ when from == to => b,
        (BoxFormat.Cxcywh, BoxFormat.Xyxy) => RefCxcywhToXyxy(b),
        (BoxFormat.Cxcywh, BoxFormat.Xywh) => RefCxcywhToXywh(b),
        (BoxFormat.Xywh, BoxFormat.Xyxy) => RefXywhToXyxy(b),
        (BoxFormat.Xywh, BoxFormat.Cxcywh) => RefXywhToCxcywh(b),
        (BoxFormat.Xyxy, BoxFormat.Xywh) => RefXyxyToXywh(b),
        (BoxFormat.Xyxy, BoxFormat.Cxcywh) => RefXyxyToCxcywh(b),
        _ => throw new ArgumentOutOfRangeException(nameof(to)),
    };

    private static Box Make(float[] v, BoxFormat format, CoordinateSpace space) => format switch
    {
        BoxFormat.Xyxy => Box.FromXyxy(v[0], v[1], v[2], v[3], space),
        BoxFormat.Xywh => Box.FromXywh(v[0], v[1], v[2], v[3], space),
        _ => Box.FromCxcywh(v[0], v[1], v[2], v[3], space),
    };

    private static float[] Numbers(Box b) => [b.A, b.B, b.C, b.D];

    private static float[] Get(Box b, BoxFormat format) => format switch
    {
        BoxFormat.Xyxy => b.ToXyxy() is var (x0, y0, x1, y1) ? [x0, y0, x1, y1] : [],
        BoxFormat.Xywh => b.ToXywh() is var (x, y, w, h) ? [x, y, w, h] : [],
        _ => b.ToCxcywh() is var (cx, cy, cw, ch) ? [cx, cy, cw, ch] : [],
    };

    /// <summary>Distance from <paramref name="x"/> (≥ 0) to the next float.</summary>
    private static float Ulp(float x) => MathF.BitIncrement(x) - x;

    private static double[] D(float[] v) => v.Select(x => (double)x).ToArray();
    private static float[] RoundToFloat(double[] v) => v.Select(x => (float)x).ToArray();

    /// <summary>Boxes of both spaces with non-dyadic numbers (so rounding is exercised), as the four numbers of any format.</summary>
    private static readonly (string Name, float[] Numbers, CoordinateSpace Space)[] Samples =
    [
        ("pixels, fractional", [123.4f, 56.7f, 345.6f, 278.9f], CoordinateSpace.Pixels),
        ("pixels, integers", [100f, 200f, 600f, 700f], CoordinateSpace.Pixels),
        ("pixels, large", [1023.3f, 1.1f, 1799.9f, 1199.7f], CoordinateSpace.Pixels),
        ("normalised", [0.42f, 0.55f, 0.3f, 0.6f], CoordinateSpace.Normalized),
        ("normalised, small", [0.1f, 0.7f, 0.013f, 0.0271f], CoordinateSpace.Normalized),
        ("normalised, whole image", [0f, 0f, 1f, 1f], CoordinateSpace.Normalized),
    ];

    private static IEnumerable<TestCaseData> FormatPairs()
    {
        foreach (var (name, numbers, space) in Samples)
            foreach (var from in Enum.GetValues<BoxFormat>())
                foreach (var to in Enum.GetValues<BoxFormat>())
                    yield return new TestCaseData(numbers, space, from, to).SetName($"Convert_{from}_to_{to}_{name.Replace(", ", "_").Replace(' ', '_')}");
    }

    // ------------------------------------------------------------------ construction

    [Test]
    public void FactoriesKeepTheNumbersAsGivenWithTheirFormatAndSpace()
    {
        var xyxy = Box.FromXyxy(1.5f, 2.5f, 3.5f, 4.5f);
        Assert.That((xyxy.A, xyxy.B, xyxy.C, xyxy.D), Is.EqualTo((1.5f, 2.5f, 3.5f, 4.5f)));
        Assert.That((xyxy.Format, xyxy.Space), Is.EqualTo((BoxFormat.Xyxy, CoordinateSpace.Pixels)), "xyxy defaults to pixels (predict_inst)");
        var xywh = Box.FromXywh(1, 2, 3, 4);
        Assert.That((xywh.Format, xywh.Space), Is.EqualTo((BoxFormat.Xywh, CoordinateSpace.Pixels)));
        var cxcywh = Box.FromCxcywh(0.5f, 0.5f, 0.2f, 0.1f);
        Assert.That((cxcywh.Format, cxcywh.Space), Is.EqualTo((BoxFormat.Cxcywh, CoordinateSpace.Normalized)),
            "cxcywh defaults to normalised (add_geometric_prompt)");
        Assert.That(Numbers(Box.FromXywh(7, 8, 9, 10, CoordinateSpace.Normalized)), Is.EqualTo(new float[] { 7, 8, 9, 10 }));
        Assert.That(Box.FromXywh(7, 8, 9, 10, CoordinateSpace.Normalized).Space, Is.EqualTo(CoordinateSpace.Normalized));

        // BoxPrompt's two named conventions.
        var px = BoxPrompt.Xyxy(10, 20, 110, 220, positive: false);
        Assert.That(px.Box, Is.EqualTo(Box.FromXyxy(10, 20, 110, 220, CoordinateSpace.Pixels)));
        Assert.That(px.Positive, Is.False);
        var n = BoxPrompt.NormalizedCxcywh(0.4f, 0.5f, 0.3f, 0.2f);
        Assert.That(n.Box, Is.EqualTo(Box.FromCxcywh(0.4f, 0.5f, 0.3f, 0.2f, CoordinateSpace.Normalized)));
        Assert.That(n.Positive, Is.True);
    }

    [Test]
    public void BoxesWithTheSameNumbersInDifferentFormatsOrSpacesDiffer()
    {
        Assert.That(Box.FromXyxy(1, 2, 3, 4), Is.Not.EqualTo(Box.FromXywh(1, 2, 3, 4)));
        Assert.That(Box.FromXyxy(1, 2, 3, 4), Is.Not.EqualTo(Box.FromXyxy(1, 2, 3, 4, CoordinateSpace.Normalized)));
        Assert.That(Box.FromXyxy(1, 2, 3, 4), Is.EqualTo(Box.FromXyxy(1, 2, 3, 4)));
    }

    // ------------------------------------------------------------------ format conversions (box_ops)

    [TestCaseSource(nameof(FormatPairs))]
    public void FormatConversionIsBoxOpsRoundedOnceToFloat(float[] numbers, CoordinateSpace space, BoxFormat from, BoxFormat to)
    {
        var box = Make(numbers, from, space);
        var expected = RoundToFloat(RefConvert(D(numbers), from, to));
        Assert.That(Get(box, to), Is.EqualTo(expected), $"{box} → {to}");

        // As(format) holds the same numbers, the same space, and says its format.
        var converted = box.As(to);
        Assert.That(converted.Format, Is.EqualTo(to));
        Assert.That(converted.Space, Is.EqualTo(space));
        Assert.That(Numbers(converted), Is.EqualTo(expected));
        // Width and height as box_ops defines them (box_area: (x1 - x0) * (y1 - y0)).
        var xyxy = RefConvert(D(numbers), from, BoxFormat.Xyxy);
        var wh = RefConvert(D(numbers), from, BoxFormat.Xywh);
        Assert.That(box.Width, Is.EqualTo(from == BoxFormat.Xyxy ? (float)(xyxy[2] - xyxy[0]) : (float)wh[2]));
        Assert.That(box.Height, Is.EqualTo(from == BoxFormat.Xyxy ? (float)(xyxy[3] - xyxy[1]) : (float)wh[3]));
    }

    [Test]
    public void ConversionToTheBoxsOwnFormatIsExact()
    {
        foreach (var (name, numbers, space) in Samples)
            foreach (var format in Enum.GetValues<BoxFormat>())
            {
                var box = Make(numbers, format, space);
                Assert.That(Get(box, format), Is.EqualTo(numbers), $"{name}, {format}");
                Assert.That(box.As(format), Is.EqualTo(box), $"{name}, {format}: As(own format)");
                Assert.That(space == CoordinateSpace.Pixels ? box.ToPixels(640, 480) : box.ToNormalized(640, 480), Is.EqualTo(box),
                    $"{name}, {format}: conversion to its own space");
            }
    }

    [Test]
    public void RoundTripsThroughAnotherFormatAreExactOnDyadicNumbersAndCloseOtherwise()
    {
        // Integers and halves: every intermediate is exact in float, so the round trip is too.
        var exact = Box.FromXyxy(100, 200, 601, 703);
        foreach (var via in new[] { BoxFormat.Xywh, BoxFormat.Cxcywh })
            Assert.That(exact.As(via).As(BoxFormat.Xyxy), Is.EqualTo(exact), $"xyxy → {via} → xyxy");
        var exactCenter = Box.FromCxcywh(0.5f, 0.25f, 0.375f, 0.125f);
        foreach (var via in new[] { BoxFormat.Xyxy, BoxFormat.Xywh })
            Assert.That(exactCenter.As(via).As(BoxFormat.Cxcywh), Is.EqualTo(exactCenter), $"cxcywh → {via} → cxcywh");

        // Otherwise each step rounds once: the round trip is within a few ulps of the largest coordinate.
        foreach (var (name, numbers, space) in Samples)
            foreach (var from in Enum.GetValues<BoxFormat>())
                foreach (var via in Enum.GetValues<BoxFormat>())
                {
                    var box = Make(numbers, from, space);
                    var back = Numbers(box.As(via).As(from));
                    float tol = 4 * Ulp(2 * numbers.Max(Math.Abs));
                    for (int i = 0; i < 4; i++)
                        Assert.That(Math.Abs(back[i] - numbers[i]), Is.LessThanOrEqualTo(tol),
                            $"{name}: {from} → {via} → {from}, number {i}");
                }
    }

    // ------------------------------------------------------------------ space conversions

    private static IEnumerable<TestCaseData> ImageSizes()
    {
        yield return new TestCaseData(1280, 720).SetName("Space_1280x720");
        yield return new TestCaseData(1800, 1200).SetName("Space_1800x1200");
        yield return new TestCaseData(333, 777).SetName("Space_333x777");
        yield return new TestCaseData(1, 1).SetName("Space_1x1");
    }

    [TestCaseSource(nameof(ImageSizes))]
    public void SpaceConversionScalesXByWidthAndYByHeight(int w, int h)
    {
        double[] scale = [w, h, w, h];
        foreach (var format in Enum.GetValues<BoxFormat>())
        {
            // normalised → pixels: every number × (W, H, W, H) — x and width by W, y and height by H, in every format.
            var n = Make([0.42f, 0.55f, 0.3f, 0.6f], format, CoordinateSpace.Normalized);
            var p = n.ToPixels(w, h);
            Assert.That((p.Format, p.Space), Is.EqualTo((format, CoordinateSpace.Pixels)));
            Assert.That(Numbers(p), Is.EqualTo(RoundToFloat(D(Numbers(n)).Select((x, i) => x * scale[i]).ToArray())), $"{format} to pixels");

            // pixels → normalised: every number ÷ (W, H, W, H).
            var q = Make([12.3f, 45.6f, 78.9f, 10.2f], format, CoordinateSpace.Pixels);
            var m = q.ToNormalized(w, h);
            Assert.That((m.Format, m.Space), Is.EqualTo((format, CoordinateSpace.Normalized)));
            Assert.That(Numbers(m), Is.EqualTo(RoundToFloat(D(Numbers(q)).Select((x, i) => x / scale[i]).ToArray())), $"{format} to normalised");

            // Scaling commutes with the format conversions (they are linear): close to the double result.
            foreach (var to in Enum.GetValues<BoxFormat>())
            {
                var expected = RefConvert(D(Numbers(n)), format, to).Select((x, i) => x * scale[i]).ToArray();
                var actual = Get(n.ToPixels(w, h), to);
                for (int i = 0; i < 4; i++)
                    Assert.That(actual[i], Is.EqualTo(expected[i]).Within(4e-7 * Math.Max(w, h)), $"{format} → pixels → {to}, number {i}");
            }
        }
    }

    [Test]
    public void PixelToNormalisedRoundTripIsExactForPowerOfTwoSizesAndCloseOtherwise()
    {
        var box = Box.FromXyxy(123.4f, 56.7f, 345.6f, 278.9f);
        Assert.That(box.ToNormalized(1024, 512).ToPixels(1024, 512), Is.EqualTo(box));
        var back = box.ToNormalized(1280, 720).ToPixels(1280, 720);
        var expected = Numbers(box);
        var actual = Numbers(back);
        for (int i = 0; i < 4; i++) Assert.That(actual[i], Is.EqualTo(expected[i]).Within(1e-4), $"number {i}");
        Assert.That(back.Space, Is.EqualTo(CoordinateSpace.Pixels));
    }

    [Test]
    public void TheSeedsFormatsTableExpressedOnce()
    {
        // test_image is 1280×720: predict_inst's pixel xyxy (320, 180, 704, 540) is add_geometric_prompt's normalised
        // cxcywh (0.4, 0.5, 0.3, 0.5): cx = (320 + 704) / 2 / 1280, w = (704 − 320) / 1280, and likewise for y.
        var pixel = Box.FromXyxy(320, 180, 704, 540);
        var n = pixel.ToNormalized(1280, 720).ToCxcywh();
        Assert.That(n.Cx, Is.EqualTo(0.4f).Within(1e-7f));
        Assert.That(n.Cy, Is.EqualTo(0.5f).Within(1e-7f));
        Assert.That(n.Width, Is.EqualTo(0.3f).Within(1e-7f));
        Assert.That(n.Height, Is.EqualTo(0.5f).Within(1e-7f));
        // The video predictor's normalised xywh of the same box.
        var v = pixel.ToNormalized(1280, 720).ToXywh();
        Assert.That(v.X, Is.EqualTo(0.25f));
        Assert.That(v.Y, Is.EqualTo(0.25f));
        Assert.That(v.Width, Is.EqualTo(0.3f).Within(1e-7f));
        Assert.That(v.Height, Is.EqualTo(0.5f));
        // And back to pixels xyxy from the normalised cxcywh.
        var back = Box.FromCxcywh(0.4f, 0.5f, 0.3f, 0.5f).ToPixels(1280, 720).ToXyxy();
        Assert.That(back.X0, Is.EqualTo(320f).Within(1e-4f));
        Assert.That(back.Y0, Is.EqualTo(180f));
        Assert.That(back.X1, Is.EqualTo(704f).Within(1e-4f));
        Assert.That(back.Y1, Is.EqualTo(540f));
    }

    // ------------------------------------------------------------------ points

    [Test]
    public void PointsScaleByWidthAndHeightAndKeepTheirLabel()
    {
        var n = PointPrompt.Normalized(0.37f, 0.81f, positive: false);
        Assert.That((n.Space, n.Positive, n.Label), Is.EqualTo((CoordinateSpace.Normalized, false, 0)));
        var p = n.ToPixels(1280, 720);
        Assert.That(p, Is.EqualTo(new PointPrompt((float)(0.37f * 1280.0), (float)(0.81f * 720.0), false, CoordinateSpace.Pixels)));
        Assert.That(p.ToPixels(1280, 720), Is.EqualTo(p), "already in pixels");

        var q = PointPrompt.Pixel(560, 400);
        Assert.That((q.Space, q.Positive, q.Label), Is.EqualTo((CoordinateSpace.Pixels, true, 1)));
        var m = q.ToNormalized(1280, 720);
        Assert.That(m, Is.EqualTo(PointPrompt.Normalized((float)(560.0 / 1280), (float)(400.0 / 720))));
        Assert.That(m.ToNormalized(1280, 720), Is.EqualTo(m), "already normalised");
        Assert.That(new PointPrompt(1, 2), Is.EqualTo(PointPrompt.Pixel(1, 2)), "the constructor's defaults: positive, pixels");
        // A power-of-two size round-trips exactly.
        Assert.That(PointPrompt.Pixel(123.4f, 56.7f).ToNormalized(512, 256).ToPixels(512, 256), Is.EqualTo(PointPrompt.Pixel(123.4f, 56.7f)));
    }

    // ------------------------------------------------------------------ errors

    private static IEnumerable<TestCaseData> BadSizes()
    {
        yield return new TestCaseData(0, 10, 0).SetName("BadSize_ZeroWidth");
        yield return new TestCaseData(10, 0, 0).SetName("BadSize_ZeroHeight");
        yield return new TestCaseData(-5, 10, -5).SetName("BadSize_NegativeWidth");
        yield return new TestCaseData(10, -1, -1).SetName("BadSize_NegativeHeight");
        yield return new TestCaseData(int.MinValue, int.MinValue, int.MinValue).SetName("BadSize_MinValue");
    }

    [TestCaseSource(nameof(BadSizes))]
    public void NonPositiveImageSizesAreArgumentErrorsNamingTheValue(int w, int h, int offending)
    {
        void Check(Action call, string what)
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(call, what);
            Assert.That(e!.ActualValue, Is.EqualTo(offending), $"{what}: the exception carries the offending value");
            Assert.That(e.Message, Does.Contain(offending.ToString(System.Globalization.CultureInfo.InvariantCulture)), $"{what}: the message names it");
        }
        // Checked even when the box or point is already in the target space (the size is wrong whatever the box).
        Check(() => Box.FromXyxy(1, 2, 3, 4).ToPixels(w, h), "pixel box → pixels");
        Check(() => Box.FromXyxy(1, 2, 3, 4).ToNormalized(w, h), "pixel box → normalised");
        Check(() => Box.FromCxcywh(0.5f, 0.5f, 0.1f, 0.1f).ToPixels(w, h), "normalised box → pixels");
        Check(() => Box.FromCxcywh(0.5f, 0.5f, 0.1f, 0.1f).ToNormalized(w, h), "normalised box → normalised");
        Check(() => PointPrompt.Pixel(1, 2).ToNormalized(w, h), "pixel point → normalised");
        Check(() => PointPrompt.Pixel(1, 2).ToPixels(w, h), "pixel point → pixels");
        Check(() => PointPrompt.Normalized(0.1f, 0.2f).ToPixels(w, h), "normalised point → pixels");
    }

    [Test]
    public void NonFiniteNumbersAreReportedNotRejectedByTheValueType()
    {
        // The value types hold what they are given; predictors reject non-finite prompts (Sam3PromptException).
        Assert.That(Box.FromXyxy(0, 0, 1, 1).IsFinite, Is.True);
        Assert.That(Box.FromXyxy(float.NaN, 0, 1, 1).IsFinite, Is.False);
        Assert.That(Box.FromXywh(0, 0, float.PositiveInfinity, 1).IsFinite, Is.False);
        Assert.That(Box.FromCxcywh(0, float.NegativeInfinity, 1, 1).IsFinite, Is.False);
        Assert.That(Box.FromCxcywh(0, 0, 1, float.NaN).IsFinite, Is.False);
    }

    [Test]
    public void ToStringStatesFormatAndSpace()
    {
        Assert.That(Box.FromXyxy(10, 20, 110, 220).ToString(), Is.EqualTo("xyxy(10, 20, 110, 220) px"));
        Assert.That(Box.FromCxcywh(0.5f, 0.25f, 0.125f, 1).ToString(), Is.EqualTo("cxcywh(0.5, 0.25, 0.125, 1) normalized"));
        Assert.That(BoxPrompt.Xyxy(1, 2, 3, 4, positive: false).ToString(), Is.EqualTo("-xyxy(1, 2, 3, 4) px"));
        Assert.That(PointPrompt.Pixel(120, 45).ToString(), Is.EqualTo("+(120, 45) px"));
    }
}
