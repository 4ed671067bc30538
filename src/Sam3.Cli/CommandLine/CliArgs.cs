using System.CommandLine;

namespace Sam3.Cli;

/// <summary>A command-line usage error: printed as one line, exit code 2.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>
/// The parsed arguments of one command, read from System.CommandLine's <see cref="ParseResult"/> through the
/// command's declared options (<see cref="CliCommandSpec"/>): values by option name, flags, positional arguments and,
/// for commands whose option order carries meaning (<c>--point … --obj ID</c>), the option tokens in command-line order.
/// </summary>
internal sealed class CliArgs
{
    private readonly Dictionary<string, IReadOnlyList<string>> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _flags = new(StringComparer.Ordinal);

    public IReadOnlyList<string> Positional { get; }

    /// <summary>The command's option tokens in order, as <c>--name value</c> pairs (flags alone).</summary>
    public IReadOnlyList<string> Ordered { get; }

    private CliArgs(IReadOnlyList<string> positional, IReadOnlyList<string> ordered)
    {
        Positional = positional;
        Ordered = ordered;
    }

    /// <summary>Reads the values of <paramref name="spec"/>'s options from <paramref name="result"/>.</summary>
    public static CliArgs From(ParseResult result, CliCommandSpec spec, IReadOnlyDictionary<string, Option> options, Argument<string[]>? positional)
    {
        var pos = positional is null ? [] : (result.GetValue(positional) ?? []);
        // A token that looks like an option but is not one of this command's lands among the positional arguments:
        // report it as the unknown option it is.
        foreach (var p in pos)
            if (p.StartsWith("--", StringComparison.Ordinal) && p.Length > 2)
                throw new UsageException($"unknown option {p.Split('=', 2)[0]}");
            else if (p.StartsWith('-') && p.Length == 2 && char.IsLetter(p[1]))
                throw new UsageException($"unknown option {p}");
        var ordered = new List<string>();
        var r = new CliArgs(pos, ordered);
        foreach (var o in spec.Options)
        {
            var option = options[o.Name];
            switch (o.Kind)
            {
                case CliOptionKind.Flag:
                    if (result.GetValue((Option<bool>)option)) r._flags.Add(o.Name);
                    break;
                case CliOptionKind.Value:
                    if (result.GetValue((Option<string>)option) is { } v) r._values[o.Name] = [v];
                    break;
                case CliOptionKind.Repeated:
                    if (result.GetValue((Option<string[]>)option) is { Length: > 0 } vs) r._values[o.Name] = vs;
                    break;
            }
        }
        r.FillOrdered(result, spec, ordered);
        return r;
    }

    private void FillOrdered(ParseResult result, CliCommandSpec spec, List<string> ordered)
    {
        // The parse result's tokens, in command-line order after response-file expansion: an option token is followed by
        // its argument tokens.
        var names = spec.Options.ToDictionary(o => "--" + o.Name, o => o, StringComparer.Ordinal);
        var all = result.Tokens;
        for (int i = 0; i < all.Count; i++)
        {
            var t = all[i];
            if (t.Type != System.CommandLine.Parsing.TokenType.Option || !names.TryGetValue(t.Value, out var o)) continue;
            ordered.Add(t.Value);
            if (o.Kind != CliOptionKind.Flag && i + 1 < all.Count && all[i + 1].Type == System.CommandLine.Parsing.TokenType.Argument)
                ordered.Add(all[++i].Value);
        }
    }

    public bool Flag(string name) => _flags.Contains(name);
    public string? Value(string name) => _values.TryGetValue(name, out var v) ? v[^1] : null;
    public IReadOnlyList<string> Values(string name) => _values.TryGetValue(name, out var v) ? v : [];
    public string Required(string name) => Value(name) ?? throw new UsageException($"missing required option --{name}");

    public double Double(string name, double defaultValue)
    {
        string? v = Value(name);
        if (v is null) return defaultValue;
        if (!double.TryParse(v, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var d) || !double.IsFinite(d))
            throw new UsageException($"--{name} expects a number, got '{v}'");
        return d;
    }
}
