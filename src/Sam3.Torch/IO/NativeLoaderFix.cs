using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Sam3.Torch.IO;

/// <summary>
/// Run-time half of the GLIBCXX fix (see native/GlibcxxWeakPatch.cs): before TorchSharp loads its native library,
/// patch <c>libLibTorchSharp.so</c> next to the TorchSharp assembly when this system's libstdc++ lacks
/// GLIBCXX_3.4.32. Covers builds that do not import Directory.Build.targets (BenchmarkDotNet's child projects,
/// consumers of a NuGet package). Idempotent and silent; a failure to patch (read-only folder) is left for
/// TorchSharp to report when it loads.
/// </summary>
public static class NativeLoaderFix
{
    private static int _done;

    /// <summary>Outcome of the last attempt (null before the first).</summary>
    internal static GlibcxxPatchOutcome? LastOutcome { get; private set; }

    [ModuleInitializer]
    internal static void Initialize() => EnsurePatched();

    /// <summary>Patches the TorchSharp native library once per process. Safe to call any number of times.</summary>
    public static void EnsurePatched()
    {
        if (!OperatingSystem.IsLinux() || Interlocked.Exchange(ref _done, 1) == 1) return;
        try
        {
            foreach (var dir in CandidateDirectories())
            {
                string path = Path.Combine(dir, GlibcxxWeakPatch.LibraryFileName);
                if (!File.Exists(path)) continue;
                LastOutcome = GlibcxxWeakPatch.PatchFile(path);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
        {
            // Leave it to TorchSharp's own load error, which names the missing version.
        }
    }

    private static IEnumerable<string> CandidateDirectories()
    {
        var seen = new HashSet<string>();
        string? torchDir = Path.GetDirectoryName(typeof(TorchSharp.torch).Assembly.Location);
        foreach (var baseDir in new[] { AppContext.BaseDirectory, torchDir })
        {
            if (string.IsNullOrEmpty(baseDir)) continue;
            foreach (var d in new[] { baseDir, Path.Combine(baseDir, "runtimes", RuntimeInformation.RuntimeIdentifier, "native"),
                                      Path.Combine(baseDir, "runtimes", "linux-x64", "native") })
                if (seen.Add(d)) yield return d;
        }
    }
}
