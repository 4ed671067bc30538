using System.Runtime.InteropServices;

namespace Sam3.Torch.IO;

/// <summary>
/// Returns the C heap's free memory to the operating system after a stage that allocated and freed a lot of native
/// memory (LibTorch's CPU tensors come from <c>malloc</c>). glibc raises its mmap threshold dynamically (up to 32 MB)
/// once large blocks have been freed, so later activations of up to that size are carved from the heap, and the heap
/// keeps what they free: without a trim the process stays ~1 GB above its live data after a full-size set_image, and
/// the next stage's peak starts from there. <c>malloc_trim(0)</c> releases every free page (not only the heap's top).
/// A no-op where glibc is absent (Windows, macOS, musl).
/// </summary>
internal static partial class NativeHeap
{
    private static int _unavailable; // 1 once malloc_trim turned out to be missing

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    [LibraryImport("libc", EntryPoint = "malloc")]
    private static partial IntPtr Malloc(nuint size);

    [LibraryImport("libc", EntryPoint = "free")]
    private static partial void Free(IntPtr pointer);

    /// <summary>glibc's upper bound of the dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX, 32 MiB).</summary>
    internal const int MmapThresholdMax = 32 << 20;

    private static int _primed;

    /// <summary>
    /// Puts glibc's allocator in the state that a first forward leaves it in, before that forward runs. glibc starts
    /// with a 128 KiB mmap threshold and raises it (up to 32 MiB, trim threshold twice that) whenever a larger
    /// mmap-served block is freed; until then every activation above the current threshold is a fresh mapping whose
    /// pages fault in one by one and are unmapped on free. In the first full-size set_image that churn costs about 1.6
    /// million extra page faults and several seconds of system time that later calls do not pay. Allocating and freeing
    /// one block of the largest size the dynamic rule accepts (never touched: one page of bookkeeping) raises the
    /// thresholds now to where the first forward would raise them. Has no effect where the threshold was set
    /// explicitly (mallopt, GLIBC_TUNABLES) or already raised; once per process; a no-op without glibc.
    /// </summary>
    public static bool PrimeMmapThreshold()
    {
        if (!OperatingSystem.IsLinux() || Volatile.Read(ref _unavailable) != 0) return false;
        if (Interlocked.Exchange(ref _primed, 1) == 1) return true;
        try
        {
            // An mmap-served chunk is the request + its header rounded up to a page: 32 MiB − 4 KiB here. glibc compares
            // the chunk's size field, flag bits included, with the 32 MiB bound: a chunk of exactly 32 MiB would not count.
            IntPtr block = Malloc(MmapThresholdMax - 8192);
            if (block != IntPtr.Zero) Free(block);
            return block != IntPtr.Zero;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            Volatile.Write(ref _unavailable, 1);
            return false;
        }
    }

    /// <summary>Releases free C-heap pages to the OS; returns false where that is not possible (no glibc).</summary>
    public static bool Trim()
    {
        if (!OperatingSystem.IsLinux() || Volatile.Read(ref _unavailable) != 0) return false;
        try
        {
            MallocTrim(0);
            return true;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            Volatile.Write(ref _unavailable, 1);
            return false;
        }
    }
}
