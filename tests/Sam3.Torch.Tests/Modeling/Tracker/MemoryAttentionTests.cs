using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Tracker;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Tracker;

/// <summary>
/// The memory attention with the tiny tracker weights against an independent float64 implementation of guide §3.3/§4.27
/// (scenario e records no inputs of this module, so its outputs cannot be fed in isolation; see the report). The
/// current-frame PE is scenario e's recorded pos_embed.
/// </summary>
[TestFixture, Category("Fast")]
public class MemoryAttentionTests
{
    private static Tensor LayerNorm64(Tensor x, LayerNorm ln)
    {
        var mean = x.mean([-1], keepdim: true);
        var var_ = (x - mean).pow(2).mean([-1], keepdim: true);
        return (x - mean) / torch.sqrt(var_ + 1e-5) * ln.weight!.to(ScalarType.Float64) + ln.bias!.to(ScalarType.Float64);
    }

    private static Tensor Linear64(Tensor x, Linear l) => x.matmul(l.weight!.to(ScalarType.Float64).T) + l.bias!.to(ScalarType.Float64);

    [Test]
    public void MemoryAttentionEqualsManualPreNormRopeLayers()
    {
        var cfg = Sam3Config.Tiny;
        using var fx = Fixtures.Tiny("e_tracker_video");
        using var enc = new TransformerEncoderCrossAttention(cfg);
        TinyWeights.LoadInto(enc, "tracker.transformer.encoder.");
        enc.eval();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        torch.manual_seed(3);
        int n = cfg.Tracker.ImageEmbeddingSize, d = cfg.Tracker.HiddenDim, mem = cfg.Tracker.MemDim;
        long hw = n * n, b = 2, nPtrTokens = 2 * (d / mem);
        var srcPos = fx.Get("frame1.mem_attn.pos_embed"); // [HW, B, d] recorded neck PE
        var src = torch.randn(hw, b, d);
        var prompt = torch.randn(2 * hw + nPtrTokens, b, mem);
        var promptPos = torch.randn(2 * hw + nPtrTokens, b, mem) * 0.5;

        using var got = enc.forward(src, prompt, srcPos, promptPos, (int)nPtrTokens);
        Assert.That(got.PosEmbed!.eq(srcPos).all().item<bool>(), Is.True, "pos_embed is the input src_pos");

        // reference: x = src + 0.1·pos; per layer x += SA(LN1 x); x += CA(LN2 x, mem + mem_pos, mem); x += FFN(LN3 x); LN
        var x = (src + 0.1 * srcPos).to(ScalarType.Float64).transpose(0, 1);
        var m = prompt.to(ScalarType.Float64).transpose(0, 1);
        var mp = promptPos.to(ScalarType.Float64).transpose(0, 1);
        foreach (var layer in enc.layers)
        {
            var t2 = LayerNorm64(x, layer.norm1);
            x = x + RoPEAttentionTests.ManualRopeAttention(layer.self_attn, t2, t2, t2, n, hw);
            t2 = LayerNorm64(x, layer.norm2);
            x = x + RoPEAttentionTests.ManualRopeAttention(layer.cross_attn_image, t2, m + mp, m, n, 2 * hw);
            t2 = LayerNorm64(x, layer.norm3);
            x = x + Linear64(nn.functional.relu(Linear64(t2, layer.linear1)), layer.linear2);
        }
        var expected = LayerNorm64(x, enc.norm).transpose(0, 1);
        double err = (got.Memory.to(ScalarType.Float64) - expected).abs().max().item<double>();
        TestContext.Out.WriteLine($"memory attention vs float64 reference: max abs error {err:G3}");
        Assert.That(err, Is.LessThan(1e-4));
    }

    [Test]
    public void RecordedPosEmbedIsTheNeckSinePositionEncoding()
    {
        // the memory attention's pos_embed output is its src_pos input: in scenario e that is the SAM2 neck's PE of level 2
        var cfg = Sam3Config.Tiny;
        using var fx = Fixtures.Tiny("e_tracker_video");
        using var pe = new Sam3.Torch.Modeling.Common.PositionEmbeddingSine(cfg.PositionEncoding with { NumPosFeats = cfg.Neck.DModel });
        using var scope = NewDisposeScope();
        int n = cfg.Tracker.ImageEmbeddingSize;
        var grid = pe.forward(torch.zeros(2, 1, n, n)).flatten(2).permute(2, 0, 1);
        for (int k = 1; k <= 7; k++) Fixtures.AssertClose(fx, $"frame{k}.mem_attn.pos_embed", grid);
    }
}
