using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Infrastructure;

/// <summary>
/// Key/shape checks of a module against the recorded checkpoint layouts: tiny/model_manifest.json
/// (<c>checkpoint_layout</c>), full/checkpoint_keys.json (<c>keys</c>) and the full parameter counts of
/// full/manifest.json (<c>video_model.param_counts_by_prefix</c>).
/// </summary>
internal static class KeyLayout
{
    public static Dictionary<string, long[]> Tiny(string prefix) =>
        Read(SharedData.Parity("tiny", "model_manifest.json"), "checkpoint_layout", prefix);

    public static Dictionary<string, long[]> Full(string prefix) =>
        Read(SharedData.Parity("full", "checkpoint_keys.json"), "keys", prefix);

    /// <summary>Parameter count recorded for a checkpoint prefix (without the trailing dot) of the full model.</summary>
    public static long FullParamCount(string prefixNoDot)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(SharedData.Parity("full", "manifest.json")));
        return doc.RootElement.GetProperty("video_model").GetProperty("param_counts_by_prefix").GetProperty(prefixNoDot).GetInt64();
    }

    private static Dictionary<string, long[]> Read(string path, string listName, string prefix)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var result = new Dictionary<string, long[]>();
        foreach (var e in doc.RootElement.GetProperty(listName).EnumerateArray())
        {
            string key = e.GetProperty("key").GetString()!;
            if (!key.StartsWith(prefix) || key.EndsWith("freqs_cis")) continue;
            result[key[prefix.Length..]] = e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray();
        }
        Assert.That(result, Is.Not.Empty, $"no key with prefix {prefix} in {path}");
        return result;
    }

    /// <summary>Asserts exact key-set equality and equal shapes.</summary>
    public static void AssertMatches(nn.Module module, Dictionary<string, long[]> expected)
    {
        var actual = module.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape);
        var missing = expected.Keys.Except(actual.Keys).OrderBy(k => k).ToList();
        var extra = actual.Keys.Except(expected.Keys).OrderBy(k => k).ToList();
        var shapes = expected.Keys.Intersect(actual.Keys)
            .Where(k => !expected[k].SequenceEqual(actual[k]))
            .Select(k => $"{k}: expected [{string.Join(",", expected[k])}] got [{string.Join(",", actual[k])}]").ToList();
        Assert.Multiple(() =>
        {
            Assert.That(missing, Is.Empty, "keys missing from the module");
            Assert.That(extra, Is.Empty, "keys the checkpoint does not have");
            Assert.That(shapes, Is.Empty, "shape mismatches");
        });
    }

    public static long ParameterCount(nn.Module module) => module.parameters().Sum(p => p.numel());

    /// <summary>Builds a module on the META device (no memory), restoring the previous default device.</summary>
    public static T OnMeta<T>(Func<T> build)
    {
        var previous = torch.get_default_device();
        torch.set_default_device(torch.META);
        try { return build(); }
        finally { torch.set_default_device(previous); }
    }
}
