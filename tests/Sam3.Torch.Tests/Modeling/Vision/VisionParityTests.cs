using System.Diagnostics;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Vision;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Vision;

/// <summary>ViT trunk and dual neck against the tiny reference fixtures (fp32 parity bar).</summary>
[TestFixture, Category("Fast")]
public class VisionParityTests
{
    private const string NeckPrefix = "detector.backbone.vision_backbone.";
    private const string TrunkPrefix = NeckPrefix + "trunk.";

    private static ViT TinyTrunk()
    {
        var vit = new ViT(Sam3Config.Tiny);
        TinyWeights.LoadInto(vit, TrunkPrefix);
        vit.eval();
        return vit;
    }

    private static Sam3DualViTDetNeck TinyNeck()
    {
        var neck = new Sam3DualViTDetNeck(Sam3Config.Tiny);
        TinyWeights.LoadInto(neck, NeckPrefix);
        neck.eval();
        return neck;
    }

    [Test]
    public void TrunkMatchesScenarioA()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var vit = TinyTrunk();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var input = fx.Get("image_input");
        var trace = new List<(string name, Tensor value)>();
        var output = vit.Forward(input, trace);
        var byName = trace.ToDictionary(t => t.name, t => t.value);
        Fixtures.AssertClose(fx, "vit.patch_embed", byName["patch_embed"]);
        Fixtures.AssertClose(fx, "vit.ln_pre", byName["ln_pre"]);
        for (int i = 0; i < Sam3Config.Tiny.Vit.Depth; i++)
            Fixtures.AssertClose(fx, $"vit.block{i}", byName[$"block{i}"]);
        Fixtures.AssertClose(fx, "vit.out.0", output);

        // timing of the tiny trunk (after one warm-up forward)
        vit.forward(input);
        var sw = Stopwatch.StartNew();
        const int reps = 3;
        for (int r = 0; r < reps; r++)
        {
            using var s = NewDisposeScope();
            vit.forward(input);
        }
        TestContext.Out.WriteLine($"tiny ViT forward (1x3x336x336, {torch.get_num_threads()} threads): {sw.Elapsed.TotalMilliseconds / reps:F2} ms");
    }

    [Test]
    public void NeckMatchesScenarioA()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var neck = TinyNeck();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        using var o = neck.ForwardNecks(fx.Get("vit.out.0"));
        Assert.That(o.Sam3Out, Has.Length.EqualTo(4));
        Assert.That(o.Sam2Out, Is.Not.Null);
        for (int i = 0; i < 4; i++)
        {
            Fixtures.AssertClose(fx, $"neck.sam3_fpn.{i}", o.Sam3Out[i]);
            Fixtures.AssertClose(fx, $"neck.sam3_pos.{i}", o.Sam3Pos[i]);
            Fixtures.AssertClose(fx, $"neck.sam2_fpn.{i}", o.Sam2Out![i]);
            // the reference records one encoding per level "(same tensor for the SAM2 neck)"
            Fixtures.AssertClose(fx, $"neck.sam3_pos.{i}", o.Sam2Pos![i]);
        }
    }

    [Test]
    public void TrunkAndNeckEndToEndMatchScenarioA()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var neck = TinyNeck();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        using var o = neck.forward(fx.Get("image_input"));
        for (int i = 0; i < 4; i++)
        {
            Fixtures.AssertClose(fx, $"neck.sam3_fpn.{i}", o.Sam3Out[i]);
            Fixtures.AssertClose(fx, $"neck.sam2_fpn.{i}", o.Sam2Out![i]);
        }
    }

    [Test]
    public void TwoImageBatchMatchesScenarioB()
    {
        using var fx = Fixtures.Tiny("b_image_batch_text");
        using var neck = TinyNeck();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var input = fx.Get("image_input");
        Assert.That(input.shape[0], Is.EqualTo(2));
        using var o = neck.forward(input);
        // scenario b records the SAM3 neck levels kept after scalp=1
        for (int i = 0; i < 3; i++)
            Fixtures.AssertClose(fx, $"neck.sam3_fpn.{i}", o.Sam3Out[i]);
    }

    [Test]
    public void FreqsCisEqualCheckpointBuffers()
    {
        using var vit = new ViT(Sam3Config.Tiny);
        using var file = SafetensorsFile.Open(TinyWeights.Path);
        using var scope = NewDisposeScope();
        var tables = vit.FreqsCisAsReal().ToList();
        Assert.That(tables, Has.Count.EqualTo(Sam3Config.Tiny.Vit.Depth));
        foreach (var (key, table) in tables)
        {
            var reference = file.Load(TrunkPrefix + key);
            Assert.That(table.shape, Is.EqualTo(reference.shape), key);
            double maxErr = (table - reference).abs().max().item<float>();
            TestContext.Out.WriteLine($"{key} [{string.Join(",", table.shape)}]: max abs err {maxErr:G3}");
            Assert.That(maxErr, Is.LessThanOrEqualTo(1e-6), key);
        }
    }

    [Test]
    public void RepeatedForwardsLeaveNoLiveTensors()
    {
        using var neck = new Sam3DualViTDetNeck(Sam3Config.Tiny);
        neck.eval();
        using var _ = torch.no_grad();
        using var input = torch.randn(1, 3, 336, 336);
        var live = new List<long>();
        for (int i = 0; i < 4; i++)
        {
            using (var scope = NewDisposeScope())
            {
                using var o = neck.forward(input);
                var trace = new List<(string, Tensor)>();
                neck.trunk.Forward(input, trace);
            }
            live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        TestContext.Out.WriteLine($"live tensors after each iteration: {string.Join(", ", live)}");
        Assert.That(live[3], Is.EqualTo(live[1]), "live tensor count grows across forwards");
    }

    [Test]
    public void Bfloat16ForwardRunsAndStaysCloseToFp32()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var neck = TinyNeck();
        using var _ = torch.no_grad();
        using var scope = NewDisposeScope();
        var input = fx.Get("image_input");
        neck.to(ScalarType.BFloat16);
        using var o = neck.forward(input.to(ScalarType.BFloat16));
        Assert.That(o.Sam3Out[0].dtype, Is.EqualTo(ScalarType.BFloat16));
        Assert.That(o.Sam3Pos[0].dtype, Is.EqualTo(ScalarType.BFloat16));
        for (int i = 0; i < 3; i++)
        {
            var reference = fx.Get($"neck.sam3_fpn.{i}");
            double err = (o.Sam3Out[i].to(ScalarType.Float32) - reference).abs().max().item<float>();
            double scale = reference.abs().max().item<float>();
            TestContext.Out.WriteLine($"bf16 neck.sam3_fpn.{i}: max abs err {err:G3} (max |ref| {scale:G3})");
            Assert.That(err, Is.LessThan(0.03 * scale));
        }
    }
}
