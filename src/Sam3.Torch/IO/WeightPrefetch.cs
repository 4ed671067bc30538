using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// Maps the memory-mapped weights in at load time, in one system call per contiguous range, instead of one page fault
/// per 64 KiB (fault-around) during the first forward: <c>madvise(MADV_POPULATE_READ)</c> (Linux ≥ 5.14) fills the
/// page tables of the given tensors' pages read-only — no copy, a private mapping stays shared with the page cache —,
/// reading from disk what the page cache does not hold yet. Where that advice is unknown (older kernels: EINVAL) it
/// falls back to <c>MADV_WILLNEED</c> (read-ahead into the page cache, the page tables still fill on first touch);
/// where <c>madvise</c> itself is missing (Windows, macOS, no libc) or refused, it does nothing: prefetching never
/// changes a result and never fails a load. Anonymous (already resident) memory is harmless to advise.
/// </summary>
internal static partial class WeightPrefetch
{
    /// <summary>Environment variable that turns the load-time prefetch on when set to <c>1</c> (it is off by default).</summary>
    public const string Variable = "SAM3_PREFETCH";

    internal const int MadvWillNeed = 3;
    internal const int MadvPopulateRead = 22;
    private const int EINVAL = 22;

    /// <summary>What <see cref="Prefetch(IEnumerable{Tensor})"/> did.</summary>
    internal enum Outcome
    {
        /// <summary>Nothing to do, or turned off.</summary>
        None,
        /// <summary>Page tables populated (MADV_POPULATE_READ).</summary>
        Populated,
        /// <summary>Read-ahead only (MADV_WILLNEED): the kernel has no MADV_POPULATE_READ.</summary>
        ReadAhead,
        /// <summary>madvise is unavailable or refused every range: nothing done (first touch faults the pages in as before).</summary>
        Unavailable,
    }

    /// <summary>The advice call; replaceable by tests (returns 0 or an errno).</summary>
    internal delegate int AdviseFunction(IntPtr address, nuint length, int advice);

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    private static partial int MAdvise(IntPtr address, nuint length, int advice);

    private static int NativeAdvise(IntPtr address, nuint length, int advice)
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("madvise");
        return MAdvise(address, length, advice) == 0 ? 0 : Marshal.GetLastPInvokeError();
    }

    /// <summary>True when <see cref="Variable"/> is <c>1</c>.</summary>
    public static bool RequestedByEnvironment => Environment.GetEnvironmentVariable(Variable) == "1";

    /// <summary>Prefetches the memory of every CPU tensor of <paramref name="tensors"/> (page-aligned, merged ranges).</summary>
    public static Outcome Prefetch(IEnumerable<Tensor> tensors) => Prefetch(Ranges(tensors), NativeAdvise);

    /// <summary>The page-aligned, merged [start, end) address ranges of the CPU tensors' memory.</summary>
    internal static List<(long Start, long End)> Ranges(IEnumerable<Tensor> tensors)
    {
        long page = Environment.SystemPageSize;
        var raw = new List<(long, long)>();
        foreach (var t in tensors)
        {
            if (t.IsInvalid || t.device_type != DeviceType.CPU || t.numel() == 0 || !t.is_contiguous()) continue;
            long start = TensorMemory.DataPointer(t).ToInt64();
            if (start == 0) continue;
            long end = start + t.numel() * t.element_size();
            raw.Add((start / page * page, (end + page - 1) / page * page));
        }
        return Merge(raw);
    }

    /// <summary>Sorts and merges overlapping or touching ranges.</summary>
    internal static List<(long Start, long End)> Merge(List<(long Start, long End)> ranges)
    {
        ranges.Sort((a, b) => a.Start.CompareTo(b.Start));
        var merged = new List<(long Start, long End)>();
        foreach (var r in ranges)
        {
            if (merged.Count > 0 && r.Start <= merged[^1].End)
                merged[^1] = (merged[^1].Start, Math.Max(merged[^1].End, r.End));
            else
                merged.Add(r);
        }
        return merged;
    }

    /// <summary>
    /// Advises each range with <paramref name="advise"/>: MADV_POPULATE_READ, falling back to MADV_WILLNEED for the remaining ranges
    /// when the kernel does not know it (EINVAL); any other failure (a range that is not mapped, a missing libc) is
    /// skipped silently.
    /// </summary>
    internal static Outcome Prefetch(IReadOnlyList<(long Start, long End)> ranges, AdviseFunction advise)
    {
        if (ranges.Count == 0) return Outcome.None;
        bool populated = false, readAhead = false, populateUnsupported = false;
        foreach (var (start, end) in ranges)
        {
            try
            {
                if (!populateUnsupported)
                {
                    int err = advise(new IntPtr(start), (nuint)(end - start), MadvPopulateRead);
                    if (err == 0) { populated = true; continue; }
                    if (err != EINVAL) continue; // e.g. EFAULT/ENOMEM: not a file mapping we may touch; skip it
                    populateUnsupported = true; // the kernel predates MADV_POPULATE_READ: read-ahead from here on
                }
                if (advise(new IntPtr(start), (nuint)(end - start), MadvWillNeed) == 0) readAhead = true;
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or PlatformNotSupportedException)
            {
                return populated ? Outcome.Populated : readAhead ? Outcome.ReadAhead : Outcome.Unavailable;
            }
        }
        return populated ? Outcome.Populated : readAhead ? Outcome.ReadAhead : Outcome.Unavailable;
    }
}
