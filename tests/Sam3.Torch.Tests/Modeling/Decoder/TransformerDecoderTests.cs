using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Decoder;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Decoder;

[TestFixture, Category("Fast")]
public class TransformerDecoderTests
{
    private static TransformerDecoder LoadTiny(Sam3Config? cfg = null)
    {
        var dec = new TransformerDecoder(cfg ?? Sam3Config.Tiny);
        TinyWeights.LoadInto(dec, DetectorHeadLayoutTests.DecoderPrefix);
        return dec;
    }

    private sealed record DecoderInputs(Tensor Tgt, Tensor Memory, Tensor Pos, long H, long W, Tensor Prompt, Tensor Mask);

    private static DecoderInputs Inputs(ScenarioFixture fx, string prefix, TransformerDecoder dec)
    {
        var memory = fx.Get(prefix + "enc.out.memory");
        var (h, w) = DetectorFixtures.FeatSize(fx, Sam3Config.Tiny);
        var tgt = dec.query_embed.weight!.detach().unsqueeze(1).repeat(1, memory.shape[1], 1);
        return new DecoderInputs(tgt, memory, fx.Get(prefix + "enc.out.pos_embed"), h, w,
            fx.Get(prefix + "enc.out.memory_text"), DetectorFixtures.PromptMask(fx, prefix));
    }

