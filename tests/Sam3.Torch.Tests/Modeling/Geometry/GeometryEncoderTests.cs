using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Tests.Modeling.Encoder;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Geometry;

[TestFixture, Category("Fast")]
public class GeometryEncoderTests
{
    private const string Prefix = "detector.geometry_encoder.";

    private static SequenceGeometryEncoder Tiny()
    {
        var m = new SequenceGeometryEncoder(Sam3Config.Tiny);
        TinyWeights.LoadInto(m, Prefix);
        m.eval();
        return m;
    }

    /// <summary>NCHW → seq-first [H·W,B,C] (as Sam3ImageModel._get_img_feats).</summary>

    private static float[] Floats(JsonElement e) => e.EnumerateArray().Select(x => (float)x.GetDouble()).ToArray();

    /// <summary>The prompts of scenario c (step1: positive box; step2: + negative box; step3: + 2 points), from its parameters.</summary>
    internal static Prompt ScenarioCPrompt(ScenarioFixture fx, int step)
    {
        var p = fx.Parameters;
        var prompt = Prompt.Empty(1);
        prompt.AppendBoxes(torch.tensor(Floats(p.GetProperty("pos_box"))).view(1, 1, 4), torch.tensor(new[] { true }).view(1, 1));
        if (step >= 2)
            prompt.AppendBoxes(torch.tensor(Floats(p.GetProperty("neg_box"))).view(1, 1, 4), torch.tensor(new[] { false }).view(1, 1));
        if (step >= 3)
        {
            var pts = p.GetProperty("step3_points_xy_normalised").EnumerateArray().SelectMany(Floats).ToArray();
            var labels = p.GetProperty("step3_point_labels").EnumerateArray().Select(x => x.GetInt64()).ToArray();
            prompt = prompt.Clone();
            prompt.AppendPoints(torch.tensor(pts).view(-1, 1, 2), torch.tensor(labels).view(-1, 1));
        }
        return prompt;
    }

    [Test]
    public void KeysAndShapesMatchTinyCheckpoint()
    {
        using var m = new SequenceGeometryEncoder(Sam3Config.Tiny);
        KeyLayout.AssertMatches(m, KeyLayout.Tiny(Prefix));
    }

    [Test]
    public void KeysShapesAndParameterCountMatchFullCheckpointOnMeta()
    {
        using var m = KeyLayout.OnMeta(() => new SequenceGeometryEncoder(Sam3Config.Full));
        KeyLayout.AssertMatches(m, KeyLayout.Full(Prefix));
        Assert.That(KeyLayout.ParameterCount(m), Is.EqualTo(KeyLayout.FullParamCount(Prefix.TrimEnd('.'))));
    }

    [Test]
    public void ScenarioA_NoGeometryGivesTheClsTokenOnly()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var feat = fx.Get("neck.sam3_fpn.2");
        var (emb, mask) = m.forward(Prompt.Empty(1), [Fixtures.SeqFirst(feat)], [Fixtures.Hw(feat)], [Fixtures.SeqFirst(fx.Get("neck.sam3_pos.2"))]);
        Fixtures.AssertClose(fx, "geo.out.0", emb);
        Fixtures.AssertClose(fx, "geo.out.1", mask);
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
        var pos = new List<Tensor>();
        for (int i = 0; i < n; i++)
        {
            var fi = feat[TensorIndex.Slice(i, i + 1)];
            var pi = fx.Get($"img{i}.enc.out.pos_embed"); // the image position encoding, seq-first
            pos.Add(pi);
            var (emb, mask) = m.forward(Prompt.Empty(1), [Fixtures.SeqFirst(fi)], [Fixtures.Hw(fi)], [pi]);
            Fixtures.AssertClose(fx, $"img{i}.geo.out.0", emb);
            Fixtures.AssertClose(fx, $"img{i}.geo.out.1", mask);
        }
        var (embB, maskB) = m.forward(Prompt.Empty(n), [Fixtures.SeqFirst(feat)], [Fixtures.Hw(feat)], [torch.cat(pos, 1)]);
        for (int i = 0; i < n; i++)
        {
            Fixtures.AssertClose(fx, $"img{i}.geo.out.0", embB[.., TensorIndex.Slice(i, i + 1)]);
            Fixtures.AssertClose(fx, $"img{i}.geo.out.1", maskB[TensorIndex.Slice(i, i + 1)]);
        }
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    public void ScenarioC_BoxesAndPoints(int step)
    {
        using var fx = Fixtures.Tiny("c_geometric_prompts");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var feat = fx.Get("neck.sam3_fpn.2");
        var prompt = ScenarioCPrompt(fx, step);
        var (emb, mask) = m.forward(prompt, [Fixtures.SeqFirst(feat)], [Fixtures.Hw(feat)], [fx.Get($"step{step}.enc.out.pos_embed")]);
        Fixtures.AssertClose(fx, $"step{step}.geo.out.0", emb);
        Fixtures.AssertClose(fx, $"step{step}.geo.out.1", mask);
    }

    [Test]
    public void ScenarioC_PaddedBatchEqualsSingleRuns()
    {
        // batch entry 0 = step-2 prompt (2 boxes), entry 1 = step-1 prompt (1 box + 1 padded slot): the valid tokens
        // of each entry must equal the recorded single-prompt outputs (padding is masked everywhere).
        using var fx = Fixtures.Tiny("c_geometric_prompts");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var p1 = ScenarioCPrompt(fx, 1);
        var p2 = ScenarioCPrompt(fx, 2);
        var boxes = torch.cat([p2.BoxEmbeddings, torch.cat([p1.BoxEmbeddings, torch.full(1, 1, 4, 0.5f)], 0)], 1); // [2,2,4]
        var labels = torch.cat([p2.BoxLabels.to(ScalarType.Int64), torch.cat([p1.BoxLabels.to(ScalarType.Int64), torch.ones(1, 1, dtype: ScalarType.Int64)], 0)], 1);
        var mask = torch.tensor(new[] { false, false, false, true }).view(2, 2);
        var batched = new Prompt(boxEmbeddings: boxes, boxMask: mask, boxLabels: labels);
        var feat = fx.Get("neck.sam3_fpn.2");
        var img = Fixtures.SeqFirst(feat).repeat(1, 2, 1);
        var pos = fx.Get("step1.enc.out.pos_embed").repeat(1, 2, 1);
        var (emb, outMask) = m.forward(batched, [img], [Fixtures.Hw(feat)], [pos]);
        Assert.That(outMask.data<bool>().ToArray(), Is.EqualTo(new[] { false, false, false, false, false, true }));
        Fixtures.AssertClose(fx, "step2.geo.out.0", emb[.., TensorIndex.Slice(0, 1)]);
        Fixtures.AssertClose(fx, "step1.geo.out.0", emb[TensorIndex.Slice(0, 2), TensorIndex.Slice(1, 2)]);
    }

    [Test]
    public void MismatchedImageFeaturesAreTypedErrors()
    {
        using var m = new SequenceGeometryEncoder(Sam3Config.Tiny);
        using var scope = NewDisposeScope();
        int d = Sam3Config.Tiny.GeometryEncoder.DModel;
        Assert.Throws<Sam3Exception>(() => m.forward(Prompt.Empty(1), [torch.zeros(10, 1, d)], [(3, 3)]));
        Assert.Throws<Sam3Exception>(() => m.forward(Prompt.Empty(2), [torch.zeros(9, 1, d)], [(3, 3)]));
        Assert.Throws<Sam3Exception>(() => m.forward(Prompt.Empty(1), [torch.zeros(9, 1, d)], [(3, 3), (3, 3)]));
    }
}
