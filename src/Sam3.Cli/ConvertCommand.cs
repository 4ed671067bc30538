using System.Diagnostics;
using System.Globalization;
using Sam3.Torch;
using Sam3.Torch.IO;

namespace Sam3.Cli;

/// <summary>
/// <c>sam3 convert IN OUT.safetensors [--force]</c>: converts a PyTorch checkpoint (or a safetensors file) into a
/// memory-mappable safetensors file with the same keys (<see cref="CheckpointInspector.Convert"/>), with progress on
/// stderr. An existing OUT is never replaced without <c>--force</c>, OUT may not be IN, and OUT's folder is created.
/// The file is written under a temporary name and renamed when complete, so a failed conversion leaves no partial OUT.
/// </summary>
internal static class ConvertCommand
{
    public const string Synopsis = "sam3 convert IN OUT.safetensors [--layout hf|original [--config C] [--sidecar F]] [--force]";


    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static int Run(CliArgs a, TextWriter stdout, TextWriter stderr, bool stderrIsTerminal)
    {
        if (a.Positional.Count < 2)
            throw new UsageException($"convert: missing {(a.Positional.Count == 0 ? "IN and OUT" : "OUT")} (usage: {Synopsis})");
        if (a.Positional.Count > 2) throw new UsageException($"convert: unexpected argument '{a.Positional[2]}' (usage: {Synopsis})");
        string input = a.Positional[0], output = a.Positional[1];
        // before anything is read: the input is a regular file, OUT a writable file name that is not the input
        if (string.IsNullOrWhiteSpace(output)) throw new UsageException("convert: OUT is empty; give an output .safetensors file name");
        InputValidation.RequireFile(input, "IN", "checkpoint");
        InputValidation.OutputFile(output, "OUT");
        if (!output.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            throw new UsageException($"convert: OUT must be a .safetensors file name, got '{output}'");
        if (SameFile(input, output))
            throw new UsageException($"convert: OUT is the input file ({output}); choose another output name");
        if (Directory.Exists(output)) throw new Sam3Exception($"convert: {output} is a folder");
        if (File.Exists(output) && !a.Flag("force"))
            throw new Sam3Exception($"convert: {output} already exists (use --force to replace it)");
        if (Path.GetDirectoryName(Path.GetFullPath(output)) is { } outFolder) Directory.CreateDirectory(outFolder);
        using var runLock = RunLock.ForFile(output); // a second convert onto the same OUT fails instead of racing

        if (a.Value("layout") is { } layout)
        {
            if (Path.GetDirectoryName(Path.GetFullPath(output)) is { } dir) Directory.CreateDirectory(dir);
            if (ConvertLayout.Run(input, output, layout, a.Value("config"), a.Value("sidecar"), stdout, stderr, stderrIsTerminal) is { } code) return code;
        }
        else if (a.Value("config") is not null || a.Value("sidecar") is not null) throw new UsageException("--config and --sidecar need --layout original");
        var watch = Stopwatch.StartNew();
        Dictionary<string, long> bytesByKey;
        CheckpointFormat format;
        using (var source = CheckpointFile.Open(input))
        {
            format = source.Format;
            bytesByKey = source.Names.ToDictionary(n => n, n => source.Info(n).ByteSize, StringComparer.Ordinal);
        }
        string? folder = Path.GetDirectoryName(Path.GetFullPath(output));
        if (folder is not null) Directory.CreateDirectory(folder);

        var progress = new ConvertProgress(stderr, stderrIsTerminal, bytesByKey);
        try
        {
            CheckpointInspector.Convert(input, output, progress);
        }
        finally
        {
            progress.Finish();
        }
        watch.Stop();
        long size = new FileInfo(output).Length;
        stdout.WriteLine(string.Format(Inv, "wrote {0}: {1:N0} tensors, {2:N0} bytes, in {3:F1} s (from {4}, {5})",
            output, bytesByKey.Count, size, watch.Elapsed.TotalSeconds, input, InspectCommand.FormatName(format)));
        return 0;
    }

    /// <summary>
    /// The same file: same device and inode when both exist (symbolic links to the file or to a folder on its path,
    /// <c>..</c>, hard links, bind mounts), else the same path with every link resolved.
    /// </summary>
    public static bool SameFile(string a, string b) => PathIdentity.SameFile(a, b);

    /// <summary>Previous check (the file's own link only), kept for reference.</summary>
    internal static bool SameFileByLinkTarget(string a, string b)
    {
        static string Resolve(string p)
        {
            string full = Path.GetFullPath(p);
            try
            {
                if (File.Exists(full) && new FileInfo(full).ResolveLinkTarget(returnFinalTarget: true) is { } target)
                    return Path.GetFullPath(target.FullName);
            }
            catch (IOException) { }
            return full;
        }
        return string.Equals(Resolve(a), Resolve(b), OperatingSystem.IsLinux() ? StringComparison.Ordinal : StringComparison.OrdinalIgnoreCase);
    }
}
