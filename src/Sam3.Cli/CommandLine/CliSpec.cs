using System.CommandLine;
using System.CommandLine.Help;

namespace Sam3.Cli;

/// <summary>How an option takes values: a flag, one value (given once), or a value per occurrence (repeatable).</summary>
internal enum CliOptionKind { Flag, Value, Repeated }

/// <summary>One declared option of a command: its name without dashes, help text and value name.</summary>
internal sealed record CliOptionSpec(string Name, string Description, CliOptionKind Kind = CliOptionKind.Value, string? ValueName = null)
{
    /// <summary>The command cannot run without it (shown in help; a missing one is a usage error).</summary>
    public bool Required { get; init; }
}

/// <summary>What a command's handler is given besides its arguments: the output streams, and whether stderr is a
/// terminal (progress is then drawn in place; otherwise plain lines).</summary>
internal sealed record CliContext(TextWriter Stdout, TextWriter Stderr, bool StderrIsTerminal);

/// <summary>
/// One command of the CLI as data: name, description (help text), positional arguments (their help name, or null
/// when the command takes none), declared options, subcommands and the handler that runs it. <see cref="CliSpec.Build"/>
/// turns the table into System.CommandLine commands; System.CommandLine does the parsing, help, response files
/// (<c>@args.rsp</c>) and shell completions (<c>[suggest]</c> directive, <c>dotnet-suggest</c>).
/// </summary>
internal sealed record CliCommandSpec(
    string Name,
    string Description,
    string? PositionalName,
    IReadOnlyList<CliOptionSpec> Options,
    Func<CliArgs, CliContext, int> Run,
    IReadOnlyList<CliCommandSpec>? Subcommands = null);

/// <summary>Builds the System.CommandLine tree of the CLI from the command table and maps parse errors to one line.</summary>
internal static class CliSpec
{
    /// <summary>The <c>--verbose</c> option, available on every command.</summary>
    public static readonly Option<bool> Verbose = new("--verbose") { Description = "print stack traces of errors", Recursive = true };

    /// <summary>The <c>--version</c> option of the root command.</summary>
    public static readonly Option<bool> Version = new("--version", "-V") { Description = "print the version and exit" };

    /// <summary>
    /// The root command holding every command of <paramref name="commands"/>. The handlers get <paramref name="context"/>;
    /// the root's own action prints the overview (on stderr with exit 2 when no command is given).
    /// </summary>
    public static RootCommand Build(IReadOnlyList<CliCommandSpec> commands, CliContext context, string overview)
    {
        var root = new RootCommand(overview);
        // our own --version (prints "sam3 X.Y.Z") replaces the built-in one
        foreach (var o in root.Options.OfType<VersionOption>().ToList()) root.Options.Remove(o);
        root.Options.Add(Version);
        root.Options.Add(Verbose);
        foreach (var spec in commands) root.Subcommands.Add(BuildCommand(spec, context));
        root.SetAction(pr =>
        {
            if (pr.GetValue(Version))
            {
                context.Stdout.WriteLine(Program.VersionLine);
                return 0;
            }
            context.Stderr.WriteLine(overview);
            return 2;
        });
        return root;
    }

    private static Command BuildCommand(CliCommandSpec spec, CliContext context)
    {
        var command = new Command(spec.Name, spec.Description);
        var options = new Dictionary<string, Option>(StringComparer.Ordinal);
        foreach (var o in spec.Options)
        {
            Option option = o.Kind switch
            {
                CliOptionKind.Flag => new Option<bool>("--" + o.Name) { Description = o.Description, Arity = ArgumentArity.Zero },
                CliOptionKind.Value => new Option<string>("--" + o.Name) { Description = o.Description, HelpName = o.ValueName, Required = o.Required },
                _ => new Option<string[]>("--" + o.Name)
                {
                    Description = o.Description + " (repeatable)",
                    HelpName = o.ValueName,
                    // one value per occurrence: `--image a.jpg b.jpg` leaves b.jpg a positional argument
                    AllowMultipleArgumentsPerToken = false,
                    Arity = ArgumentArity.OneOrMore,
                    Required = o.Required,
                },
            };
            options[o.Name] = option;
            command.Options.Add(option);
        }
        Argument<string[]>? positional = null;
        // Positional arguments are collected as given and checked by the command, so that it names what is missing.
        positional = new Argument<string[]>(spec.PositionalName ?? "ARGS")
        {
            Arity = ArgumentArity.ZeroOrMore,
            Description = spec.PositionalName is null ? "" : spec.PositionalName,
            Hidden = spec.PositionalName is null,
        };
        command.Arguments.Add(positional);
        foreach (var sub in spec.Subcommands ?? []) command.Subcommands.Add(BuildCommand(sub, context));
        command.SetAction(pr =>
        {
            var args = CliArgs.From(pr, spec, options, positional);
            if (spec.PositionalName is null && args.Positional.Count > 0)
                throw new UsageException($"{spec.Name}: unexpected argument '{args.Positional[0]}'");
            return spec.Run(args, context);
        });
        return command;
    }

    /// <summary>The first parse error as one line in this CLI's wording (the rest follow from it).</summary>
    public static string Describe(ParseResult result)
    {
        // The most telling error first: a misspelt option or an extra argument explains the rest (a required option
        // "missing" because its name was mistyped).
        var command = result.CommandResult.Command;
        foreach (var t in result.CommandResult.Tokens)
        {
            if (t.Type != System.CommandLine.Parsing.TokenType.Argument) continue;
            if (t.Value.StartsWith("--", StringComparison.Ordinal) && t.Value.Length > 2) return $"unknown option {t.Value.Split('=', 2)[0]}";
            if (command is not RootCommand && command.Arguments.All(a => a.Hidden)) return $"{command.Name}: unexpected argument '{t.Value}'";
        }
        var error = result.Errors.FirstOrDefault(e => !e.Message.Contains("' is required", StringComparison.Ordinal)) ?? result.Errors[0];
        string message = error.Message;
        // System.CommandLine words: reword the common ones the way the rest of the CLI speaks.
        if (result.UnmatchedTokens.Count > 0)
        {
            string token = result.UnmatchedTokens[0];
            if (token.StartsWith('-')) return $"unknown option {token.Split('=', 2)[0]}";
            if (result.CommandResult.Command is RootCommand) return $"unknown command '{token}' (see sam3 --help)";
            return $"unexpected argument '{token}'";
        }
        var required = System.Text.RegularExpressions.Regex.Match(message, "^Option '(--[a-z-]+)' is required");
        if (required.Success) return $"missing required option {required.Groups[1].Value}";
        const string missing = "Required argument missing for option: '";
        if (message.StartsWith(missing, StringComparison.Ordinal))
            return $"option {message[missing.Length..].TrimEnd('.', '\'')} needs a value";
        return message.TrimEnd('.');
    }
}
