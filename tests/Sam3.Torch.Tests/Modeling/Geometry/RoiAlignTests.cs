using Sam3.Torch.Tests.Infrastructure;
using NUnit.Framework;
using Sam3.Torch.Modeling.Geometry;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Geometry;

/// <summary>
/// RoIAlign against closed-form values: on a map that is linear in (x, y) bilinear sampling is exact, so a bin average
/// is the map's value at the bin centre; border behaviour is checked on hand-computed samples.
/// </summary>
[TestFixture, Category("Fast")]
public class RoiAlignTests
{
    // F[c,y,x] = a_c + b_c·y + d_c·x
    private static readonly float[] A = [0.5f, -2f, 3f];
    private static readonly float[] B = [1.5f, 0.25f, -0.75f];
    private static readonly float[] D = [-0.5f, 2f, 0.125f];

    private static Tensor Ramp(int h, int w)
    {
        var y = torch.arange(h, dtype: ScalarType.Float32).view(1, h, 1);
        var x = torch.arange(w, dtype: ScalarType.Float32).view(1, 1, w);
        var a = torch.tensor(A).view(-1, 1, 1);
        var b = torch.tensor(B).view(-1, 1, 1);
        var d = torch.tensor(D).view(-1, 1, 1);
        return (a + b * y + d * x).unsqueeze(0); // [1,3,H,W]
    }

    private static float[,,] RampBins(double x0, double y0, double x1, double y1, int outH, int outW, double scale)
    {
        double bx = (x1 - x0) * scale / outW, by = (y1 - y0) * scale / outH;
        var r = new float[A.Length, outH, outW];
        for (int c = 0; c < A.Length; c++)
            for (int p = 0; p < outH; p++)
                for (int q = 0; q < outW; q++)
                {
                    double yc = y0 * scale + (p + 0.5) * by, xc = x0 * scale + (q + 0.5) * bx;
                    r[c, p, q] = (float)(A[c] + B[c] * yc + D[c] * xc);
                }
        return r;
    }

    private static void AssertEqual(Tensor actual, float[,,] expected, double tol = 1e-4)
    {
        int c = expected.GetLength(0), h = expected.GetLength(1), w = expected.GetLength(2);
        Assert.That(actual.shape, Is.EqualTo(new long[] { c, h, w }));
        var a = actual.to(ScalarType.Float32).cpu().data<float>().ToArray();
        for (int i = 0; i < c; i++)
            for (int p = 0; p < h; p++)
                for (int q = 0; q < w; q++)
                    Assert.That(a[(i * h + p) * w + q], Is.EqualTo(expected[i, p, q]).Within(tol), $"c={i} p={p} q={q}");
    }

    [TestCase(2.3, 1.7, 11.9, 13.2, 7, 7, -1, 1.0)]   // adaptive grid (2 samples per bin)
    [TestCase(2.3, 1.7, 11.9, 13.2, 3, 5, 2, 1.0)]    // fixed sampling ratio
    [TestCase(4.6, 3.4, 23.8, 26.4, 7, 7, -1, 0.5)]   // spatial scale
    [TestCase(0.0, 0.0, 15.0, 15.0, 7, 7, -1, 1.0)]   // whole map, samples stay inside [0, size-1]
    public void LinearRampBinsEqualTheValueAtTheBinCentre(double x0, double y0, double x1, double y1, int outH, int outW, int ratio, double scale)
    {
        using var scope = NewDisposeScope();
        var f = Ramp(16, 16);
        var rois = torch.tensor(new[] { 0f, (float)x0, (float)y0, (float)x1, (float)y1 }).view(1, 5);
        var o = RoiAlign.Forward(f, rois, outH, outW, scale, ratio);
        AssertEqual(o[0], RampBins(x0, y0, x1, y1, outH, outW, scale));
    }

