using NUnit.Framework;
using Sam3.Torch.Modeling.Tracker;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Tracker;

/// <summary>RoPE attention against an independent float64 implementation of the formulas of guide §4.1/§4.27.</summary>
[TestFixture, Category("Fast")]
public class RoPEAttentionTests
{
    /// <summary>
    /// Rotates every interleaved pair (2j, 2j+1) of x [B, h, L, D] by angle(token, j): pairs j &lt; D/4 by col·f_j,
    /// the others by row·f_(j−D/4), f_k = θ^(−4k/D); token i of a W-wide grid has col = i % W, row = i / W.
    /// </summary>
    internal static Tensor ManualRope(Tensor x, Func<long, (long col, long row)> pos, double theta)
    {
        var xd = x.to(ScalarType.Float64).clone();
        long b = x.shape[0], h = x.shape[1], l = x.shape[2], d = x.shape[3];
        var data = xd.data<double>().ToArray();
        for (long bb = 0; bb < b; bb++)
            for (long hh = 0; hh < h; hh++)
                for (long t = 0; t < l; t++)
                {
                    var (col, row) = pos(t);
                    for (long j = 0; j < d / 2; j++)
                    {
                        long k = j < d / 4 ? j : j - d / 4;
                        double f = Math.Pow(theta, -4.0 * k / d);
                        double a = (j < d / 4 ? col : row) * f;
                        long idx = ((bb * h + hh) * l + t) * d + 2 * j;
                        double re = data[idx], im = data[idx + 1];
                        data[idx] = re * Math.Cos(a) - im * Math.Sin(a);
                        data[idx + 1] = re * Math.Sin(a) + im * Math.Cos(a);
                    }
                }
        return torch.tensor(data, x.shape, dtype: ScalarType.Float64);
    }

    /// <summary>softmax(QKᵀ/√d)V per head, float64, with the module's projections; keys past <paramref name="kRope"/> are not rotated.</summary>
    internal static Tensor ManualRopeAttention(RoPEAttention m, Tensor q, Tensor k, Tensor v, long gridW, long kRope)
    {
        Tensor Lin(TorchSharp.Modules.Linear lin, Tensor x) => x.to(ScalarType.Float64).matmul(lin.weight!.to(ScalarType.Float64).T) + lin.bias!.to(ScalarType.Float64);
        Tensor Heads(Tensor x) => x.reshape(x.shape[0], x.shape[1], m.num_heads, -1).transpose(1, 2);
        var qh = Heads(Lin(m.q_proj, q));
        var kh = Heads(Lin(m.k_proj, k));
        var vh = Heads(Lin(m.v_proj, v));
        long lq = qh.shape[2];
        qh = ManualRope(qh, t => (t % gridW, t / gridW), m.rope_theta);
        if (kRope > 0)
        {
            var rot = ManualRope(kh[.., .., TensorIndex.Slice(0, kRope)], t => (t % lq % gridW, t % lq / gridW), m.rope_theta);
            kh = torch.cat([rot, kh[.., .., TensorIndex.Slice(kRope, null)]], 2);
        }
        var logits = qh.matmul(kh.transpose(2, 3)) / Math.Sqrt(qh.shape[3]);
        var o = logits.softmax(-1).matmul(vh).transpose(1, 2);
        o = o.reshape(o.shape[0], o.shape[1], -1);
        return Lin(m.out_proj, o);
    }

    [Test]
    public void AxialTableFollowsTheFormula()
    {
        using var scope = NewDisposeScope();
        var (cos, sin) = RoPEAttention.ComputeAxialCis(8, 3, 2, 100.0);
        Assert.That(cos.shape, Is.EqualTo(new long[] { 6, 4 }));
        for (int i = 0; i < 6; i++)
        {
            double x = i % 3, y = i / 3;
            double[] angles = [x * 1, x * 0.1, y * 1, y * 0.1]; // f_k = 100^(−4k/8) = 1, 0.1
            for (int j = 0; j < 4; j++)
            {
                Assert.That(cos[i, j].item<float>(), Is.EqualTo(Math.Cos(angles[j])).Within(1e-6));
                Assert.That(sin[i, j].item<float>(), Is.EqualTo(Math.Sin(angles[j])).Within(1e-6));
            }
        }
    }

    [Test]
    public void SelfAttentionEqualsManualRope()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(11);
        using var m = new RoPEAttention(16, 2, ropeTheta: 10000.0, featSizes: (4, 3)); // head dim 8; 4 wide × 3 high
        m.eval();
        using var _ = torch.no_grad();
        var x = torch.randn(2, 12, 16);
        var got = m.forward(x, x, x);
        var expected = ManualRopeAttention(m, x, x, x, gridW: 4, kRope: 12);
        Assert.That((got.to(ScalarType.Float64) - expected).abs().max().item<double>(), Is.LessThan(1e-5));
    }

    [Test]
    public void CrossAttentionRepeatsTheTableAndSkipsPointerTokens()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(12);
        using var m = new RoPEAttention(16, 1, kvInDim: 8, ropeTheta: 10000.0, ropeKRepeat: true, featSizes: (3, 3));
        m.eval();
        using var _ = torch.no_grad();
        var q = torch.randn(2, 9, 16);
        var k = torch.randn(2, 9 * 2 + 4, 8); // 2 memory frames + 4 pointer tokens
        var v = torch.randn(2, 9 * 2 + 4, 8);
        var got = m.forward(q, k, v, 4);
        var expected = ManualRopeAttention(m, q, k, v, gridW: 3, kRope: 18);
        Assert.That((got.to(ScalarType.Float64) - expected).abs().max().item<double>(), Is.LessThan(1e-5));
        // excluding the pointer tokens matters: rotating them as well (positions 0..3) gives a different result
        var rotatedAll = ManualRopeAttention(m, q, k, v, gridW: 3, kRope: 22);
        Assert.That((rotatedAll - expected).abs().max().item<double>(), Is.GreaterThan(1e-3));
        Assert.That(Throws(() => m.forward(q, k, v, 0)), Is.True, "22 rotated keys are not a multiple of the 9-token grid");
    }

    [Test]
    public void NonSquareQueryGridsAreRejectedUnlessTheyMatchFeatSizes()
    {
        using var scope = NewDisposeScope();
        using var m = new RoPEAttention(8, 1, featSizes: (4, 2));
        m.eval();
        using var _ = torch.no_grad();
        Assert.DoesNotThrow(() => m.forward(torch.randn(1, 8, 8), torch.randn(1, 8, 8), torch.randn(1, 8, 8)));
        Assert.DoesNotThrow(() => m.forward(torch.randn(1, 9, 8), torch.randn(1, 9, 8), torch.randn(1, 9, 8)));
        Assert.Throws<Sam3Exception>(() => m.forward(torch.randn(1, 6, 8), torch.randn(1, 6, 8), torch.randn(1, 6, 8)));
    }

    private static bool Throws(Action a)
    {
        try { a(); return false; } catch (Sam3Exception) { return true; }
    }
}
