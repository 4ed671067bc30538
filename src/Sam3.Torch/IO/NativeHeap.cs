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