    [Test]
    public void BorderRulesMatchHandComputedSamples()
    {
        using var scope = NewDisposeScope();
        // F[y,x] = 10y + x on a 4x4 map; one sample per bin
        var f = (torch.arange(4, dtype: ScalarType.Float32).view(4, 1) * 10 + torch.arange(4, dtype: ScalarType.Float32).view(1, 4)).view(1, 1, 4, 4);
        // box (-3,2)-(5,6), 2x2 bins of 4x2: x samples -1 (kept, clamped to 0) and 3 (last column);
        // y samples 3 (last row) and 5 (> H: sample is empty)
        var o = RoiAlign.Forward(f, torch.tensor(new[] { 0f, -3f, 2f, 5f, 6f }).view(1, 5), 2, 2, 1.0, 1);
        Assert.That(o.flatten().data<float>().ToArray(), Is.EqualTo(new[] { 30f, 33f, 0f, 0f }).Within(1e-6));
        // box (-4.5,0)-(3.5,2), 1x2 bins: x samples -2.5 (< -1: empty) and 1.5 (between columns 1 and 2); y sample 1
        o = RoiAlign.Forward(f, torch.tensor(new[] { 0f, -4.5f, 0f, 3.5f, 2f }).view(1, 5), 1, 2, 1.0, 1);
        Assert.That(o.flatten().data<float>().ToArray(), Is.EqualTo(new[] { 0f, 11.5f }).Within(1e-6));
        // y = -1 (still inside): clamped to row 0; x = 2.75 interpolates columns 2 and 3
        o = RoiAlign.Forward(f, torch.tensor(new[] { 0f, 2.25f, -1.5f, 3.25f, -0.5f }).view(1, 5), 1, 1, 1.0, 1);
        Assert.That(o.item<float>(), Is.EqualTo(2.75f).Within(1e-6));
    }

    [Test]
    public void DegenerateRoiIsForcedToOnePixel()
    {
        using var scope = NewDisposeScope();
        var f = (torch.arange(4, dtype: ScalarType.Float32).view(4, 1) * 10 + torch.arange(4, dtype: ScalarType.Float32).view(1, 4)).view(1, 1, 4, 4);
        // zero-size box at (2,2): side forced to 1, one sample at (2.5, 2.5)
        var o = RoiAlign.Forward(f, torch.tensor(new[] { 0f, 2f, 2f, 2f, 2f }).view(1, 5), 1, 1);
        Assert.That(o.item<float>(), Is.EqualTo(27.5f).Within(1e-5));
        // inverted box: same forcing (the size is max(x1-x0, 1))
        o = RoiAlign.Forward(f, torch.tensor(new[] { 0f, 2f, 2f, 1f, 0f }).view(1, 5), 1, 1);
        Assert.That(o.item<float>(), Is.EqualTo(27.5f).Within(1e-5));
    }

    [Test]
    public void AdaptiveGridUsesCeilOfRoiOverBins()
    {
        using var scope = NewDisposeScope();
        // step map: rows 0..4 = 0, rows 5..9 = 1. RoI covers y in [0,10], one bin -> ceil(10/1) = 10 samples at
        // y = 0.5..9.5: 4.5 -> 0.5, 5.5..8.5 -> 1, 9.5 -> last row = 1 -> mean 5.5/10 (2 samples would give 0.5)
        var f = torch.cat([torch.zeros(5, 3), torch.ones(5, 3)], 0).view(1, 1, 10, 3);
        var o = RoiAlign.Forward(f, torch.tensor(new[] { 0f, 0f, 0f, 1f, 10f }).view(1, 5), 1, 1);
        Assert.That(o.item<float>(), Is.EqualTo(0.55f).Within(1e-6));
        o = RoiAlign.Forward(f, torch.tensor(new[] { 0f, 0f, 0f, 1f, 10f }).view(1, 5), 1, 1, samplingRatio: 2);
        Assert.That(o.item<float>(), Is.EqualTo(0.5f).Within(1e-6));
    }

