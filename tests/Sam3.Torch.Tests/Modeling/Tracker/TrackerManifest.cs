using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Tracker;

/// <summary>Reads the reference key/shape lists (tiny model_manifest.json, full checkpoint_keys.json) and compares modules with them.</summary>
internal static class TrackerManifest
{
    private static Dictionary<string, long[]> Read(string path, string arrayName, string prefix)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var result = new Dictionary<string, long[]>();
        foreach (var e in doc.RootElement.GetProperty(arrayName).EnumerateArray())
        {
            string key = e.GetProperty("key").GetString()!;
            if (!key.StartsWith(prefix) || key.EndsWith("freqs_cis")) continue;
            result[key[prefix.Length..]] = e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray();
        }
        return result;
    }

    /// <summary>Keys (prefix stripped) and shapes of the tiny checkpoint layout under <paramref name="prefix"/>.</summary>
    public static Dictionary<string, long[]> Tiny(string prefix) => Read(SharedData.Parity("tiny", "model_manifest.json"), "checkpoint_layout", prefix);

    /// <summary>Keys (prefix stripped) and shapes of the released checkpoint under <paramref name="prefix"/>.</summary>
    public static Dictionary<string, long[]> Full(string prefix) => Read(SharedData.Parity("full", "checkpoint_keys.json"), "keys", prefix);

    /// <summary>Exact key-set and shape equality of the module's state_dict with the expected list.</summary>
    public static void AssertMatches(nn.Module module, Dictionary<string, long[]> expected, string what)
    {
        Assert.That(expected, Is.Not.Empty, $"{what}: no reference keys found");
        var sd = module.state_dict();
        var problems = new List<string>();
        foreach (var (k, t) in sd)
        {
            if (!expected.TryGetValue(k, out var shape)) problems.Add($"unexpected {k}");
            else if (!shape.SequenceEqual(t.shape)) problems.Add($"shape {k}: module [{string.Join(",", t.shape)}] vs reference [{string.Join(",", shape)}]");
        }
        foreach (var k in expected.Keys)
            if (!sd.ContainsKey(k)) problems.Add($"missing {k}");
        Assert.That(problems, Is.Empty, $"{what}:\n" + string.Join("\n", problems));
    }

    /// <summary>Builds a module with the default device set to META (no memory), restoring CPU afterwards.</summary>
    public static T OnMeta<T>(Func<T> build)
    {
        torch.set_default_device(torch.META);
        try { return build(); }
        finally { torch.set_default_device(torch.CPU); }
    }

    /// <summary>Number of parameters (excluding buffers).</summary>
    public static long ParameterCount(nn.Module m) => m.parameters().Sum(p => p.numel());
}
