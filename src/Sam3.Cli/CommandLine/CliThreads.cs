using System.Globalization;
using TorchSharp;

namespace Sam3.Cli;

/// <summary>
/// The CPU threads LibTorch uses for one operation (its intra-op pool, shared by every model in the process, so several
/// predictors in one process never oversubscribe the CPU). Default: the number of physical cores — hyper-threads share
/// one core's vector units, and GEMM-bound work runs no faster on them; <c>--threads N</c> overrides it.
/// </summary>
internal static class CliThreads
{
    /// <summary>Physical cores of this machine (distinct (physical id, core id) pairs of /proc/cpuinfo on Linux), else the
    /// logical processor count.</summary>
    public static int PhysicalCores()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
            {
                var cores = new HashSet<(string, string)>();
                string physical = "0";
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                {
                    int colon = line.IndexOf(':');
                    if (colon < 0) continue;
                    string key = line[..colon].Trim(), value = line[(colon + 1)..].Trim();
                    if (key == "physical id") physical = value;
                    else if (key == "core id") cores.Add((physical, value));
                }
                if (cores.Count > 0) return Math.Min(cores.Count, Environment.ProcessorCount);
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return Environment.ProcessorCount;
    }

    /// <summary>Sets LibTorch's thread count from <c>--threads</c> (a positive integer), or to the physical cores.</summary>
    public static int Apply(string? option)
    {
        int threads;
        if (option is null) threads = PhysicalCores();
        else if (!int.TryParse(option, NumberStyles.Integer, CultureInfo.InvariantCulture, out threads) || threads < 1 || threads > 4096)
            throw new UsageException($"--threads expects a positive number of threads, got '{option}'");
        if (torch.get_num_threads() != threads) torch.set_num_threads(threads);
        return threads;
    }
}
