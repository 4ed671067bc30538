using NUnit.Framework;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling;

/// <summary>
/// <see cref="SkinnyLinear"/> against a double-precision product of the same fp32 operands, with the bound of fp32
/// dot products: |y − y_ref| ≤ (K + 2)·u·(Σ|x·w| + |b|), u = 2⁻²⁴ (K products summed with one rounding each, the bias
/// add and the result's rounding). Odd sizes (K not a multiple of any vector width, N odd, M = 1…16), every
/// instruction set the CPU has, one and two threads; and the cases it must leave to LibTorch.
/// </summary>
[TestFixture, Category("Fast")]
public class SkinnyLinearTests
{
    private const double UnitRoundoff = 1.0 / (1 << 24);

    private static IEnumerable<SkinnyLinear.Isa> SupportedIsas() =>
        new[] { SkinnyLinear.Isa.Scalar, SkinnyLinear.Isa.Vector256, SkinnyLinear.Isa.Vector512 }.Where(SkinnyLinear.IsSupported);

    /// <summary>Max over outputs of |y − ref| / bound (≤ 1 passes).</summary>
    private static double WorstRatio(Tensor x, Tensor w, Tensor? b, Tensor y)
    {
        using var scope = NewDisposeScope();
        long k = w.shape[1];
        var xd = x.reshape(-1, k).to(ScalarType.Float64);
        var wd = w.to(ScalarType.Float64);
        var reference = xd.matmul(wd.t());
        var magnitude = xd.abs().matmul(wd.abs().t());
        if (b is not null)
        {
            reference += b.to(ScalarType.Float64);
            magnitude += b.to(ScalarType.Float64).abs();
        }
        var bound = magnitude * ((k + 2) * UnitRoundoff) + double.Epsilon;
        var err = (y.reshape(-1, w.shape[0]).to(ScalarType.Float64) - reference).abs();
        return (err / bound).max().item<double>();
    }

    [Test]
    public void MatchesDoubleReferenceWithinFp32RoundingForOddSizes()
    {
        foreach (var isa in SupportedIsas()) MatchesDoubleReference(isa);
        TestContext.Out.WriteLine($"checked: {string.Join(", ", SupportedIsas())}");
    }

    private static void MatchesDoubleReference(SkinnyLinear.Isa isa)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        torch.manual_seed(15);
        foreach (int k in new[] { 1, 7, 17, 100, 1031 })
        foreach (int n in new[] { 1, 6, 67 })
        foreach (int m in new[] { 1, 2, 3, 4, 5, 8, 9, 16 })
        {
            var x = torch.randn(m, k);
            var w = torch.randn(n, k);
            var b = torch.randn(n);
            var y = SkinnyLinear.Linear(x, w, b, isa);
            Assert.That(y.shape, Is.EqualTo(new long[] { m, n }));
            double ratio = WorstRatio(x, w, b, y);
            Assert.That(ratio, Is.LessThanOrEqualTo(1.0), $"{isa} M={m} N={n} K={k}: error over the fp32 bound ×{ratio:G3}");
            if (m == 3)
            {
                var noBias = SkinnyLinear.Linear(x, w, null, isa);
                Assert.That(WorstRatio(x, w, null, noBias), Is.LessThanOrEqualTo(1.0), $"{isa} M={m} N={n} K={k} without bias");
            }
        }
    }

    [Test]
    public void TwoThreadsSplitTheFeaturesAndAgreeWithOne()
    {
        foreach (var isa in SupportedIsas()) TwoThreads(isa);
    }

    private static void TwoThreads(SkinnyLinear.Isa isa)
    {
        int threads = get_num_threads();
        try
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            torch.manual_seed(16);
            // N = 1001 features: several parallel parts, the last one odd-sized
            var x = torch.randn(2, 3, 515);
            var w = torch.randn(1001, 515);
            var b = torch.randn(1001);
            set_num_threads(1);
            var one = SkinnyLinear.Linear(x, w, b, isa);
            set_num_threads(2);
            var two = SkinnyLinear.Linear(x, w, b, isa);
            Assert.That(two.shape, Is.EqualTo(new long[] { 2, 3, 1001 }));
            Assert.That(two.eq(one).all().item<bool>(), Is.True, "each output is one thread's dot product either way");
            Assert.That(WorstRatio(x, w, b, two), Is.LessThanOrEqualTo(1.0));
        }
        finally { set_num_threads(threads); }
    }

    [Test]
    public void NonContiguousInputIsReadInItsLogicalOrder()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        torch.manual_seed(17);
        var x = torch.randn(37, 3).t(); // [3,37], non-contiguous
        var w = torch.randn(9, 37);
        var y = SkinnyLinear.TryLinear(x, w, null);
        Assert.That(y, Is.Not.Null);
        Assert.That(WorstRatio(x, w, null, y!), Is.LessThanOrEqualTo(1.0));
    }

    [Test]
    public void LeavesToLibTorchWhatTheKernelDoesNotCover()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(18);
        var x = torch.randn(3, 64);
        var w = torch.randn(32, 64);
        var b = torch.randn(32);
        using (no_grad())
        {
            Assert.That(SkinnyLinear.Refusal(x, w, b), Is.Null, "the plain case runs the kernel");
            Assert.That(SkinnyLinear.Refusal(x.to(ScalarType.Float64), w.to(ScalarType.Float64), b.to(ScalarType.Float64)), Does.Contain("float32"));
            Assert.That(SkinnyLinear.Refusal(x.to(ScalarType.BFloat16), w.to(ScalarType.BFloat16), null), Does.Contain("float32"));
            Assert.That(SkinnyLinear.Refusal(x, torch.randn(64, 32).t(), b), Does.Contain("contiguous"), "a transposed weight");
            Assert.That(SkinnyLinear.Refusal(x, w, torch.randn(32, 2)[.., 0]), Does.Contain("bias"), "a strided bias");
            Assert.That(SkinnyLinear.Refusal(x, w, b.to(ScalarType.Float64)), Does.Contain("bias"));
            Assert.That(SkinnyLinear.Refusal(torch.randn(17, 64), w, b), Does.Contain("17 rows"));
            Assert.That(SkinnyLinear.Refusal(torch.randn(1, 64), w, b), Does.Contain("1 row"), "M = 1: LibTorch's matrix-vector product");
            Assert.That(SkinnyLinear.Refusal(torch.randn(2, 64), w, b), Is.Null);
            Assert.That(SkinnyLinear.Refusal(torch.randn(5, 64), w, b, maxRows: 4), Does.Contain("5 rows"));
            Assert.That(SkinnyLinear.Refusal(torch.randn(3, 63), w, b), Does.Contain("input size"));
            Assert.That(SkinnyLinear.TryLinear(torch.randn(17, 64), w, b), Is.Null);
            if (cuda.is_available())
                Assert.That(SkinnyLinear.Refusal(x.cuda(), w.cuda(), b.cuda()), Does.Contain("CPU"));
        }
        // grad mode with a trainable operand: autograd must see LibTorch's product
        var wg = w.clone().requires_grad_(true);
        Assert.That(is_grad_enabled(), Is.True);
        Assert.That(SkinnyLinear.Refusal(x, wg, b), Does.Contain("autograd"));
        Assert.That(SkinnyLinear.Refusal(x, w, b), Is.Null, "grad mode without trainable operands records nothing");
        using (no_grad()) Assert.That(SkinnyLinear.Refusal(x, wg, b), Is.Null, "no_grad: nothing to record");
    }
}
