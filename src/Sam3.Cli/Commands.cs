namespace Sam3.Cli;

/// <summary>The sam3 commands. Each returns an exit code; errors are thrown as Sam3Exception / UsageException.</summary>
internal static partial class Commands
{
    /// <summary><c>sam3 inspect</c>: see <see cref="InspectCommand"/>.</summary>
    public static int Inspect(string[] args, TextWriter stdout, TextWriter stderr) => InspectCommand.Run(args, stdout, stderr);

    /// <summary><c>sam3 convert</c>: see <see cref="ConvertCommand"/>. Progress overwrites one line only when stderr is the console's own, unredirected stream.</summary>
    public static int Convert(string[] args, TextWriter stdout, TextWriter stderr) =>
        ConvertCommand.Run(args, stdout, stderr, stderrIsTerminal: IsConsoleTerminal(stderr));

    public static int Segment(string[] args, TextWriter stdout, TextWriter stderr) => SegmentCommand.Run(args, stdout, stderr);

    public static int Track(string[] args, TextWriter stdout, TextWriter stderr) => TrackCommand.RunWithConsoleCancel(args, stdout, stderr);

    public static int Parity(string[] args, TextWriter stdout, TextWriter stderr) => ParityCommand.Run(args, stdout, stderr);

    /// <summary><c>sam3 label</c> / <c>sam3 label merge</c>: see <see cref="LabelCommand"/>.</summary>
    public static int Label(string[] args, TextWriter stdout, TextWriter stderr) => LabelCommand.Run(args, stdout, stderr);

    /// <summary>True when <paramref name="stderr"/> is <see cref="Console.Error"/> and that is not redirected (a terminal).</summary>
    public static bool IsConsoleTerminal(TextWriter stderr) => ReferenceEquals(stderr, Console.Error) && !Console.IsErrorRedirected;
}
