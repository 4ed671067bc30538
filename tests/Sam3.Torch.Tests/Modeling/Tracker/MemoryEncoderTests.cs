using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Tracker;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Tracker;

/// <summary>
/// Memory encoder (SimpleMaskEncoder, CXBlock, SimpleMaskDownSampler) and the tracker's memory helpers, with the tiny
/// tracker weights: position encodings against scenario e, the rest against float64 re-computations of the formulas.
/// </summary>
[TestFixture, Category("Fast")]
public class MemoryEncoderTests
{
    private Sam3TrackerBase _tracker = null!;

    [OneTimeSetUp]
    public void Load()
    {
        _tracker = new Sam3TrackerBase(Sam3Config.Tiny);
        TinyWeights.LoadInto(_tracker, "tracker.");
        _tracker.eval();
    }

    [OneTimeTearDown]
    public void Unload() => _tracker?.Dispose();

    private static Tensor D(Tensor t) => t.to(ScalarType.Float64);

    private static Tensor LayerNorm2d64(Tensor x, Sam3.Torch.Modeling.Common.LayerNorm2d ln, double eps)
    {
        var u = x.mean([1], keepdim: true);
        var s = (x - u).pow(2).mean([1], keepdim: true);
        return (x - u) / torch.sqrt(s + eps) * D(ln.weight).reshape(1, -1, 1, 1) + D(ln.bias).reshape(1, -1, 1, 1);
    }

    private static Tensor Gelu64(Tensor x) => 0.5 * x * (1 + torch.special.erf(x / Math.Sqrt(2)));

    [Test]
    public void PositionEncodingEqualsScenarioE()
    {
        var cfg = Sam3Config.Tiny;
        using var fx = Fixtures.Tiny("e_tracker_video");
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        int n = cfg.Tracker.ImageEmbeddingSize;
        using var mem = _tracker.maskmem_backbone.forward(torch.randn(2, cfg.Tracker.HiddenDim, n, n), torch.randn(2, 1, cfg.Tracker.ImageSize, cfg.Tracker.ImageSize));
        Assert.That(mem.VisionFeatures.shape, Is.EqualTo(new long[] { 2, cfg.Tracker.MemDim, n, n }));
        for (int k = 0; k <= 7; k++) Fixtures.AssertClose(fx, $"frame{k}.mem_enc.vision_pos_enc.0", mem.VisionPosEnc);
    }

    [Test]
    public void CXBlockEqualsFormula()
    {
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var blk = _tracker.maskmem_backbone.fuser.layers[1];
        double eps = Sam3Config.Tiny.HardcodedInClasses.MemoryLayerNorm2dEps;
        var x = torch.randn(2, 32, 9, 7);
        var got = blk.forward(x);
        // depthwise 7×7 conv (padding 3) → LN2d → per-pixel Linear(d,4d) → GELU(erf) → Linear(4d,d) → γ → residual
        var y = nn.functional.conv2d(D(x), D(blk.dwconv.weight!), D(blk.dwconv.bias!), padding: [3, 3], groups: 32);
        y = LayerNorm2d64(y, blk.norm, eps).permute(0, 2, 3, 1);
        y = Gelu64(y.matmul(D(blk.pwconv1.weight!).T) + D(blk.pwconv1.bias!));
        y = (y.matmul(D(blk.pwconv2.weight!).T) + D(blk.pwconv2.bias!)) * D(blk.gamma!);
        var expected = D(x) + y.permute(0, 3, 1, 2);
        Assert.That((D(got) - expected).abs().max().item<double>(), Is.LessThan(1e-5));
    }

