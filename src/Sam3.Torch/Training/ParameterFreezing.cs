using System.Text;
using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training;

/// <summary>Which part of the image detector to freeze (<c>requires_grad = false</c>) for fine-tuning.</summary>
internal enum FreezePreset
{
    /// <summary>Everything trains.</summary>
    None,
    /// <summary>The vision backbone: ViT trunk and its FPN necks (<c>backbone.vision_backbone.*</c>).</summary>
    VisionEncoder,
    /// <summary>The text encoder (<c>backbone.language_backbone.*</c>).</summary>
    TextEncoder,
    /// <summary>Both backbones (<c>backbone.*</c>).</summary>
    AllBackbones,
    /// <summary>
    /// Everything except the prediction heads: trains <c>dot_prod_scoring</c>, <c>segmentation_head</c> and the decoder's
    /// box and presence heads (<c>transformer.decoder.{bbox_embed, presence_token_head, presence_token_out_norm}</c>).
    /// </summary>
    AllButHeads,
}

/// <summary>Trainable / frozen parameter counts after freezing.</summary>
internal sealed record FreezeSummary(int TrainableTensors, long TrainableElements, int FrozenTensors, long FrozenElements)
{
    public override string ToString() =>
        $"trainable {TrainableElements:N0} in {TrainableTensors} tensors, frozen {FrozenElements:N0} in {FrozenTensors} tensors";
}

/// <summary>
/// Freezing of the image detector's parameters by preset and by parameter name: a pattern with <c>*</c> / <c>?</c> is a
/// glob over the whole dotted name (<c>*</c> also crosses dots, as Python's <c>fnmatch</c> that upstream's optimizer
/// configuration uses), any other pattern is a module prefix (<c>transformer.encoder</c> matches
/// <c>transformer.encoder.layers.0.linear1.weight</c>, not <c>transformer.encoder_x</c>).
/// </summary>
internal static class ParameterFreezing
{
    /// <summary>Name patterns a preset freezes.</summary>
    public static IReadOnlyList<string> FrozenPatterns(FreezePreset preset) => preset switch
    {
        FreezePreset.None => [],
        FreezePreset.VisionEncoder => ["backbone.vision_backbone"],
        FreezePreset.TextEncoder => ["backbone.language_backbone"],
        FreezePreset.AllBackbones => ["backbone"],
        FreezePreset.AllButHeads => ["*"],
        _ => throw new ArgumentOutOfRangeException(nameof(preset), preset, "unknown freeze preset"),
    };

    /// <summary>Name patterns a preset keeps trainable even when a frozen pattern matches (the heads of <see cref="FreezePreset.AllButHeads"/>).</summary>
    public static IReadOnlyList<string> TrainablePatterns(FreezePreset preset) => preset switch
    {
        FreezePreset.AllButHeads => ["dot_prod_scoring", "segmentation_head", "transformer.decoder.bbox_embed",
                                     "transformer.decoder.presence_token_head", "transformer.decoder.presence_token_out_norm"],
        _ => [],
    };

    /// <summary>Whether <paramref name="name"/> is frozen under the preset plus the extra frozen patterns.</summary>
    public static bool IsFrozen(string name, FreezePreset preset, IReadOnlyList<string>? extraFrozen = null)
    {
        bool frozen = FrozenPatterns(preset).Any(p => Matches(name, p)) && !TrainablePatterns(preset).Any(p => Matches(name, p));
        return frozen || (extraFrozen?.Any(p => Matches(name, p)) ?? false);
    }

    /// <summary>
    /// Sets <c>requires_grad</c> of every parameter of <paramref name="model"/>: false where frozen by the preset or by
    /// <paramref name="extraFrozen"/> (globs or prefixes), true elsewhere. Call before building the optimizer.
    /// </summary>
    /// <exception cref="ArgumentException">A pattern matches no parameter (a typo would otherwise freeze nothing).</exception>
    public static FreezeSummary Apply(nn.Module model, FreezePreset preset, IReadOnlyList<string>? extraFrozen = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var parameters = model.named_parameters().ToList();
        foreach (var p in extraFrozen ?? [])
        {
            if (string.IsNullOrWhiteSpace(p)) throw new ArgumentException("empty freeze pattern", nameof(extraFrozen));
            if (!parameters.Any(x => Matches(x.name, p)))
                throw new ArgumentException($"freeze pattern '{p}' matches no parameter of the model", nameof(extraFrozen));
        }
        foreach (var (name, param) in parameters)
            param.requires_grad = !IsFrozen(name, preset, extraFrozen);
        return Summarize(parameters.Select(x => (x.name, x.parameter.numel(), x.parameter.requires_grad)));
    }

    /// <summary>Counts without a model: (name, element count) of every parameter, e.g. from a key manifest.</summary>
    public static FreezeSummary Plan(IEnumerable<(string Name, long Elements)> parameters, FreezePreset preset, IReadOnlyList<string>? extraFrozen = null)
        => Summarize(parameters.Select(p => (p.Name, p.Elements, !IsFrozen(p.Name, preset, extraFrozen))));

    /// <summary>The current counts of a model (trainable = <c>requires_grad</c>).</summary>
    public static FreezeSummary Summarize(nn.Module model)
        => Summarize(model.named_parameters().Select(x => (x.name, x.parameter.numel(), x.parameter.requires_grad)));

    private static FreezeSummary Summarize(IEnumerable<(string name, long n, bool trainable)> items)
    {
        int tt = 0, ft = 0; long te = 0, fe = 0;
        foreach (var (_, n, trainable) in items)
        {
            if (trainable) { tt++; te += n; }
            else { ft++; fe += n; }
        }
        return new FreezeSummary(tt, te, ft, fe);
    }

    /// <summary>Glob (with <c>*</c> / <c>?</c>) over the whole name, or a dotted-prefix match.</summary>
    public static bool Matches(string name, string pattern)
    {
        if (pattern.IndexOfAny(['*', '?']) >= 0) return GlobRegex(pattern).IsMatch(name);
        return name == pattern || name.StartsWith(pattern + ".", StringComparison.Ordinal);
    }

    private static readonly Dictionary<string, Regex> GlobCache = new();

    private static Regex GlobRegex(string pattern)
    {
        lock (GlobCache)
        {
            if (GlobCache.TryGetValue(pattern, out var r)) return r;
            var sb = new StringBuilder("^");
            foreach (char c in pattern)
                sb.Append(c switch { '*' => ".*", '?' => ".", _ => Regex.Escape(c.ToString()) });
            sb.Append('$');
            r = new Regex(sb.ToString(), RegexOptions.CultureInvariant);
            GlobCache[pattern] = r;
            return r;
        }
    }
}