    /// <summary>
    /// Decoder from the recorded encoder outputs; compares every recorded decoder tensor of every image/step: per-layer boxRPB
    /// (dec.rpb, dec.rpb#2, ...), per-layer queries and presence token (dec.layer{i}.{0,1}) where recorded, and dec.out.{0..3}.
    /// </summary>
    [TestCaseSource(typeof(DetectorFixtures), nameof(DetectorFixtures.GroundingScenarios))]
    public void DecoderMatchesTheReference(string scenario)
    {
        using var fx = Fixtures.Tiny(scenario);
        using var dec = LoadTiny();
        dec.eval();
        using var _ = no_grad();
        var results = new List<ComparisonResult>();
        var required = new List<string>();
        var prefixes = DetectorFixtures.Prefixes(fx, "enc.out.memory");
        Assert.That(prefixes, Is.Not.Empty);
        foreach (var p in prefixes)
        {
            using var scope = NewDisposeScope();
            var inp = Inputs(fx, p, dec);
            var cmp = new ProbeComparer(fx, p + "dec.");
            using var o = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask, applyDac: false, probe: cmp.Probe);
            cmp.Compare(p + "dec.out.0", o.Hs);
            cmp.Compare(p + "dec.out.1", o.ReferenceBoxes);
            cmp.Compare(p + "dec.out.2", o.PresenceLogits!);
            cmp.Compare(p + "dec.out.3", o.PresenceFeats!);
            results.AddRange(cmp.Results);
            required.AddRange(fx.Tensors.Keys.Where(k => k.StartsWith(p + "dec.", StringComparison.Ordinal)));
        }
        if (scenario == "a_image_text")
            Assert.That(required, Does.Contain("dec.rpb#3").And.Contain("dec.layer2.1"), "scenario a records the per-layer tensors");
        ProbeComparer.AssertAll(results, required);
    }

    [Test]
    public void PresenceClampQuirkIsReproducedByDefaultAndCanBeApplied()
    {
        // The tiny presence head bias is +3; scale its last layer so the logits exceed the clamp bound of 10.
        using var fx = Fixtures.Tiny("a_image_text");
        using var dec = LoadTiny();
        dec.eval();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var last = dec.presence_token_head!.layers[dec.presence_token_head.layers.Count - 1];
        last.bias!.add_(20.0);
        var inp = Inputs(fx, "", dec);
        Assert.That(dec.ClampPresenceLogitsIsEffective, Is.False, "default must reproduce the upstream no-op");
        using var raw = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask, applyDac: false);
        double max = dec.clamp_presence_logit_max_val;
        Assert.That(raw.PresenceLogits!.max().item<float>(), Is.GreaterThan(max), "test setup: logits must exceed the bound");
        dec.ClampPresenceLogitsIsEffective = true;
        using var clamped = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask, applyDac: false);
        var expected = raw.PresenceLogits!.clamp(-max, max);
        Assert.That((clamped.PresenceLogits! - expected).abs().max().item<float>(), Is.EqualTo(0f));
        Assert.That((clamped.Hs - raw.Hs).abs().max().item<float>(), Is.EqualTo(0f), "clamp touches only the logits");
    }

    /// <summary>
    /// DAC (decoder.py): the queries are duplicated; the first ("one-to-one") half plus the presence token run exactly the
    /// non-DAC computation (self-attention sees only them; text/image cross-attention, FFN, norms and box refinement are
    /// per query), so with dropout 0 the first half of a DAC run must equal a DAC-off run.
    /// </summary>
    [Test]
    public void DacFirstHalfEqualsTheNonDacRun()
    {
        var cfg = Sam3Config.Tiny with { HardcodedInClasses = Sam3Config.Tiny.HardcodedInClasses with { DecoderDropout = 0.0 } };
        using var fx = Fixtures.Tiny("a_image_text");
        using var dec = LoadTiny(cfg);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var inp = Inputs(fx, "", dec);
        dec.eval();
        using var plain = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask, applyDac: dec.dac && dec.training);
        dec.train();
        using var dac = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask, applyDac: dec.dac && dec.training);
        long q = Sam3Config.Tiny.Decoder.NumQueries;
        int l = Sam3Config.Tiny.Decoder.NumLayers;
        Assert.That(dac.Hs.shape, Is.EqualTo(new long[] { l, 2 * q, 1, 32 }));
        Assert.That(dac.ReferenceBoxes.shape, Is.EqualTo(new long[] { l, 2 * q, 1, 4 }));
        var first = TensorIndex.Slice(0, q);
        double hsErr = (dac.Hs[.., first] - plain.Hs).abs().max().item<float>();
        double refErr = (dac.ReferenceBoxes[.., first] - plain.ReferenceBoxes).abs().max().item<float>();
        double presErr = (dac.PresenceLogits! - plain.PresenceLogits!).abs().max().item<float>();
        TestContext.Out.WriteLine($"DAC o2o vs plain: hs {hsErr:G3}, boxes {refErr:G3}, presence {presErr:G3}");
        Assert.That(hsErr, Is.LessThan(1e-5));
        Assert.That(refErr, Is.LessThan(1e-6));
        Assert.That(presErr, Is.LessThan(1e-5));
        // and the second half differs (it skipped self-attention)
        double o2mDiff = (dac.Hs[.., TensorIndex.Slice(q, null)] - plain.Hs).abs().max().item<float>();
        Assert.That(o2mDiff, Is.GreaterThan(1e-3));
    }

    /// <summary>The one-to-many half never enters self-attention: changing self_attn weights leaves it unchanged.</summary>
    [Test]
    public void DacOneToManyHalfIgnoresSelfAttention()
    {
        var cfg = Sam3Config.Tiny with { HardcodedInClasses = Sam3Config.Tiny.HardcodedInClasses with { DecoderDropout = 0.0 } };
        using var fx = Fixtures.Tiny("a_image_text");
        using var dec = LoadTiny(cfg);
        dec.train();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var inp = Inputs(fx, "", dec);
        using var before = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask, applyDac: true);
        torch.manual_seed(3);
        foreach (var layer in dec.layers)
        {
            layer.self_attn.in_proj_weight.add_(torch.randn_like(layer.self_attn.in_proj_weight) * 0.5);
            layer.self_attn.out_proj.weight!.add_(torch.randn_like(layer.self_attn.out_proj.weight!) * 0.5);
        }
        using var after = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask, applyDac: true);
        long q = Sam3Config.Tiny.Decoder.NumQueries;
        var o2m = TensorIndex.Slice(q, null);
        var o2o = TensorIndex.Slice(0, q);
        double o2mErr = (after.Hs[.., o2m] - before.Hs[.., o2m]).abs().max().item<float>();
        double o2oDiff = (after.Hs[.., o2o] - before.Hs[.., o2o]).abs().max().item<float>();
        TestContext.Out.WriteLine($"o2m change {o2mErr:G3}, o2o change {o2oDiff:G3}");
        Assert.That(o2mErr, Is.LessThan(1e-6));
        Assert.That(o2oDiff, Is.GreaterThan(1e-3), "the o2o half must react to the self-attention change");
    }

    /// <summary>As upstream, apply_dac=None means self.dac (even at eval); Sam3ImageModel passes dac &amp;&amp; training explicitly.</summary>
    [Test]
    public void ApplyDacDefaultsToTheConfiguredDac()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var dec = LoadTiny();
        dec.eval();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var inp = Inputs(fx, "", dec);
        using var o = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask);
        Assert.That(o.Hs.shape[1], Is.EqualTo(2 * Sam3Config.Tiny.Decoder.NumQueries));
    }

    [Test]
    public void TrainingModeAppliesDropout()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var dec = LoadTiny();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var inp = Inputs(fx, "", dec);
        dec.train();
        torch.manual_seed(1);
        using var a = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask, applyDac: false);
        torch.manual_seed(2);
        using var b = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask, applyDac: false);
        Assert.That((a.Hs - b.Hs).abs().max().item<float>(), Is.GreaterThan(1e-3), "dropout 0.1 must act when training");
        dec.eval();
        using var c = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask, applyDac: false);
        using var d = dec.forward(inp.Tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask, applyDac: false);
        Assert.That((c.Hs - d.Hs).abs().max().item<float>(), Is.EqualTo(0f));
    }

    [Test]
    public void GradientsReachTheDecoderWeightsInTraining()
    {
        var cfg = Sam3Config.Tiny with { HardcodedInClasses = Sam3Config.Tiny.HardcodedInClasses with { DecoderDropout = 0.0 } };
        using var fx = Fixtures.Tiny("a_image_text");
        using var dec = LoadTiny(cfg);
        dec.train();
        using var scope = NewDisposeScope();
        var inp = Inputs(fx, "", dec);
        var tgt = dec.query_embed.weight!.unsqueeze(1).repeat(1, 1, 1);
        using var o = dec.forward(tgt, inp.Memory, inp.Pos, inp.H, inp.W, inp.Prompt, inp.Mask);
        var loss = o.Hs.pow(2).mean() + o.ReferenceBoxes.sum() + o.PresenceLogits!.sum();
        loss.backward();
        Assert.That(dec.query_embed.weight!.grad, Is.Not.Null);
        Assert.That(dec.reference_points.weight!.grad, Is.Not.Null, "layer-0 boxes = sigmoid(reference_points) carry gradient");
        Assert.That(dec.layers[0].self_attn.in_proj_weight.grad!.abs().sum().item<float>(), Is.GreaterThan(0f));
        Assert.That(dec.bbox_embed.layers[0].weight!.grad!.abs().sum().item<float>(), Is.GreaterThan(0f));
    }

    [Test]
    public void RpbLogFormulaMatchesHandComputation()
    {
        // One box, 2x3 grid: deltas to x0/x1 and y0/y1 → ×8 → sign·log2(|d|+1)/3 → per-axis MLP → dy + dx.
        using var dec = LoadTiny();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var box = tensor(new[] { 0.5f, 0.4f, 0.2f, 0.6f }).view(1, 1, 4); // cx,cy,w,h -> x0 .4 x1 .6 y0 .1 y1 .7
        var got = dec.GetRpbMatrix(box, 2, 3); // [1,heads,1,6]
        static Tensor Log(float[] d) => tensor(d.Select(v => MathF.Sign(v * 8) * MathF.Log2(MathF.Abs(v * 8) + 1) / 3f).ToArray());
        var xs = new[] { 0f, 1f / 3, 2f / 3 };
        var ys = new[] { 0f, 0.5f };
        var dx = stack(xs.Select(x => Log([x - 0.4f, x - 0.6f])).ToArray()); // W,2
        var dy = stack(ys.Select(y => Log([y - 0.1f, y - 0.7f])).ToArray()); // H,2
        var ex = dec.boxRPB_embed_x!.forward(dx); // W,heads
        var ey = dec.boxRPB_embed_y!.forward(dy); // H,heads
        var expected = (ey.unsqueeze(1) + ex.unsqueeze(0)).reshape(6, -1).T; // heads, HW (row-major y, x)
        Assert.That(got.shape, Is.EqualTo(new long[] { 1, 4, 1, 6 }));
        Assert.That((got[0, .., 0] - expected).abs().max().item<float>(), Is.LessThan(1e-5f));
    }

    [Test]
    public void BadInputsAreTypedErrors()
    {
        using var dec = new TransformerDecoder(Sam3Config.Tiny);
        using var scope = NewDisposeScope();
        var tgt = zeros(16, 1, 32);
        var mem = zeros(576, 1, 32);
        Assert.Throws<Sam3Exception>(() => dec.forward(zeros(16, 1, 31), mem, mem, 24, 24));
        Assert.Throws<Sam3Exception>(() => dec.forward(tgt, zeros(500, 1, 32), null, 24, 24));
        Assert.Throws<Sam3Exception>(() => dec.forward(zeros(15, 1, 32), mem, mem, 24, 24, applyDac: true));
        Assert.Throws<Sam3Exception>(() => dec.forward(tgt, mem, mem, 24, 24, applyDac: false), "text cross-attention without a prompt");
    }
}
