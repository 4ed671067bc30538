using System.Runtime.InteropServices;
using NUnit.Framework;
using Sam3.Torch.IO;

namespace Sam3.Torch.Tests.IO;

/// <summary>
/// <see cref="NativeHeap.PrimeMmapThreshold"/>: after it, a block below 32 MiB comes from the heap, not from a fresh
/// mapping (glibc's dynamic mmap threshold has been raised as a first forward would raise it). Measured with
/// glibc's <c>mallinfo2</c> (bytes in mmap-served blocks); skipped without glibc ≥ 2.33.
/// </summary>
[TestFixture, Category("Fast")]
public class NativeHeapPrimeTests
{
    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2
    {
        public nuint arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
    }

    [DllImport("libc", EntryPoint = "mallinfo2")]
    private static extern MallInfo2 Mallinfo2();

    private static MallInfo2? TryMallinfo()
    {
        if (!OperatingSystem.IsLinux()) return null;
        try { return Mallinfo2(); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
    }

    [Test]
    public void AfterPrimingA16MiBBlockIsNotAFreshMapping()
    {
        if (TryMallinfo() is null) Assert.Ignore("mallinfo2 (glibc >= 2.33) is not available here");
        Assert.That(NativeHeap.PrimeMmapThreshold(), Is.True);
        Assert.That(NativeHeap.PrimeMmapThreshold(), Is.True, "idempotent");
        const int size = 16 << 20; // above glibc's initial 128 KiB threshold, below the primed 32 MiB
        var before = TryMallinfo()!.Value;
        IntPtr block = Marshal.AllocHGlobal(size); // malloc on Unix
        try
        {
            var during = TryMallinfo()!.Value;
            // an mmap-served block would add its whole size to hblkhd; other threads' small blocks cannot add 16 MiB
            Assert.That((long)during.hblkhd - (long)before.hblkhd, Is.LessThan(size),
                $"the 16 MiB block was served by mmap (hblkhd {before.hblkhd} -> {during.hblkhd}): the threshold was not raised");
        }
        finally
        {
            Marshal.FreeHGlobal(block);
        }
    }
}
