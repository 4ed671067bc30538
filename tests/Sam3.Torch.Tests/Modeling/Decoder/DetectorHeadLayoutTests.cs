using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Decoder;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Decoder;

/// <summary>
/// State-dict keys and shapes of the detector heads against the tiny checkpoint manifest and the released (full) key list,
/// exact set equality per prefix; full modules are built on META. Parameter counts against the README figures.
/// </summary>
[TestFixture, Category("Fast")]
public class DetectorHeadLayoutTests
{
    public const string DecoderPrefix = "detector.transformer.decoder.";
    public const string ScoringPrefix = "detector.dot_prod_scoring.";
    public const string SegPrefix = "detector.segmentation_head.";

    private static Dictionary<string, long[]> Layout(string path, string listProperty, string prefix)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var result = new Dictionary<string, long[]>();
        foreach (var e in doc.RootElement.GetProperty(listProperty).EnumerateArray())
        {
            string key = e.GetProperty("key").GetString()!;
            if (!key.StartsWith(prefix, StringComparison.Ordinal) || key.EndsWith("freqs_cis")) continue;
            result[key[prefix.Length..]] = e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray();
        }
        return result;
    }

    private static void AssertSameLayout(nn.Module module, Dictionary<string, long[]> expected, string what)
    {
        var actual = module.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape);
        Assert.That(expected, Is.Not.Empty, $"{what}: no reference keys");
        var missing = expected.Keys.Except(actual.Keys).OrderBy(k => k).ToList();
        var extra = actual.Keys.Except(expected.Keys).OrderBy(k => k).ToList();
        var shapes = expected.Keys.Intersect(actual.Keys)
            .Where(k => !expected[k].SequenceEqual(actual[k]))
            .Select(k => $"{k}: module [{string.Join(",", actual[k])}] vs reference [{string.Join(",", expected[k])}]").ToList();
        Assert.Multiple(() =>
        {
            Assert.That(missing, Is.Empty, $"{what}: keys the module lacks");
            Assert.That(extra, Is.Empty, $"{what}: keys the reference lacks");
            Assert.That(shapes, Is.Empty, $"{what}: shape mismatches");
        });
        TestContext.Out.WriteLine($"{what}: {actual.Count} keys match");
    }

    private static T OnMeta<T>(Func<T> build)
    {
        var previous = torch.get_default_device();
        torch.set_default_device(torch.META);
        try { return build(); }
        finally { torch.set_default_device(previous); }
    }

    private static long Count(nn.Module m) => m.parameters().Sum(p => p.numel());

    private static IEnumerable<TestCaseData> Modules()
    {
        yield return new TestCaseData(DecoderPrefix, (Func<Sam3Config, nn.Module>)(c => new TransformerDecoder(c)), 11_575_093L).SetArgDisplayNames("decoder");
        yield return new TestCaseData(ScoringPrefix, (Func<Sam3Config, nn.Module>)(c => new DotProductScoring(c)), 1_182_976L).SetArgDisplayNames("dot_prod_scoring");
        yield return new TestCaseData(SegPrefix, (Func<Sam3Config, nn.Module>)(c => new UniversalSegmentationHead(c)), 2_298_881L).SetArgDisplayNames("segmentation_head");
    }

    [TestCaseSource(nameof(Modules))]
    public void TinyKeysAndShapesMatchTheManifest(string prefix, Func<Sam3Config, nn.Module> build, long _)
    {
        var expected = Layout(SharedData.Parity("tiny", "model_manifest.json"), "checkpoint_layout", prefix);
        using var m = build(Sam3Config.Tiny);
        AssertSameLayout(m, expected, "tiny " + prefix);
    }

    [TestCaseSource(nameof(Modules))]
    public void FullKeysShapesAndParameterCountMatchTheCheckpointOnMeta(string prefix, Func<Sam3Config, nn.Module> build, long parameters)
    {
        var expected = Layout(SharedData.Parity("full", "checkpoint_keys.json"), "keys", prefix);
        using var m = OnMeta(() => build(Sam3Config.Full));
        Assert.That(m.parameters().All(p => p.device_type == DeviceType.META), Is.True, "module was not built on META");
        AssertSameLayout(m, expected, "full " + prefix);
        long expectedFromKeys = expected.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b));
        Assert.That(Count(m), Is.EqualTo(parameters), "parameter count (parity/README.md)");
        Assert.That(expectedFromKeys, Is.EqualTo(parameters), "parameter count of the checkpoint keys");
    }

    [Test]
    public void MlpSpecsOfTheConfigParse()
    {
        var hc = Sam3Config.Full.HardcodedInClasses;
        var sym = new Dictionary<string, int> { ["d"] = 256, ["num_heads"] = 8 };
        Assert.That(MlpSpec.Parse(hc.DecoderBboxEmbed, sym), Is.EqualTo((256, 256, 4, 3)));
        Assert.That(MlpSpec.Parse(hc.DecoderRefPointHead, sym), Is.EqualTo((512, 256, 256, 2)));
        Assert.That(MlpSpec.Parse(hc.DecoderPresenceTokenHead, sym), Is.EqualTo((256, 256, 1, 3)));
        Assert.That(MlpSpec.Parse(hc.DecoderBoxRpbEmbed, sym), Is.EqualTo((2, 256, 8, 2)));
        Assert.That(MlpSpec.Parse(hc.MaskEmbed, sym), Is.EqualTo((256, 256, 256, 3)));
        Assert.Throws<Sam3ConfigException>(() => MlpSpec.Parse("MLP(d,d,4)", sym));
        Assert.Throws<Sam3ConfigException>(() => MlpSpec.Parse("MLP(d,x,4,3)", sym));
        Assert.Throws<Sam3ConfigException>(() => MlpSpec.Parse("Linear(d,4)", sym));
    }

    [Test]
    public void BadConfigurationsAreTypedErrors()
    {
        var t = Sam3Config.Tiny;
        Assert.Throws<Sam3ConfigException>(() => new TransformerDecoder(t with { Decoder = t.Decoder with { BoxRPB = "cubic" } }));
        Assert.Throws<Sam3ConfigException>(() => new TransformerDecoder(t with { Decoder = t.Decoder with { BoxRefine = false } }));
        Assert.Throws<Sam3ConfigException>(() => new UniversalSegmentationHead(t with { SegmentationHead = t.SegmentationHead with { InterpolationMode = "lanczos" } }));
        Assert.Throws<Sam3ConfigException>(() => new DotProductScoring(t with { DotProdScoring = t.DotProdScoring with { PromptMlpOutNorm = "BatchNorm" } }));
    }

    [Test]
    public void OptionalPartsFollowTheConfig()
    {
        var t = Sam3Config.Tiny;
        using var noRpb = new TransformerDecoder(t with { Decoder = t.Decoder with { BoxRPB = "none", PresenceToken = false } });
        var keys = noRpb.state_dict().Keys.ToList();
        Assert.That(keys.Any(k => k.StartsWith("boxRPB_embed") || k.StartsWith("presence_token")), Is.False);
        Assert.That(noRpb.named_children().Select(m => m.name),
            Is.EquivalentTo(new[] { "layers", "norm", "bbox_embed", "query_embed", "reference_points", "ref_point_head" }),
            "top-level submodules = the reference's (helpers such as the sine encoder stay unregistered)");
        using var both = new TransformerDecoder(t with { Decoder = t.Decoder with { BoxRPB = "both" } });
        Assert.That(both.boxRPB_embed_x!.layers[0].weight!.shape, Is.EqualTo(new long[] { 32, 4 }));
        using var withPresence = new UniversalSegmentationHead(t with { SegmentationHead = t.SegmentationHead with { PresenceHead = true } });
        Assert.That(withPresence.state_dict().Keys, Does.Contain("presence_head.2.weight"));
    }
}