    [Test]
    public void AlignedShiftsByHalfAPixel()
    {
        using var scope = NewDisposeScope();
        var f = Ramp(16, 16);
        var rois = torch.tensor(new[] { 0f, 3f, 2f, 10f, 12f }).view(1, 5);
        var o = RoiAlign.Forward(f, rois, 5, 4, 1.0, -1, aligned: true);
        AssertEqual(o[0], RampBins(2.5, 1.5, 9.5, 11.5, 5, 4, 1.0));
    }

    [Test]
    public void RoisPickTheirImageAndListFormOrdersImageByImage()
    {
        using var scope = NewDisposeScope();
        var f0 = Ramp(12, 12);
        var f = torch.cat([f0, f0 * -2 + 1], 0); // [2,3,12,12]
        var boxes = new[]
        {
            torch.tensor(new[] { 1f, 2f, 8f, 9f }).view(1, 4),
            torch.tensor(new[] { 1f, 2f, 8f, 9f, 3f, 3f, 10f, 6f }).view(2, 4),
        };
        var o = RoiAlign.Forward(f, boxes, 7, 7);
        Assert.That(o.shape, Is.EqualTo(new long[] { 3, 3, 7, 7 }));
        var first = RampBins(1, 2, 8, 9, 7, 7, 1.0);
        AssertEqual(o[0], first);
        var second = (float[,,])first.Clone();
        for (int c = 0; c < 3; c++) for (int p = 0; p < 7; p++) for (int q = 0; q < 7; q++) second[c, p, q] = first[c, p, q] * -2 + 1;
        AssertEqual(o[1], second);
        var third = RampBins(3, 3, 10, 6, 7, 7, 1.0);
        for (int c = 0; c < 3; c++) for (int p = 0; p < 7; p++) for (int q = 0; q < 7; q++) third[c, p, q] = third[c, p, q] * -2 + 1;
        AssertEqual(o[2], third);
    }

    [Test]
    public void NoRoisGiveAnEmptyResult()
    {
        using var scope = NewDisposeScope();
        var o = RoiAlign.Forward(Ramp(8, 8), torch.zeros(0, 5), 7, 7);
        Assert.That(o.shape, Is.EqualTo(new long[] { 0, 3, 7, 7 }));
    }

    [Test]
    public void BatchIndexOutsideTheInputIsATypedError()
    {
        using var scope = NewDisposeScope();
        Assert.Throws<Sam3Exception>(() => RoiAlign.Forward(Ramp(8, 8), torch.tensor(new[] { 1f, 1f, 1f, 5f, 6f }).view(1, 5), 2, 2));
        Assert.Throws<Sam3Exception>(() => RoiAlign.Forward(Ramp(8, 8), torch.zeros(2, 4), 2, 2));
    }

    [Test]
    public void NaNCoordinatesGiveZeros()
    {
        using var scope = NewDisposeScope();
        var o = RoiAlign.Forward(Ramp(8, 8), torch.tensor(new[] { 0f, float.NaN, 1f, 5f, 6f }).view(1, 5), 2, 2, 1.0, 1);
        Assert.That(o.isnan().any().item<bool>(), Is.False);
    }

    [Test]
    public void RunsOnCudaWhenAvailable()
    {
        if (!torch.cuda.is_available()) TestPolicy.GpuOnly("no CUDA device in this process (TorchSharp CPU backend or no GPU)");
        using var scope = NewDisposeScope();
        var f = Ramp(16, 16);
        var rois = torch.tensor(new[] { 0f, 2.3f, 1.7f, 11.9f, 13.2f }).view(1, 5);
        var cpu = RoiAlign.Forward(f, rois, 7, 7);
        var gpu = RoiAlign.Forward(f.cuda(), rois.cuda(), 7, 7);
        Assert.That(gpu.device_type, Is.EqualTo(DeviceType.CUDA));
        Assert.That((gpu.cpu() - cpu).abs().max().item<float>(), Is.LessThan(1e-5f));
    }
}
