using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Encoder;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Modeling.Text;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Encoder;

[TestFixture, Category("Fast")]
public class FusionEncoderTests
{
    private const string Prefix = "detector.transformer.encoder.";

    private static TransformerEncoderFusion Tiny()
    {
        var m = new TransformerEncoderFusion(Sam3Config.Tiny);
        TinyWeights.LoadInto(m, Prefix);
        m.eval();
        return m;
    }


    /// <summary>Image position encoding of a level, computed with the neck's PositionEmbeddingSine (seq-first).</summary>
    private static Tensor NeckPos(Tensor nchw)
    {
        var cfg = Sam3Config.Tiny;
        using var pe = new PositionEmbeddingSine(cfg.PositionEncoding with { NumPosFeats = cfg.Neck.DModel });
        return Fixtures.SeqFirst(pe.forward(nchw));
    }

    private static void AssertOutputs(ScenarioFixture fx, string prefix, EncoderFusionOutput o)
    {
        Fixtures.AssertClose(fx, prefix + "enc.out.memory", o.Memory);
        Fixtures.AssertClose(fx, prefix + "enc.out.pos_embed", o.PosEmbed);
        Fixtures.AssertClose(fx, prefix + "enc.out.memory_text", o.MemoryText);
        Assert.That(o.PaddingMask, Is.Null);
    }

    [Test]
    public void KeysAndShapesMatchTinyCheckpoint()
    {
        using var m = new TransformerEncoderFusion(Sam3Config.Tiny);
        KeyLayout.AssertMatches(m, KeyLayout.Tiny(Prefix));
    }

    [Test]
    public void KeysShapesAndParameterCountMatchFullCheckpointOnMeta()
    {
        using var m = KeyLayout.OnMeta(() => new TransformerEncoderFusion(Sam3Config.Full));
        KeyLayout.AssertMatches(m, KeyLayout.Full(Prefix));
        Assert.That(KeyLayout.ParameterCount(m), Is.EqualTo(KeyLayout.FullParamCount(Prefix.TrimEnd('.'))));
    }

