using System.Text.RegularExpressions;
using Sam3.Torch.Modeling.Common;

namespace Sam3.Torch.Modeling.Decoder;

/// <summary>
/// The fixed MLP shapes of the detector heads are recorded in the config as strings such as <c>"MLP(d,d,4,3)"</c>
/// (<c>HardcodedInClasses.DecoderBboxEmbed</c>, ...): (input_dim, hidden_dim, output_dim, num_layers). This parses them.
/// Terms: an integer, a symbol (<c>d</c>, <c>num_heads</c>) or an integer times a symbol (<c>2d</c>).
/// </summary>
internal static partial class MlpSpec
{
    [GeneratedRegex(@"^\s*MLP\s*\(([^)]*)\)\s*$")]
    private static partial Regex SpecRegex();

    [GeneratedRegex(@"^(\d*)\s*\*?\s*([A-Za-z_][A-Za-z_0-9]*)?$")]
    private static partial Regex TermRegex();

    /// <summary>(input, hidden, output, layers) with the given symbol values.</summary>
    public static (int input, int hidden, int output, int layers) Parse(string spec, IReadOnlyDictionary<string, int> symbols)
    {
        var m = SpecRegex().Match(spec ?? "");
        if (!m.Success) throw new Sam3ConfigException($"MLP spec '{spec}' is not of the form MLP(in,hidden,out,layers)");
        var parts = m.Groups[1].Value.Split(',');
        if (parts.Length != 4) throw new Sam3ConfigException($"MLP spec '{spec}' needs 4 terms (in,hidden,out,layers)");
        var v = parts.Select(p => Term(p.Trim(), spec!, symbols)).ToArray();
        if (v.Any(x => x <= 0)) throw new Sam3ConfigException($"MLP spec '{spec}' gives a non-positive size");
        return (v[0], v[1], v[2], v[3]);
    }

    /// <summary>Builds the <see cref="Mlp"/> a spec describes.</summary>
    public static Mlp Build(string spec, IReadOnlyDictionary<string, int> symbols)
    {
        var (i, h, o, n) = Parse(spec, symbols);
        return new Mlp(i, h, o, n);
    }

    private static int Term(string term, string spec, IReadOnlyDictionary<string, int> symbols)
    {
        var m = TermRegex().Match(term);
        if (term.Length == 0 || !m.Success) throw new Sam3ConfigException($"MLP spec '{spec}': cannot read term '{term}'");
        string digits = m.Groups[1].Value, name = m.Groups[2].Value;
        int factor = digits.Length > 0 ? int.Parse(digits) : 1;
        if (name.Length == 0) return factor;
        if (!symbols.TryGetValue(name, out int value))
            throw new Sam3ConfigException($"MLP spec '{spec}': unknown symbol '{name}' (known: {string.Join(", ", symbols.Keys)})");
        return factor * value;
    }
}
