using System.Diagnostics;
using System.Globalization;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// "Peak RSS" column: the peak resident set size that the benchmark's process recorded in its [GlobalCleanup]
/// (<see cref="BenchEnvironment.RecordPeakRss"/>). Only files written after this host process started are shown, so a
/// stale number from an earlier run never appears; "?" means none was recorded. Native (LibTorch) memory is included,
/// which BenchmarkDotNet's MemoryDiagnoser (managed allocations only) does not see.
/// </summary>
public sealed class PeakRssColumn : IColumn
{
    private static readonly DateTime HostStart = GetHostStart();

    public string Id => nameof(PeakRssColumn);
    public string ColumnName => "Peak RSS";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 0;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Size;
    public string Legend => "Peak resident set size of the benchmark process (VmHWM, incl. model construction and native memory)";

    public static string Key(BenchmarkCase benchmarkCase)
        => benchmarkCase.Descriptor.Type.Name + "." + benchmarkCase.Descriptor.WorkloadMethod.Name;

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase)
    {
        string path = Path.Combine(BenchEnvironment.PeakRssFolder, Key(benchmarkCase) + ".txt");
        if (!IsFromThisRun(path)) return "?";
        if (!long.TryParse(File.ReadAllText(path).Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out long bytes)) return "?";
        return (bytes / (1024.0 * 1024 * 1024)).ToString("F2", CultureInfo.InvariantCulture) + " GiB";
    }

    /// <summary>True when <paramref name="path"/> exists and was written after this host process started.</summary>
    public static bool IsFromThisRun(string path) => File.Exists(path) && File.GetLastWriteTimeUtc(path) >= HostStart;

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) => GetValue(summary, benchmarkCase);
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public bool IsAvailable(Summary summary) => true;
    public override string ToString() => ColumnName;

    private static DateTime GetHostStart()
    {
        using var self = Process.GetCurrentProcess();
        return self.StartTime.ToUniversalTime().AddSeconds(-1);
    }
}
