using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Decoder;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Decoder;

/// <summary>
/// The fused boxRPB kernel (<see cref="BoxRpbKernel"/>, issue 15 item 2) against a float64 evaluation of the same MLPs and
/// against the LibTorch path, within the worst-case fp32 rounding bound of the sums involved: for the bias element
/// <c>ey[y,k] + ex[x,k]</c>, each term is <c>b2 + Σ_j w2·relu(b1 + Σ_c w1·d_c)</c> (hidden + nIn + 2 roundings along any
/// summation order), so <c>|computed − exact| ≤ n·u·(T_x + T_y) + u·|exact|</c> with <c>T = |b2| + Σ_j |w2|(|b1| + Σ_c |w1 d_c|)</c>,
/// <c>n = hidden + nIn + 3</c>, <c>u = 2⁻²⁴</c>. The LibTorch path obeys the same bound (checked too: the bound is not
/// tailored to the kernel); a wrong index or a missing term would be off by O(|w2 h|), far above it.
/// </summary>
[TestFixture, Category("Fast")]
public class BoxRpbKernelTests
{
    private const double U = 1.0 / (1 << 24);

    private static int[] Paths()
    {
        var paths = new List<int> { 0 };
        foreach (var bits in new[] { 128, 256, 512 })
        {
            BoxRpbKernel.ForcedVectorBits = bits;
            if (BoxRpbKernel.PathBits(2, 64, 8) == bits) paths.Add(bits);
        }
        BoxRpbKernel.ForcedVectorBits = null;
        return paths.ToArray();
    }

    /// <summary>Exact (float64) table [B,Q,N,heads] and its rounding scale T for one axis MLP on fp32 inputs [B,Q,N,nIn].</summary>
    private static (Tensor Exact, Tensor Scale) Reference(Mlp mlp, Tensor d)
    {
        var w1 = mlp.layers[0].weight!.detach().to(ScalarType.Float64);
        var b1 = mlp.layers[0].bias!.detach().to(ScalarType.Float64);
        var w2 = mlp.layers[1].weight!.detach().to(ScalarType.Float64);
        var b2 = mlp.layers[1].bias!.detach().to(ScalarType.Float64);
        var x = d.to(ScalarType.Float64);
        var exact = nn.functional.linear(nn.functional.relu(nn.functional.linear(x, w1, b1)), w2, b2);
        var hiddenScale = nn.functional.linear(x.abs(), w1.abs(), b1.abs());
        var scale = nn.functional.linear(hiddenScale, w2.abs(), b2.abs());
        return (exact, scale);
    }

    private static void AssertWithinBound(Tensor got, Tensor dx, Tensor dy, Mlp mx, Mlp my, bool presenceRow, string what)
    {
        var (ex, tx) = Reference(mx, dx);
        var (ey, ty) = Reference(my, dy);
        int hidden = (int)mx.layers[0].weight!.shape[0], nIn = (int)dx.shape[3];
        long bs = dx.shape[0], q = dx.shape[1], w = dx.shape[2], h = dy.shape[2];
        // [B,Q,H,W,heads] → [B,heads,Q,H·W], as upstream
        Tensor HeadMajor(Tensor t) => t.flatten(2, 3).permute(0, 3, 1, 2);
        var exact = HeadMajor(ey.unsqueeze(3) + ex.unsqueeze(2));
        var scale = HeadMajor(ty.unsqueeze(3) + tx.unsqueeze(2));
        var bound = scale * ((hidden + nIn + 3) * U) + exact.abs() * U;
        var body = presenceRow ? got[.., .., TensorIndex.Slice(1, null)] : got;
        Assert.That(got.shape, Is.EqualTo(new[] { bs, mx.layers[1].weight!.shape[0], q + (presenceRow ? 1 : 0), h * w }), what);
        var excess = ((body.to(ScalarType.Float64) - exact).abs() - bound).max().item<double>();
        Assert.That(excess, Is.LessThanOrEqualTo(0.0), $"{what}: |Δ| exceeds the fp32 bound by {excess:G3} (max bound {bound.max().item<double>():G3})");
        if (presenceRow) Assert.That(got[.., .., 0].abs().max().item<float>(), Is.EqualTo(0f), $"{what}: presence row");
    }

