using System.Text.Json;
using System.Text.RegularExpressions;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Decoder;

/// <summary>
/// Test helpers for the detector heads: discovers the per-image / per-step prefixes of a scenario from its tensor names,
/// assembles the module-boundary inputs (prompt mask, backbone levels, image ids) and compares probed intermediates.
/// </summary>
internal static class DetectorFixtures
{
    /// <summary>The scenarios whose grounding path is recorded with decoder inputs.</summary>
    public static readonly string[] GroundingScenarios = ["a_image_text", "b_image_batch_text", "c_geometric_prompts"];

    /// <summary>Prefixes ("", "img0.", "step2.", ...) of every recorded tensor named PREFIX + <paramref name="suffix"/>.</summary>
    public static List<string> Prefixes(ScenarioFixture fx, string suffix)
        => fx.Tensors.Keys.Where(k => k.EndsWith(suffix, StringComparison.Ordinal))
            .Select(k => k[..^suffix.Length]).Where(p => p.Length == 0 || p.EndsWith('.')).OrderBy(p => p, StringComparer.Ordinal).ToList();

    /// <summary>
    /// The tensor PREFIX+name if recorded, else the unprefixed one, else the only one ending in name (a text encoding that
    /// the scenario records once and reuses: b shares one text for both images, c encodes "visual" at step 1 only).
    /// </summary>
    public static Tensor GetShared(ScenarioFixture fx, string prefix, string name)
    {
        if (fx.Has(prefix + name)) return fx.Get(prefix + name);
        if (fx.Has(name)) return fx.Get(name);
        var candidates = fx.Tensors.Keys.Where(k => k.EndsWith("." + name, StringComparison.Ordinal)).ToList();
        Assert.That(candidates, Has.Count.EqualTo(1), $"{fx.Name}: cannot find a unique '{name}' for prefix '{prefix}'");
        return fx.Get(candidates[0]);
    }

    /// <summary>prompt_mask = cat(text mask, geometry mask) [B,S], True = padding; checked against the prompt length.</summary>
    public static Tensor PromptMask(ScenarioFixture fx, string prefix)
    {
        var text = GetShared(fx, prefix, "text.out.0").to(ScalarType.Bool);
        var geo = fx.Get(prefix + "geo.out.1").to(ScalarType.Bool);
        var mask = cat([text, geo], 1);
        long promptLen = fx.Tensors[prefix + "enc.out.memory_text"].Shape[0];
        Assert.That(mask.shape[1], Is.EqualTo(promptLen), $"{fx.Name}/{prefix}: prompt mask length vs enc.out.memory_text");
        return mask;
    }

    /// <summary>backbone_fpn after scalp: neck.sam3_fpn.{0..n-1}, n = number of levels kept (3).</summary>
    public static List<Tensor> BackboneFpn(ScenarioFixture fx, Sam3Config cfg)
        => Enumerable.Range(0, cfg.Derived.NeckSizesAfterScalp.Length).Select(i => fx.Get($"neck.sam3_fpn.{i}")).ToList();

    /// <summary>Image index of a prefix: "img1." → 1 (scenario b runs forward_grounding with img_ids=[i]); otherwise 0.</summary>
    public static Tensor ImageIds(string prefix)
    {
        var m = Regex.Match(prefix, @"(?:^|\.)img(\d+)\.");
        return tensor(new long[] { m.Success ? long.Parse(m.Groups[1].Value) : 0 });
    }

    public static (long h, long w) FeatSize(ScenarioFixture fx, Sam3Config cfg)
    {
        var lvl = fx.Tensors[$"neck.sam3_fpn.{cfg.Derived.NeckSizesAfterScalp.Length - 1}"].Shape;
        return (lvl[2], lvl[3]);
    }
}

/// <summary>
/// Compares tensors a module reports through its probe with the fixture tensors of the same name (k-th report of a name →
/// "name#k" for k ≥ 2, as the fixture generator numbers repeated calls). Copies nothing: compares during the call.
/// </summary>
internal sealed class ProbeComparer
{
    private readonly ScenarioFixture fx;
    private readonly string prefix;
    private readonly Dictionary<string, int> counts = new();
    public List<ComparisonResult> Results { get; } = new();
    public Tolerance Tolerance { get; init; } = Tolerance.Default;

    public ProbeComparer(ScenarioFixture fx, string prefix)
    {
        this.fx = fx;
        this.prefix = prefix;
    }

    public void Probe(string name, Tensor t)
    {
        int k = counts[name] = counts.GetValueOrDefault(name) + 1;
        string full = prefix + name + (k > 1 ? $"#{k}" : "");
        if (!fx.Has(full)) return;
        Compare(full, t);
    }

    public ComparisonResult Compare(string fullName, Tensor actual)
    {
        using var scope = NewDisposeScope();
        var info = fx.Tensors[fullName];
        var r = Tolerance.Compare(fullName, actual, fx.Get(fullName), info.ObservedMaxAbsDiff);
        Results.Add(r);
        return r;
    }

    public IEnumerable<string> Compared => Results.Select(r => r.Name);

    /// <summary>Prints every comparison and asserts all passed and that the <paramref name="required"/> names were compared.</summary>
    public static void AssertAll(IEnumerable<ComparisonResult> results, IEnumerable<string> required)
    {
        var list = results.ToList();
        foreach (var r in list) TestContext.Out.WriteLine(r.ToString());
        var missing = required.Except(list.Select(r => r.Name)).ToList();
        Assert.That(missing, Is.Empty, "expected comparisons that did not happen");
        var failed = list.Where(r => !r.Passed).Select(r => r.ToString()).ToList();
        Assert.That(failed, Is.Empty, "tensors outside the parity bar");
    }
}