    [Test]
    public void ScenarioA_LayersAndOutputsMatchReference()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var feat = fx.Get("neck.sam3_fpn.2");
        var prompt = fx.Get("enc.out.memory_text");                        // cat(text features, geometry output)
        var promptMask = torch.cat([fx.Get("text.out.0"), fx.Get("geo.out.1")], 1);
        var layers = new List<Tensor>();
        var o = m.forward([Fixtures.SeqFirst(feat)], [Fixtures.Hw(feat)], [Fixtures.SeqFirst(fx.Get("neck.sam3_pos.2"))], prompt, promptMask, layerOutputs: layers);
        Assert.That(layers, Has.Count.EqualTo(Sam3Config.Tiny.Encoder.NumLayers));
        for (int i = 0; i < layers.Count; i++) Fixtures.AssertClose(fx, $"enc.layer{i}", layers[i]);
        AssertOutputs(fx, "", o);
        Assert.That(o.SpatialShapes.data<long>().ToArray(), Is.EqualTo(new long[] { feat.shape[2], feat.shape[3] }));
        Assert.That(o.LevelStartIndex.data<long>().ToArray(), Is.EqualTo(new long[] { 0 }));
        Assert.That(o.ValidRatios.eq(1).all().item<bool>(), Is.True);
    }

    [Test]
    public void ScenarioB_EachImageAndBothImagesBatched()
    {
        using var fx = Fixtures.Tiny("b_image_batch_text");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var feat = fx.Get("neck.sam3_fpn.2");
        int n = (int)feat.shape[0];
        var prompts = new List<Tensor>();
        var masks = new List<Tensor>();
        for (int i = 0; i < n; i++)
        {
            var fi = feat[TensorIndex.Slice(i, i + 1)];
            var prompt = fx.Get($"img{i}.enc.out.memory_text");
            var mask = torch.cat([fx.Get("text.out.0"), fx.Get($"img{i}.geo.out.1")], 1);
            prompts.Add(prompt);
            masks.Add(mask);
            AssertOutputs(fx, $"img{i}.", m.forward([Fixtures.SeqFirst(fi)], [Fixtures.Hw(fi)], [NeckPos(fi)], prompt, mask));
        }
        var ob = m.forward([Fixtures.SeqFirst(feat)], [Fixtures.Hw(feat)], [NeckPos(feat)], torch.cat(prompts, 1), torch.cat(masks, 0));
        for (int i = 0; i < n; i++)
        {
            var col = TensorIndex.Slice(i, i + 1);
            Fixtures.AssertClose(fx, $"img{i}.enc.out.memory", ob.Memory[.., col]);
            Fixtures.AssertClose(fx, $"img{i}.enc.out.pos_embed", ob.PosEmbed[.., col]);
        }
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    public void ScenarioC_GeometricPrompts(int step)
    {
        using var fx = Fixtures.Tiny("c_geometric_prompts");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var feat = fx.Get("neck.sam3_fpn.2");
        var prompt = fx.Get($"step{step}.enc.out.memory_text");
        // the text ("visual") is encoded once, at step 1, and reused
        var mask = torch.cat([fx.Get("step1.text.out.0"), fx.Get($"step{step}.geo.out.1")], 1);
        AssertOutputs(fx, $"step{step}.", m.forward([Fixtures.SeqFirst(feat)], [Fixtures.Hw(feat)], [NeckPos(feat)], prompt, mask));
    }

    [Test]
    public void ScenarioA_TextGeometryAndFusionChainedFromTokenIds()
    {
        // the three modules wired as Sam3ImageModel._encode_prompt/_run_encoder do, from token ids and neck outputs only
        using var fx = Fixtures.Tiny("a_image_text");
        using var text = new VETextEncoder(Sam3Config.Tiny);
        TinyWeights.LoadInto(text, "detector.backbone.language_backbone.");
        using var geo = new SequenceGeometryEncoder(Sam3Config.Tiny);
        TinyWeights.LoadInto(geo, "detector.geometry_encoder.");
        text.eval(); geo.eval();
        using var enc = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var t = text.forward(fx.Get("text.token_ids"));
        var feat = fx.Get("neck.sam3_fpn.2");
        var img = Fixtures.SeqFirst(feat);
        var pos = NeckPos(feat);
        var (g, gm) = geo.forward(Prompt.Empty(1), [img], [Fixtures.Hw(feat)], [pos]);
        var prompt = torch.cat([t.LanguageFeatures, g], 0);
        var promptMask = torch.cat([t.LanguageMask, gm], 1);
        AssertOutputs(fx, "", enc.forward([img], [Fixtures.Hw(feat)], [pos], prompt, promptMask));
    }

    [Test]
    public void PromptPaddingIsIgnored()
    {
        // appending padded prompt tokens (any values) must not change the memory
        using var fx = Fixtures.Tiny("a_image_text");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var feat = fx.Get("neck.sam3_fpn.2");
        var prompt = fx.Get("enc.out.memory_text");
        var promptMask = torch.cat([fx.Get("text.out.0"), fx.Get("geo.out.1")], 1);
        var padded = torch.cat([prompt, torch.full(3, 1, prompt.shape[2], 7.0f)], 0);
        var paddedMask = torch.cat([promptMask, torch.ones(1, 3, dtype: ScalarType.Bool)], 1);
        var o = m.forward([Fixtures.SeqFirst(feat)], [Fixtures.Hw(feat)], [Fixtures.SeqFirst(fx.Get("neck.sam3_pos.2"))], padded, paddedMask);
        Fixtures.AssertClose(fx, "enc.out.memory", o.Memory);
    }

    [Test]
    public void WrongInputsAreTypedErrors()
    {
        using var m = new TransformerEncoderFusion(Sam3Config.Tiny);
        using var scope = NewDisposeScope();
        int d = Sam3Config.Tiny.Encoder.DModel;
        var prompt = torch.zeros(4, 1, d);
        Assert.Throws<Sam3Exception>(() => m.forward([torch.zeros(10, 1, d)], [(3, 3)], [torch.zeros(10, 1, d)], prompt, null));
        Assert.Throws<Sam3Exception>(() => m.forward([torch.zeros(9, 1, d)], [(3, 3)], [torch.zeros(9, 2, d)], prompt, null));
        Assert.Throws<Sam3Exception>(() => m.forward([torch.zeros(9, 1, d), torch.zeros(9, 1, d)], [(3, 3), (3, 3)],
                                                     [torch.zeros(9, 1, d), torch.zeros(9, 1, d)], prompt, null));
    }
}