    [Test]
    public void KernelAndLibTorchPathStayWithinTheFp32BoundOnRandomInputs()
    {
        using var _ = no_grad();
        // (heads, hidden, H, W): the released shape class (8 heads, vector paths), tiny's (4 heads: scalar path), odd widths
        foreach (var (heads, hidden, h, w) in new[] { (8, 64, 5, 11), (8, 256, 4, 16), (4, 32, 6, 7), (8, 24, 3, 9) })
        {
            using var scope = NewDisposeScope();
            torch.manual_seed(heads * 1000 + hidden);
            var mx = new Mlp(2, hidden, heads, 2);
            var my = new Mlp(2, hidden, heads, 2);
            // log-scaled deltas lie in about [-1.06, 1.06]; a wider range exercises the ReLU on both sides
            var dx = rand(2, 7, w, 2) * 3 - 1.5;
            var dy = rand(2, 7, h, 2) * 3 - 1.5;
            foreach (var bits in Paths())
            {
                BoxRpbKernel.ForcedVectorBits = bits;
                try
                {
                    foreach (var presence in new[] { true, false })
                        AssertWithinBound(BoxRpbKernel.Bias(dx, dy, mx, my, presence), dx, dy, mx, my, presence,
                            $"kernel, {heads} heads, hidden {hidden}, {h}×{w}, path {bits}, presence {presence}");
                }
                finally { BoxRpbKernel.ForcedVectorBits = null; }
            }
            // the same bound holds for LibTorch's construction (upstream's formula)
            var lib = (my.forward(dy).unsqueeze(3) + mx.forward(dx).unsqueeze(2)).flatten(2, 3).permute(0, 3, 1, 2);
            AssertWithinBound(lib, dx, dy, mx, my, false, $"LibTorch, {heads} heads, hidden {hidden}");
        }
    }

