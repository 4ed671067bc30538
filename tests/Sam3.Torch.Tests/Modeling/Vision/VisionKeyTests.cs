using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Vision;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Vision;

/// <summary>State-dict keys and shapes of the vision backbone against the tiny manifest and the released checkpoint layout.</summary>
[TestFixture, Category("Fast")]
public class VisionKeyTests
{
    private const string Prefix = "detector.backbone.vision_backbone.";

    private static Dictionary<string, long[]> Expected(string path, string listProperty)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var result = new Dictionary<string, long[]>();
        foreach (var e in doc.RootElement.GetProperty(listProperty).EnumerateArray())
        {
            string key = e.GetProperty("key").GetString()!;
            if (!key.StartsWith(Prefix) || key.EndsWith(".freqs_cis")) continue;
            result[key.Substring(Prefix.Length)] = e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray();
        }
        return result;
    }

    private static void AssertSameLayout(nn.Module module, Dictionary<string, long[]> expected)
    {
        var actual = module.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape);
        var missing = expected.Keys.Except(actual.Keys).OrderBy(k => k).ToList();
        var extra = actual.Keys.Except(expected.Keys).OrderBy(k => k).ToList();
        var badShape = expected.Keys.Intersect(actual.Keys)
            .Where(k => !expected[k].SequenceEqual(actual[k]))
            .Select(k => $"{k}: expected [{string.Join(",", expected[k])}] got [{string.Join(",", actual[k])}]").ToList();
        Assert.Multiple(() =>
        {
            Assert.That(missing, Is.Empty, "missing keys");
            Assert.That(extra, Is.Empty, "unexpected keys");
            Assert.That(badShape, Is.Empty, "shape mismatches");
        });
    }

    private static long CountParameters(nn.Module m) => m.parameters().Sum(p => p.numel());

    [Test]
    public void TinyNeckKeysAndShapesMatchManifest()
    {
        var expected = Expected(SharedData.Parity("tiny", "model_manifest.json"), "checkpoint_layout");
        using var neck = new Sam3DualViTDetNeck(Sam3Config.Tiny);
        AssertSameLayout(neck, expected);
        // tiny/config.json param_counts_by_prefix: detector.backbone.vision_backbone = 385,024
        Assert.That(CountParameters(neck), Is.EqualTo(385_024));
        Assert.That(neck.state_dict().Keys.Any(k => k.Contains("freqs_cis")), Is.False, "RoPE tables must not be state_dict entries");
    }

    [Test]
    public void FullNeckKeysShapesAndCountsMatchCheckpointOnMeta()
    {
        var expected = Expected(SharedData.Parity("full", "checkpoint_keys.json"), "keys");
        Sam3DualViTDetNeck neck;
        torch.set_default_device(torch.META);
        try { neck = new Sam3DualViTDetNeck(Sam3Config.Full); }
        finally { torch.set_default_device(torch.CPU); }
        using (neck)
        {
            Assert.That(neck.trunk.pos_embed!.device_type, Is.EqualTo(DeviceType.META));
            AssertSameLayout(neck, expected);
            // full/manifest.json param_counts_by_prefix (video model = checkpoint layout)
            Assert.That(CountParameters(neck.trunk), Is.EqualTo(446_237_696L));
            Assert.That(CountParameters(neck.convs), Is.EqualTo(7_802_112L));
            Assert.That(CountParameters(neck.sam2_convs!), Is.EqualTo(7_802_112L));
            Assert.That(CountParameters(neck), Is.EqualTo(461_841_920L));
        }
    }

    [Test]
    public void NeckWithoutSam2HasNoSam2Keys()
    {
        var cfg = Sam3Config.Tiny with { Neck = Sam3Config.Tiny.Neck with { AddSam2Neck = false } };
        using var neck = new Sam3DualViTDetNeck(cfg);
        Assert.That(neck.state_dict().Keys.Any(k => k.StartsWith("sam2_convs")), Is.False);
        var expected = Expected(SharedData.Parity("tiny", "model_manifest.json"), "checkpoint_layout")
            .Where(kv => !kv.Key.StartsWith("sam2_convs")).ToDictionary(kv => kv.Key, kv => kv.Value);
        AssertSameLayout(neck, expected);
    }
}
