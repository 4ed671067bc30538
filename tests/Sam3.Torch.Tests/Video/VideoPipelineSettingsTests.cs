using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Video;

namespace Sam3.Torch.Tests.Video;

/// <summary>
/// The video pipeline's settings come from the configuration's <c>video</c> section field by field: every key of
/// tiny/config.json and full/config.json maps to the setting of the same name with the file's value, and a section
/// with a distinct value per key shows each key lands on its own setting.
/// </summary>
[TestFixture, Category("Fast")]
public class VideoPipelineSettingsTests
{
    private static string Pascal(string snake) => string.Concat(snake.Split('_').Select(w => char.ToUpperInvariant(w[0]) + w[1..]));

    private static void AssertMaps(JsonObject video, VideoPipelineSettings settings, string source)
    {
        Assert.That(video, Is.Not.Empty, source);
        foreach (var (key, value) in video)
        {
            var prop = typeof(VideoPipelineSettings).GetProperty(Pascal(key), BindingFlags.Public | BindingFlags.Instance);
            Assert.That(prop, Is.Not.Null, $"{source}: video.{key} has no pipeline setting");
            object? ours = prop!.GetValue(settings);
            object expected = prop.PropertyType == typeof(bool) ? value!.GetValue<bool>()
                : prop.PropertyType == typeof(int) ? value!.GetValue<int>()
                : value!.GetValue<double>();
            Assert.That(ours, Is.EqualTo(expected), $"{source}: video.{key}");
        }
    }

    private static JsonObject VideoSection(string path) => JsonNode.Parse(File.ReadAllText(path))!["video"]!.AsObject();

    [TestCase("tiny")]
    [TestCase("full")]
    public void ConfigFileMapsFieldByField(string size)
    {
        string path = SharedData.Parity(size, "config.json");
        var video = VideoSection(path);
        var config = Sam3Config.Load(path);
        AssertMaps(video, VideoPipelineSettings.FromConfig(config.Video), path);
        // every field of the typed section is in the file (nothing falls back to a default silently)
        var keys = typeof(VideoConfig).GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite)
            .Select(p => string.Concat(p.Name.Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString())))
            .ToHashSet();
        Assert.That(video.Select(kv => kv.Key).ToHashSet(), Is.EquivalentTo(keys), path);
    }

    [Test]
    public void DistinctValuesLandOnTheirOwnSettings()
    {
        string path = SharedData.Parity("tiny", "config.json");
        var root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        var video = root["video"]!.AsObject();
        int i = 0;
        foreach (var key in video.Select(kv => kv.Key).ToList())
        {
            i++;
            var v = video[key]!;
            video[key] = v.GetValueKind() switch
            {
                JsonValueKind.True or JsonValueKind.False => JsonValue.Create(!v.GetValue<bool>()),
                _ when v.ToJsonString().Contains('.') => JsonValue.Create(v.GetValue<double>() + 0.001 * i),
                _ => JsonValue.Create(v.GetValue<int>() + i),
            };
        }
        var config = Sam3Config.FromJson(root.ToJsonString());
        AssertMaps(video, VideoPipelineSettings.FromConfig(config.Video), "perturbed tiny/config.json");
        Assert.That(VideoPipelineSettings.FromConfig(config.Video), Is.Not.EqualTo(VideoPipelineSettings.FromConfig(Sam3Config.Load(path).Video)));
    }

    [Test]
    public void AblationVariantOnlyTurnsOffTheTemporalHeuristics()
    {
        var s = VideoPipelineSettings.FromConfig(Sam3Config.Load(SharedData.Parity("tiny", "config.json")).Video);
        var a = s.WithoutTemporalDisambiguation();
        Assert.That((a.HotstartDelay, a.HotstartUnmatchThresh, a.HotstartDupThresh, a.ReconditionEveryNthFrame), Is.EqualTo((0, 0, 0, 0)));
        Assert.That(a with { HotstartDelay = s.HotstartDelay, HotstartUnmatchThresh = s.HotstartUnmatchThresh, HotstartDupThresh = s.HotstartDupThresh,
                             ReconditionEveryNthFrame = s.ReconditionEveryNthFrame }, Is.EqualTo(s));
    }
}
