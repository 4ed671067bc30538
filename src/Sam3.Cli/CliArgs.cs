namespace Sam3.Cli;

/// <summary>A command-line usage error: printed as one line, exit code 2.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>
/// Minimal option parser: positional arguments, <c>--name value</c>, <c>--name=value</c>, repeatable options and flags.
/// Every option must be declared by the command; an unknown one is a usage error naming it.
/// </summary>
internal sealed class CliArgs
{
    private readonly Dictionary<string, List<string>> _values = new();
    private readonly HashSet<string> _flags = new();
    public List<string> Positional { get; } = new();

    public static CliArgs Parse(IEnumerable<string> args, IReadOnlyCollection<string> valueOptions, IReadOnlyCollection<string> flagOptions)
    {
        var r = new CliArgs();
        var list = args.ToList();
        for (int i = 0; i < list.Count; i++)
        {
            string a = list[i];
            if (a.StartsWith("--") && a.Length > 2)
            {
                string name = a[2..], value = "";
                bool inline = false;
                int eq = name.IndexOf('=');
                if (eq >= 0) { value = name[(eq + 1)..]; name = name[..eq]; inline = true; }
                if (flagOptions.Contains(name))
                {
                    if (inline) throw new UsageException($"option --{name} takes no value");
                    r._flags.Add(name);
                }
                else if (valueOptions.Contains(name))
                {
                    if (!inline)
                    {
                        if (i + 1 >= list.Count) throw new UsageException($"option --{name} needs a value");
                        value = list[++i];
                    }
                    if (!r._values.TryGetValue(name, out var vs)) r._values[name] = vs = new List<string>();
                    vs.Add(value);
                }
                else throw new UsageException($"unknown option --{name}");
            }
            else r.Positional.Add(a);
        }
        return r;
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