    [Test]
    public void MaskDownsamplerResizesWithAntialiasThenStridedConvs()
    {
        var cfg = Sam3Config.Tiny;
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var ds = _tracker.maskmem_backbone.mask_downsampler;
        double eps = cfg.HardcodedInClasses.MemoryLayerNorm2dEps;
        var mask = torch.rand(1, 1, cfg.Tracker.ImageSize, cfg.Tracker.ImageSize) * 20 - 10;
        var got = ds.forward(mask);
        int s = cfg.Tracker.MemoryEncoder.MaskDownsampler.InterpolSize[0];
        var x = D(nn.functional.interpolate(mask, [s, s], mode: InterpolationMode.Bilinear, align_corners: false, antialias: true));
        var mods = ds.encoder.children().ToArray();
        Assert.That(mods.Length, Is.EqualTo(13), "4 × (conv, LN2d, GELU) + final 1×1 conv");
        for (int i = 0; i < 4; i++)
        {
            var conv = (TorchSharp.Modules.Conv2d)mods[3 * i];
            x = nn.functional.conv2d(x, D(conv.weight!), D(conv.bias!), strides: [2, 2], padding: [1, 1]);
            x = Gelu64(LayerNorm2d64(x, (Sam3.Torch.Modeling.Common.LayerNorm2d)mods[3 * i + 1], eps));
            Assert.That(x.shape[1], Is.EqualTo((long)Math.Pow(4, i + 1)), "channels grow by stride²");
        }
        var last = (TorchSharp.Modules.Conv2d)mods[12];
        x = nn.functional.conv2d(x, D(last.weight!), D(last.bias!));
        Assert.That(got.shape, Is.EqualTo(new long[] { 1, 32, s / 16, s / 16 }));
        Assert.That((D(got) - x).abs().max().item<double>(), Is.LessThan(1e-4));
    }

    [Test]
    public void MaskEncoderComposesItsParts()
    {
        var cfg = Sam3Config.Tiny;
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var me = _tracker.maskmem_backbone;
        int n = cfg.Tracker.ImageEmbeddingSize;
        var pix = torch.randn(2, 32, n, n);
        var logits = torch.randn(2, 1, cfg.Tracker.ImageSize, cfg.Tracker.ImageSize) * 5;
        using var got = me.forward(pix, logits);
        var expected = me.out_proj!.forward(me.fuser.forward(me.pix_feat_proj.forward(pix) + me.mask_downsampler.forward(logits.sigmoid())));
        Assert.That((got.VisionFeatures - expected).abs().max().item<float>(), Is.LessThan(1e-5f));
        using var skipped = me.forward(pix, logits.sigmoid(), skipMaskSigmoid: true);
        Assert.That((skipped.VisionFeatures - expected).abs().max().item<float>(), Is.LessThan(1e-5f));
    }

    [Test]
    public void EncodeNewMemoryBinarisesPointMasksScalesAndAddsNoObjectEmbedding()
    {
        var cfg = Sam3Config.Tiny;
        var hc = cfg.HardcodedInClasses;
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        int n = cfg.Tracker.ImageEmbeddingSize, s = cfg.Tracker.ImageSize;
        var pix = torch.randn(2, 32, n, n);
        var logits = torch.randn(2, 1, s, s) * 3;
        var scores = torch.tensor(new float[] { 1.5f, -0.5f }).reshape(2, 1); // object 2 absent

        using var fromPts = _tracker.EncodeNewMemory(pix, logits, scores, isMaskFromPts: true);
        using var raw = _tracker.maskmem_backbone.forward(pix, logits.gt(0).to(ScalarType.Float32) * hc.SigmoidScaleForMemEnc + hc.SigmoidBiasForMemEnc, skipMaskSigmoid: true);
        Assert.That((fromPts.VisionFeatures[0] - raw.VisionFeatures[0]).abs().max().item<float>(), Is.LessThan(1e-6f), "present object: plain encoder output");
        var noObj = _tracker.no_obj_embed_spatial[0].reshape(-1, 1, 1);
        Assert.That((fromPts.VisionFeatures[1] - raw.VisionFeatures[1] - noObj).abs().max().item<float>(), Is.LessThan(1e-5f), "absent object: + no_obj_embed_spatial");

        using var fromSigmoid = _tracker.EncodeNewMemory(pix, logits, scores, isMaskFromPts: false);
        using var rawSig = _tracker.maskmem_backbone.forward(pix, logits.sigmoid() * hc.SigmoidScaleForMemEnc + hc.SigmoidBiasForMemEnc, skipMaskSigmoid: true);
        Assert.That((fromSigmoid.VisionFeatures[0] - rawSig.VisionFeatures[0]).abs().max().item<float>(), Is.LessThan(1e-6f));
    }

