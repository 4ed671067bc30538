using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Vision;

/// <summary>Checks of the ViT pieces against their definitions (no fixtures): window padding, RoPE, abs pos, drop path.</summary>
[TestFixture, Category("Fast")]
public class VisionMathTests
{
    /// <summary>Same shape and bit-identical values (TorchSharp's torch.equal is element-wise).</summary>
    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Test]
    public void WindowPartitionWithPaddingPlacesTokensByDefinition()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(1);
        const int ws = 4;
        long b = 2, h = 6, w = 9, c = 3;
        var x = torch.randn(b, h, w, c);
        var (windows, pad) = WindowOps.Partition(x, ws);
        // Hp, Wp: next multiples of ws
        Assert.That(pad, Is.EqualTo((8L, 12L)));
        long nh = 2, nw = 3;
        Assert.That(windows.shape, Is.EqualTo(new long[] { b * nh * nw, ws, ws, c }));
        // window index = (batch, row-window, col-window); token (i, j) of window (r, q) = x[r*ws+i, q*ws+j], zero outside
        var xa = x.data<float>().ToArray();
        var wa = windows.contiguous().data<float>().ToArray();
        int bad = 0;
        for (long bb = 0; bb < b; bb++)
            for (long r = 0; r < nh; r++)
                for (long q = 0; q < nw; q++)
                    for (long i = 0; i < ws; i++)
                        for (long j = 0; j < ws; j++)
                            for (long cc = 0; cc < c; cc++)
                            {
                                long win = (bb * nh + r) * nw + q;
                                long y0 = r * ws + i, x0 = q * ws + j;
                                float expected = y0 < h && x0 < w ? xa[((bb * h + y0) * w + x0) * c + cc] : 0f;
                                float got = wa[((win * ws + i) * ws + j) * c + cc];
                                if (got != expected) bad++;
                            }
        Assert.That(bad, Is.Zero);
        // unpartition is the exact inverse (padding cropped)
        var back = WindowOps.Unpartition(windows, ws, pad, (h, w));
        Assert.That(back.shape, Is.EqualTo(x.shape));
        Assert.That(Same(back.contiguous(), x), Is.True);
    }

    [Test]
    public void WindowPartitionWithoutPaddingRoundTrips()
    {
        using var scope = NewDisposeScope();
        var x = torch.arange(2 * 8 * 8 * 5, dtype: ScalarType.Float32).reshape(2, 8, 8, 5);
        var (windows, pad) = WindowOps.Partition(x, 4);
        Assert.That(pad, Is.EqualTo((8L, 8L)));
        Assert.That(windows.shape, Is.EqualTo(new long[] { 8, 4, 4, 5 }));
        // window 1 of image 0 = rows 0..3, cols 4..7
        Assert.That(Same(windows[1], x[0, TensorIndex.Slice(0, 4), TensorIndex.Slice(4, 8)]), Is.True);
        Assert.That(Same(WindowOps.Unpartition(windows, 4, pad, (8, 8)), x), Is.True);
    }

    [Test]
    public void WindowedBlockWithPaddingEqualsPerWindowDefinition()
    {
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        torch.manual_seed(3);
        const int dim = 16, heads = 2, ws = 4;
        long b = 2, h = 6, w = 7; // 6x7 grid, windows of 4: padded to 8x8, 4 windows per image
        using var block = new Block(dim, heads, 40, true, 0.0, 1e-5, ws, ((int)h, (int)w), true, 10000.0, (ws, ws), true);
        block.eval();
        var x = torch.randn(b, h, w, dim);
        var got = block.forward(x);

        // Definition: y = norm1(x); zero-pad y at bottom/right to 8x8; attend within each 4x4 window separately;
        // crop back to 6x7; x1 = x + y'; out = x1 + mlp(norm2(x1)).
        var y = block.norm1.forward(x);
        var padded = torch.zeros(b, 8, 8, dim);
        padded[TensorIndex.Colon, TensorIndex.Slice(0, h), TensorIndex.Slice(0, w)] = y;
        var attended = torch.zeros(b, 8, 8, dim);
        for (long bb = 0; bb < b; bb++)
            for (int r = 0; r < 2; r++)
                for (int q = 0; q < 2; q++)
                {
                    var rows = TensorIndex.Slice(r * ws, (r + 1) * ws);
                    var cols = TensorIndex.Slice(q * ws, (q + 1) * ws);
                    var win = padded[TensorIndex.Single(bb), rows, cols].unsqueeze(0);
                    attended[TensorIndex.Single(bb), rows, cols] = block.attn.forward(win)[0];
                }
        var x1 = x + attended[TensorIndex.Colon, TensorIndex.Slice(0, h), TensorIndex.Slice(0, w)];
        var expected = x1 + block.mlp.forward(block.norm2.forward(x1));
        double maxErr = (got - expected).abs().max().item<float>();
        Assert.That(maxErr, Is.LessThan(1e-5));
        // and the padded tokens did influence nothing they should not: a window holding only real tokens is unaffected
        // by changing the input outside it (locality of window attention)
        var x2 = x.clone();
        x2[TensorIndex.Colon, TensorIndex.Slice(4, h), TensorIndex.Colon] += 1.0f;
        var got2 = block.forward(x2);
        Assert.That(torch.allclose(got2[.., ..4, ..4], got[.., ..4, ..4]), Is.True);
    }

    [Test]
    public void ViTRunsOnGridNotDivisibleByWindow()
    {
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        // N = 280/14 = 20, window 8: windowed blocks pad 20 -> 24; pos embed tiled from 8x8 and cropped to 20
        var cfg = Sam3Config.Tiny with { ImageSize = 280, Vit = Sam3Config.Tiny.Vit with { ImgSize = 280 } };
        using var vit = new ViT(cfg);
        vit.eval();
        var y = vit.forward(torch.randn(1, 3, 280, 280));
        Assert.That(y.shape, Is.EqualTo(new long[] { 1, 64, 20, 20 }));
        Assert.That(y.isfinite().all().item<bool>(), Is.True);
        // the global blocks' RoPE grid is 20x20, scaled by rope_pt_size / N = 8/20
        Assert.That(vit.blocks[1].attn.input_size, Is.EqualTo((20, 20)));
        Assert.That(vit.blocks[1].attn.RopeScalePos, Is.EqualTo(8.0 / 20).Within(1e-12));
        Assert.That(vit.blocks[0].attn.input_size, Is.EqualTo((8, 8)));
        Assert.That(vit.blocks[0].attn.RopeScalePos, Is.EqualTo(1.0));
        // a wrong input size is a typed error, not a crash
        Assert.Throws<Sam3Exception>(() => vit.forward(torch.randn(1, 3, 336, 336)));
        Assert.Throws<Sam3Exception>(() => vit.forward(torch.randn(3, 280, 280)));
    }

    [Test]
    public void AbsPosIsTiledPretrainGridWithoutClsEntry()
    {
        using var scope = NewDisposeScope();
        using var vit = new ViT(Sam3Config.Tiny);
        using var _ = torch.no_grad();
        torch.manual_seed(5);
        vit.pos_embed!.copy_(torch.randn(vit.pos_embed.shape));
        const int s = 8; // pretrain grid 112/14
        foreach (long n in new long[] { 24, 20, 8 })
        {
            var abs = vit.AbsPos(n, n);
            Assert.That(abs.shape, Is.EqualTo(new long[] { 1, n, n, 64 }));
            int bad = 0;
            for (long i = 0; i < n; i += 3)
                for (long j = 0; j < n; j += 5)
                    if (!Same(abs[0, i, j], vit.pos_embed[0, 1 + (i % s) * s + (j % s)])) bad++;
            Assert.That(bad, Is.Zero, $"N={n}");
        }
    }

    [Test]
    public void RopeApplyEqualsComplexMultiplication()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(11);
        const int dim = 16, endX = 5, endY = 3;
        var x = torch.randn(2, 3, endX * endY, dim);
        var angles = AxialRope.ComputeAngles(dim, endX, endY, 10000.0, 0.5);
        var (cos, sin) = AxialRope.InterleavedTables(angles);
        var got = AxialRope.Apply(x, cos, sin);
        // reference definition: view_as_complex(x pairs) * polar(1, angle), back to real pairs
        var xc = torch.view_as_complex(x.reshape(2, 3, endX * endY, dim / 2, 2));
        var cis = torch.polar(torch.ones_like(angles), angles);
        var expected = torch.view_as_real(xc * cis).flatten(3);
        Assert.That((got - expected).abs().max().item<float>(), Is.LessThan(1e-6f));
        // bf16 input: math in fp32, result cast back to bf16
        var gotBf = AxialRope.Apply(x.to(ScalarType.BFloat16), cos, sin);
        Assert.That(gotBf.dtype, Is.EqualTo(ScalarType.BFloat16));
        var expectedBf = torch.view_as_real(torch.view_as_complex(x.to(ScalarType.BFloat16).to(ScalarType.Float32)
            .reshape(2, 3, endX * endY, dim / 2, 2)) * cis).flatten(3).to(ScalarType.BFloat16);
        Assert.That(Same(gotBf, expectedBf), Is.True);
    }

    [Test]
    public void RopeAnglesFollowAxialLayout()
    {
        using var scope = NewDisposeScope();
        const int dim = 16, endX = 6, endY = 4; const double theta = 100.0, scale = 1.0 / 3;
        var a = AxialRope.ComputeAngles(dim, endX, endY, theta, scale);
        Assert.That(a.shape, Is.EqualTo(new long[] { endX * endY, dim / 2 }));
        var arr = a.data<float>().ToArray();
        for (int idx = 0; idx < endX * endY; idx++)
            for (int k = 0; k < dim / 4; k++)
            {
                double f = 1.0 / Math.Pow(theta, 4.0 * k / dim);
                double tx = (idx % endX) * scale, ty = (idx / endX) * scale;
                Assert.That(arr[idx * dim / 2 + k], Is.EqualTo(tx * f).Within(1e-5), $"x idx {idx} k {k}");
                Assert.That(arr[idx * dim / 2 + dim / 4 + k], Is.EqualTo(ty * f).Within(1e-5), $"y idx {idx} k {k}");
            }
    }

    [Test]
    public void AttentionEqualsSoftmaxAttentionOnRotatedQueriesAndKeys()
    {
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        torch.manual_seed(13);
        const int dim = 32, heads = 2, hd = dim / heads, g = 4;
        using var attn = new VitAttention(dim, heads, true, true, 10000.0, (g, g), (2, 2), true);
        attn.eval();
        var x = torch.randn(1, g, g, dim);
        var got = attn.forward(x);
        var qkv = attn.qkv.forward(x.reshape(g * g, dim)).reshape(g * g, 3, heads, hd);
        var cis = torch.view_as_complex(attn.FreqsCisAsReal()!);  // [L, hd/2]
        var outs = new List<Tensor>();
        for (int hh = 0; hh < heads; hh++)
        {
            Tensor Rot(Tensor t) => torch.view_as_real(torch.view_as_complex(t.contiguous().reshape(g * g, hd / 2, 2)) * cis).reshape(g * g, hd);
            var q = Rot(qkv[.., 0, hh]); var k = Rot(qkv[.., 1, hh]); var v = qkv[.., 2, hh];
            outs.Add((q.matmul(k.T) / Math.Sqrt(hd)).softmax(-1).matmul(v));
        }
        var expected = attn.proj.forward(torch.cat(outs, 1)).reshape(1, g, g, dim);
        Assert.That((got - expected).abs().max().item<float>(), Is.LessThan(1e-5f));
        // table positions of an interpolated grid are scaled by rope_pt_size / grid = 2/4
        Assert.That(attn.RopeScalePos, Is.EqualTo(0.5));
    }

    [Test]
    public void DropPathIsIdentityAtEvalAndStochasticDepthInTraining()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(17);
        using var dp = new DropPath(0.5);
        var x = torch.randn(64, 3, 2, 5) + 3;
        dp.eval();
        Assert.That(Same(dp.forward(x), x), Is.True);
        dp.train();
        var y = dp.forward(x);
        // each sample is either dropped (all zeros) or kept and scaled by 1/(1-p) = 2
        int dropped = 0, kept = 0;
        for (int i = 0; i < 64; i++)
        {
            if (y[i].abs().max().item<float>() == 0f) dropped++;
            else if (torch.allclose(y[i], x[i] * 2)) kept++;
        }
        Assert.That(dropped + kept, Is.EqualTo(64));
        Assert.That(dropped, Is.InRange(10, 54));
        Assert.Throws<Sam3ConfigException>(() => new DropPath(1.0));
    }

    [Test]
    public void BlocksGetLinearDropPathRatesAndConfiguredWindows()
    {
        using var vit = new ViT(Sam3Config.Tiny);
        var c = Sam3Config.Tiny.Vit;
        for (int i = 0; i < c.Depth; i++)
        {
            Assert.That(vit.blocks[i].drop_path.drop_prob, Is.EqualTo(c.DropPathRate * i / (c.Depth - 1)).Within(1e-12));
            Assert.That(vit.blocks[i].window_size, Is.EqualTo(c.GlobalAttBlocks.Contains(i) ? 0 : c.WindowSize));
        }
    }

    [Test]
    public void UnsupportedConfigurationsAreConfigErrors()
    {
        var t = Sam3Config.Tiny;
        Assert.Throws<Sam3ConfigException>(() => new ViT(t with { Vit = t.Vit with { RetainClsToken = true } }));
        Assert.Throws<Sam3ConfigException>(() => new ViT(t with { Vit = t.Vit with { RelPosBlocks = [0] } }));
        Assert.Throws<Sam3ConfigException>(() => new ViT(t with { Vit = t.Vit with { GlobalAttBlocks = [] } }));
        Assert.Throws<Sam3ConfigException>(() => new Sam3DualViTDetNeck(t with { Neck = t.Neck with { ScaleFactors = [3.0] } }));
    }

    [Test]
    public void TrainingForwardBackpropagatesToEveryParameter()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(23);
        // drop_path_rate 0.1 (stochastic depth active in training); seeded, so no branch happens to be dropped for both samples
        using var neck = new Sam3DualViTDetNeck(Sam3Config.Tiny);
        neck.train();
        using (var o = neck.forward(torch.randn(2, 3, 336, 336)))
        {
            var loss = o.Sam3Out.Concat(o.Sam2Out!).Select(t => t.square().mean()).Aggregate((a, b) => a + b);
            loss.backward();
        }
        var noGrad = neck.named_parameters().Where(p => p.parameter.grad is null || p.parameter.grad.abs().sum().item<float>() == 0f)
            .Select(p => p.name).ToList();
        Assert.That(noGrad, Is.Empty, "parameters without gradient");
    }
}
