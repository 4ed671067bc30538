using System.Text.Json.Nodes;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Config;

[TestFixture, Category("Fast")]
public class Sam3ConfigTests
{
    private static readonly string[] NonStructural = ["name", "init", "num_parameters", "param_counts_by_prefix", "checkpoint_to_image_model"];

    private static JsonObject Structural(JsonNode node)
    {
        var obj = node.AsObject().DeepClone().AsObject();
        foreach (var k in NonStructural) obj.Remove(k);
        return obj;
    }

    [TestCase("full")]
    [TestCase("tiny")]
    public void BuiltInConfigEqualsFixtureFile(string which)
    {
        string path = SharedData.Parity(which, "config.json");
        var expected = Structural(JsonNode.Parse(File.ReadAllText(path))!);
        var builtIn = which == "full" ? Sam3Config.Full : Sam3Config.Tiny;
        var actual = Structural(JsonNode.Parse(builtIn.ToJson())!);
        Assert.That(JsonNode.DeepEquals(expected, actual), Is.True,
            $"built-in {which} config differs from {path}:\nexpected {expected.ToJsonString()}\nactual   {actual.ToJsonString()}");
    }

    [TestCase("full")]
    [TestCase("tiny")]
    public void ReadingTheFileGivesTheBuiltInArchitecture(string which)
    {
        var loaded = Sam3Config.Load(SharedData.Parity(which, "config.json"));
        var builtIn = which == "full" ? Sam3Config.Full : Sam3Config.Tiny;
        Assert.That(loaded.SameArchitecture(builtIn), Is.True);
        Assert.That(loaded.Name, Is.EqualTo(builtIn.Name));
    }

    [Test]
    public void RoundTripKeepsUninterpretedSections()
    {
        string path = SharedData.Parity("tiny", "config.json");
        var original = JsonNode.Parse(File.ReadAllText(path))!;
        var again = JsonNode.Parse(Sam3Config.FromJson(original.ToJsonString()).ToJson())!;
        Assert.That(JsonNode.DeepEquals(original, again), Is.True);
    }

    [Test]
    public void DerivedSizesFollowFromTheSections()
    {
        var d = Sam3Config.Full.Derived;
        Assert.That(d.TokensPerSide, Is.EqualTo(72));
        Assert.That(d.NeckSizesAfterScalp, Is.EqualTo(new[] { 288, 144, 72 }));
        Assert.That(d.GlobalRopeScalePos, Is.EqualTo(24.0 / 72));
        Assert.That(d.VitMlpHiddenDim, Is.EqualTo(4736));
        Assert.That(d.TrackerInputMaskSize, Is.EqualTo(1152));
    }

    [Test]
    public void BadJsonIsATypedError()
    {
        Assert.Throws<Sam3ConfigException>(() => Sam3Config.FromJson("{ \"vit\": { \"depth\": \"many\" } }"));
        Assert.Throws<Sam3ConfigException>(() => Sam3Config.Load("/nonexistent/config.json"));
    }
}
