namespace Sam3.Cli;

/// <summary>What the commands share about the console.</summary>
internal static class Commands
{
    /// <summary>True when <paramref name="stderr"/> is <see cref="Console.Error"/> and that is not redirected (a terminal).</summary>
    public static bool IsConsoleTerminal(TextWriter stderr) => ReferenceEquals(stderr, Console.Error) && !Console.IsErrorRedirected;
}
