using System.Runtime.InteropServices;

namespace Sam3.Torch.IO;

/// <summary>
/// Asks LibTorch's CPU allocator for transparent huge pages. LibTorch (c10's <c>alloc_cpu</c>) aligns allocations of
/// 2 MiB and more to 2 MiB and marks them <c>MADV_HUGEPAGE</c> when the environment variable
/// <c>THP_MEM_ALLOC_ENABLE</c> is "1"; it reads the variable once, at its first allocation. A full-size set_image
/// allocates and frees several GB of activations (most above glibc's 32 MiB mmap ceiling, so each is a fresh mapping):
/// with 4 KiB pages that is ≈ 2 M page faults per call, with huge pages ≈ 0.3 M, fewer TLB misses in the GEMMs, and a
/// lower peak (benchmarks/README.md, "Huge pages"). The values computed are the same bit for bit (only where the memory
/// lies changes). Linux only; effective where <c>/sys/kernel/mm/transparent_hugepage/enabled</c> is <c>always</c> or
/// <c>madvise</c>. A value the user set (e.g. <c>THP_MEM_ALLOC_ENABLE=0</c>) is never overridden, and nothing changes
/// once LibTorch has allocated its first tensor (the variable is then already read).
/// </summary>
internal static partial class HugePageAllocation
{
    /// <summary>The variable c10 reads.</summary>
    public const string Variable = "THP_MEM_ALLOC_ENABLE";

    private static int _requested;

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    [LibraryImport("libc", EntryPoint = "getenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr GetEnv(string name);

    /// <summary>Once per process, before the model's first tensor: sets the variable to "1" unless the user set it.</summary>
    public static void Request()
    {
        if (Interlocked.Exchange(ref _requested, 1) != 0) return;
        SetIfUnset(Variable, "1");
    }

    /// <summary>
    /// Sets <paramref name="name"/> in the native environment (what LibTorch's <c>getenv</c> sees; .NET's
    /// <see cref="Environment.SetEnvironmentVariable(string, string)"/> does not reach it on Unix) unless it is already
    /// set there. Returns true when it was set by this call; false when it was set before or the platform has no libc
    /// <c>setenv</c>.
    /// </summary>
    internal static bool SetIfUnset(string name, string value)
    {
        if (!OperatingSystem.IsLinux()) return false;
        try
        {
            if (GetEnv(name) != IntPtr.Zero) return false;
            if (SetEnv(name, value, 0) != 0) return false;
            Environment.SetEnvironmentVariable(name, value); // keep .NET's copy of the environment consistent
            return true;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    }

    /// <summary>The native environment's value of <paramref name="name"/> (null when unset or not Linux).</summary>
    internal static string? NativeValue(string name)
    {
        if (!OperatingSystem.IsLinux()) return null;
        try
        {
            IntPtr p = GetEnv(name);
            return p == IntPtr.Zero ? null : Marshal.PtrToStringUTF8(p);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return null;
        }
    }
}
