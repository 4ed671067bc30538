using System.Diagnostics;
using TorchSharp;

namespace Sam3.Torch.Tests.Infrastructure;

/// <summary>Live native tensors of this thread and the process's resident memory, after two full garbage collections.</summary>
internal static class MemoryProbe
{
    public static (long Live, long Rss) Measure()
    {
        for (int i = 0; i < 2; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        using var proc = Process.GetCurrentProcess();
        proc.Refresh();
        return (DisposeScopeManager.Statistics.ThreadTotalLiveCount, proc.WorkingSet64);
    }
}
