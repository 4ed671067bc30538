namespace Sam3.Cli;

/// <summary>The sam3 commands. Each returns an exit code; errors are thrown as Sam3Exception / UsageException.</summary>
public static partial class Commands
{
    public static int Inspect(string[] args, TextWriter stdout) => throw new UsageException("inspect: not wired yet");
    public static int Convert(string[] args, TextWriter stdout, TextWriter stderr) => throw new UsageException("convert: not wired yet");
}