    [Test]
    public void TemporalPointerEncodingFollowsGet1dSinePe()
    {
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        int d = Sam3Config.Tiny.Tracker.HiddenDim;
        var rel = new[] { 0, 1, 3, 15 };
        var got = _tracker.GetTposEnc(rel, 16);
        // pe_i(p) = sin/cos(p / 10000^(2⌊i/2⌋/(d/2))), concatenated [sin (d/2), cos (d/2)], p = rel / (16 − 1)
        var pe = torch.zeros(rel.Length, d, dtype: ScalarType.Float64);
        for (int r = 0; r < rel.Length; r++)
            for (int i = 0; i < d / 2; i++)
            {
                double a = rel[r] / 15.0 / Math.Pow(10000, 2.0 * (i / 2) / (d / 2));
                pe[r, i] = Math.Sin(a);
                pe[r, i + d / 2] = Math.Cos(a);
            }
        var expected = pe.matmul(D(_tracker.obj_ptr_tpos_proj.weight!).T) + D(_tracker.obj_ptr_tpos_proj.bias!);
        Assert.That((D(got) - expected).abs().max().item<double>(), Is.LessThan(1e-5));
    }

    [Test]
    public void MemoryConditioningBuildsTheMemoryTokensAsUpstream()
    {
        var cfg = Sam3Config.Tiny;
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        int n = cfg.Tracker.ImageEmbeddingSize, c = cfg.Tracker.HiddenDim, mem = cfg.Tracker.MemDim, nm = cfg.Tracker.NumMaskmem;
        long b = 2, hw = n * n;
        var cur = torch.randn(hw, b, c);
        var curPos = torch.randn(hw, b, c);
        var frames = new[]
        {
            new MemoryFrame(torch.randn(b, mem, n, n), torch.randn(b, mem, n, n), 0),
            new MemoryFrame(torch.randn(b, mem, n, n), torch.randn(b, mem, n, n), 6),
        };
        var ptrs = new[] { new ObjectPointer(3, torch.randn(b, c)), new ObjectPointer(1, torch.randn(b, c)) };
        var got = _tracker.PrepareMemoryConditionedFeatures(cur, curPos, n, n, frames, ptrs, 8);

        // by hand: spatial tokens (HW per frame) with pos + maskmem_tpos_enc[num_maskmem − t − 1]; each pointer split into
        // C/mem_dim consecutive tokens of mem_dim channels, all with that pointer's temporal encoding
        var prompt = new List<Tensor>(); var pos = new List<Tensor>();
        foreach (var f in frames)
        {
            prompt.Add(f.Features.flatten(2).permute(2, 0, 1));
            pos.Add(f.PosEnc.flatten(2).permute(2, 0, 1) + _tracker.maskmem_tpos_enc[nm - f.TPos - 1].reshape(1, 1, mem));
        }
        var tpos = _tracker.GetTposEnc(ptrs.Select(p => p.RelPos).ToArray(), 8);
        for (int p = 0; p < ptrs.Length; p++)
            for (int sidx = 0; sidx < c / mem; sidx++)
            {
                prompt.Add(ptrs[p].Ptr[.., TensorIndex.Slice(sidx * mem, (sidx + 1) * mem)].unsqueeze(0));
                pos.Add(tpos[p].reshape(1, 1, mem).expand(1, b, mem));
            }
        using var outp = _tracker.transformer.encoder.forward(cur, torch.cat(prompt, 0), curPos, torch.cat(pos, 0), ptrs.Length * (c / mem));
        var expected = outp.Memory.permute(1, 2, 0).reshape(b, c, n, n);
        Assert.That((got - expected).abs().max().item<float>(), Is.LessThan(1e-6f));

        var noMem = _tracker.NoMemoryFeatures(cur, n, n);
        Assert.That((noMem - (cur + _tracker.no_mem_embed).permute(1, 2, 0).reshape(b, c, n, n)).abs().max().item<float>(), Is.EqualTo(0f));
    }
}