    [Test]
    public void GetRpbMatrixWithTheKernelMatchesThePlainPathAndDoesNotDependOnThreads()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        torch.manual_seed(11);
        // the released shape class: 8 heads, hidden = d_model (vector path), 40 queries so that two threads split them
        var cfg = Sam3Config.Tiny.Decoder with { NumHeads = 8, DModel = 64 };
        using var dec = new TransformerDecoder(cfg, Sam3Config.Tiny.HardcodedInClasses);
        dec.eval();
        var boxes = rand(40, 2, 4) * 0.6 + 0.2;
        const long h = 9, w = 13;
        dec.UseRpbKernel = false;
        var plain = dec.GetRpbMatrix(boxes, h, w, presenceRow: true);
        dec.UseRpbKernel = true;
        var fused = dec.GetRpbMatrix(boxes, h, w, presenceRow: true);
        Assert.That(fused.shape, Is.EqualTo(plain.shape));
        Assert.That(fused.is_contiguous(), Is.True);
        // the deltas by upstream's formula ("log" mode), then both constructions against the exact value within the bound
        var xyxy = BoxOps.CxcywhToXyxy(boxes).transpose(0, 1).reshape(-1, 1, 4);
        var dy = ((arange(0, h, dtype: ScalarType.Float32) / h).view(1, -1, 1) - xyxy[.., .., TensorIndex.Slice(1, 4, 2)]).view(2, 40, -1, 2);
        var dx = ((arange(0, w, dtype: ScalarType.Float32) / w).view(1, -1, 1) - xyxy[.., .., TensorIndex.Slice(0, 3, 2)]).view(2, 40, -1, 2);
        static Tensor Log(Tensor d)
        {
            var s = d * 8.0;
            return sign(s) * log2(s.abs() + 1.0) / 3.0;
        }
        AssertWithinBound(fused, Log(dx), Log(dy), dec.boxRPB_embed_x!, dec.boxRPB_embed_y!, true, "GetRpbMatrix, kernel");
        AssertWithinBound(plain, Log(dx), Log(dy), dec.boxRPB_embed_x!, dec.boxRPB_embed_y!, true, "GetRpbMatrix, LibTorch");
        Assert.That(fused.eq(plain).all().item<bool>(), Is.False, "the kernel ran (another summation order changes some last bits)");
        int threads = torch.get_num_threads();
        try
        {
            torch.set_num_threads(1);
            var one = dec.GetRpbMatrix(boxes, h, w, presenceRow: true);
            torch.set_num_threads(2);
            var two = dec.GetRpbMatrix(boxes, h, w, presenceRow: true);
            Assert.That(one.eq(two).all().item<bool>(), Is.True, "each query's rows are computed alone: bit-identical for any thread count");
            Assert.That(one.eq(fused).all().item<bool>(), Is.True);
        }
        finally { torch.set_num_threads(threads); }
        // a batch's image 1 equals that image alone (batched and single predictors agree bit for bit)
        var single = dec.GetRpbMatrix(boxes[.., TensorIndex.Slice(1, 2)], h, w, presenceRow: true);
        Assert.That(single[0].eq(fused[1]).all().item<bool>(), Is.True, "per-image rows do not depend on the batch");
    }

    [Test]
    public void WithGradientsOrInTrainingTheKernelIsNotUsed()
    {
        torch.manual_seed(12);
        using var dec = new TransformerDecoder(Sam3Config.Tiny);
        using var scope = NewDisposeScope();
        var boxes = rand(4, 1, 4) * 0.6 + 0.2;
        dec.train();
        using (no_grad())
        {
            dec.UseRpbKernel = false;
            var lib = dec.GetRpbMatrix(boxes, 3, 5);
            dec.UseRpbKernel = true;
            Assert.That(dec.GetRpbMatrix(boxes, 3, 5).eq(lib).all().item<bool>(), Is.True, "training mode: the LibTorch path");
        }
        dec.eval();
        var withGrad = dec.GetRpbMatrix(boxes.requires_grad_(true), 3, 5);
        Assert.That(withGrad.requires_grad, Is.True, "gradients on: the autograd path");
    }

    [Test, Category("Parity")]
    public void DecoderOnFixtureAWithTheKernelStaysCloseToThePlainPath()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var dec = new TransformerDecoder(Sam3Config.Tiny);
        TinyWeights.LoadInto(dec, DetectorHeadLayoutTests.DecoderPrefix);
        dec.eval();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var memory = fx.Get("enc.out.memory");
        var (h, w) = DetectorFixtures.FeatSize(fx, Sam3Config.Tiny);
        var tgt = dec.query_embed.weight!.detach().unsqueeze(1).repeat(1, memory.shape[1], 1);
        TransformerDecoderOutput Run(bool kernel)
        {
            dec.UseRpbKernel = kernel;
            return dec.forward(tgt, memory, fx.Get("enc.out.pos_embed"), h, w, fx.Get("enc.out.memory_text"),
                DetectorFixtures.PromptMask(fx, ""), applyDac: false);
        }
        using var plain = Run(false);
        using var fused = Run(true);
        // the parity bar of the decoder fixtures (TransformerDecoderTests) is 1e-4 absolute on hs; the kernel moves the bias by
        // rounding only, so the outputs stay well inside it
        Assert.Multiple(() =>
        {
            Assert.That((fused.Hs - plain.Hs).abs().max().item<float>(), Is.LessThan(1e-5f), "hs");
            Assert.That((fused.ReferenceBoxes - plain.ReferenceBoxes).abs().max().item<float>(), Is.LessThan(1e-6f), "boxes");
            Assert.That((fused.PresenceLogits! - plain.PresenceLogits!).abs().max().item<float>(), Is.LessThan(1e-5f), "presence");
        });
    }
}
