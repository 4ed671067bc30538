using System.Diagnostics;
using TorchSharp;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// Shared set-up of the model benchmarks: LibTorch thread pinning, locating the shared data folder, and recording the
/// process's peak resident set size and per-invocation CPU time for <see cref="PeakRssColumn"/> and <see cref="CpuTimeColumn"/>.
/// </summary>
public static class BenchEnvironment
{
    /// <summary>Environment variable overriding the LibTorch intra-op thread count (default: all logical cores).</summary>
    public const string ThreadsVariable = "SAM3_BENCH_THREADS";

    /// <summary>Environment variable naming the shared data folder (default: <c>../shared</c> next to the repository root).</summary>
    public const string SharedVariable = "SAM3_SHARED";

    /// <summary>Folder where each benchmark process leaves its peak RSS and CPU times (small files per benchmark).</summary>
    public static string PeakRssFolder => Path.Combine(Path.GetTempPath(), "sam3-bench-peak-rss");

    /// <summary>Pins LibTorch's intra-op threads so that runs are comparable; returns the count used.</summary>
    public static int PinThreads()
    {
        int threads = Environment.ProcessorCount;
        if (int.TryParse(Environment.GetEnvironmentVariable(ThreadsVariable), out int t) && t > 0) threads = t;
        torch.set_num_threads(threads);
        return threads;
    }

    /// <summary>The repository root: the first folder at or above the program's folder (or the working folder) that holds Sam3.Torch.sln.</summary>
    public static string RepoRoot()
    {
        foreach (var start in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
        {
            for (var dir = new DirectoryInfo(start); dir != null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "Sam3.Torch.sln"))) return dir.FullName;
        }
        throw new DirectoryNotFoundException("Sam3.Torch.sln not found above " + AppContext.BaseDirectory);
    }

    /// <summary>The shared data folder: <c>$SAM3_SHARED</c>, else <c>../shared</c> relative to the repository root.</summary>
    public static string SharedFolder()
    {
        string? env = Environment.GetEnvironmentVariable(SharedVariable);
        if (!string.IsNullOrEmpty(env))
        {
            if (!Directory.Exists(env)) throw new DirectoryNotFoundException($"{SharedVariable}={env} does not exist");
            return Path.GetFullPath(env);
        }
        string shared = Path.GetFullPath(Path.Combine(RepoRoot(), "..", "shared"));
        if (!Directory.Exists(shared)) throw new DirectoryNotFoundException($"{shared} not found; set {SharedVariable}");
        return shared;
    }

    /// <summary>The CLIP BPE vocabulary in the shared folder.</summary>
    public static string BpeVocabulary()
    {
        string path = Path.Combine(SharedFolder(), "parity", "inputs", "bpe_simple_vocab_16e6.txt.gz");
        if (!File.Exists(path)) throw new FileNotFoundException("CLIP BPE vocabulary not found", path);
        return path;
    }

    private static readonly Dictionary<string, List<double>> CpuSeconds = new();

    /// <summary>
    /// Starts measuring the process CPU time (user + system, all threads) of one invocation of
    /// <paramref name="benchmarkKey"/> ("Type.Method"); dispose the result to stop. On a machine shared with other work,
    /// CPU time per invocation varies far less than wall time (it still grows somewhat under contention: caches,
    /// OpenMP spin-waiting).
    /// </summary>
    public static CpuTimer MeasureCpu(string benchmarkKey) => new(benchmarkKey);

    /// <summary>See <see cref="MeasureCpu"/>.</summary>
    public readonly struct CpuTimer : IDisposable
    {
        private readonly string _key;
        private readonly TimeSpan _start;

        internal CpuTimer(string key)
        {
            _key = key;
            _start = ProcessCpuTime();
        }

        public void Dispose()
        {
            double seconds = (ProcessCpuTime() - _start).TotalSeconds;
            if (!CpuSeconds.TryGetValue(_key, out var list)) CpuSeconds[_key] = list = [];
            list.Add(seconds);
        }
    }

    private static TimeSpan ProcessCpuTime()
    {
        using var self = Process.GetCurrentProcess();
        return self.TotalProcessorTime;
    }

    /// <summary>
    /// Prints the peak resident set size of this process (VmHWM: it covers model construction and every invocation
    /// so far) and the CPU seconds of each invocation measured with <see cref="MeasureCpu"/>, and leaves both for
    /// <see cref="PeakRssColumn"/> / <see cref="CpuTimeColumn"/> under <paramref name="benchmarkKey"/> ("Type.Method").
    /// With BenchmarkDotNet's default toolchain every benchmark runs in its own process, so the peak is that
    /// benchmark's; in process (SAM3_BENCH_INPROCESS=1 or --inProcess) it is the maximum over the benchmarks run so far.
    /// </summary>
    public static void RecordPeakRss(string benchmarkKey)
    {
        using var self = Process.GetCurrentProcess();
        self.Refresh();
        long peak = self.PeakWorkingSet64;
        var cpu = CpuSeconds.TryGetValue(benchmarkKey, out var list) ? list.ToArray() : [];
        CpuSeconds.Remove(benchmarkKey);
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        Console.WriteLine($"// PeakRSS {benchmarkKey}: {peak / (1024.0 * 1024 * 1024):F2} GiB ({peak} bytes)");
        Console.WriteLine($"// CPU seconds per invocation {benchmarkKey} (in order: warm-up, measured, extra GC-statistics run): {string.Join(" ", cpu.Select(c => c.ToString("F2", inv)))}");
        try
        {
            Directory.CreateDirectory(PeakRssFolder);
            File.WriteAllText(Path.Combine(PeakRssFolder, benchmarkKey + ".txt"), peak.ToString(inv));
            File.WriteAllText(Path.Combine(PeakRssFolder, benchmarkKey + ".cpu.txt"), string.Join(" ", cpu.Select(c => c.ToString("R", inv))));
        }
        catch (IOException e)
        {
            Console.WriteLine($"// PeakRSS / CPU time not recorded for the columns: {e.Message}");
        }
    }
}
