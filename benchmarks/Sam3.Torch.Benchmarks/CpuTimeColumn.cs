using System.Globalization;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// "CPU time" column: the median process CPU time (user + system, all threads) of the measured invocations, as the
/// benchmark recorded them with <see cref="BenchEnvironment.MeasureCpu"/> (the IterationCount invocations after the
/// WarmupCount warm-up ones). On a shared machine it is the better number to compare: wall time there mostly measures how
/// much of the CPU other processes left. "?" means nothing was recorded in this run.
/// </summary>
public sealed class CpuTimeColumn : IColumn
{
    public string Id => nameof(CpuTimeColumn);
    public string ColumnName => "CPU time";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => 1;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Time;
    public string Legend => "Median process CPU time (user + system, all threads) of the measured invocations";

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase)
    {
        string path = Path.Combine(BenchEnvironment.PeakRssFolder, PeakRssColumn.Key(benchmarkCase) + ".cpu.txt");
        if (!PeakRssColumn.IsFromThisRun(path)) return "?";
        var values = File.ReadAllText(path).Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(v => double.Parse(v, CultureInfo.InvariantCulture)).ToList();
        // Recorded in invocation order: warm-up, measured iterations, then BenchmarkDotNet's extra (GC statistics) one.
        var job = benchmarkCase.Job;
        int warmup = job.HasValue(RunMode.WarmupCountCharacteristic) ? job.Run.WarmupCount : 1;
        int measured = job.HasValue(RunMode.IterationCountCharacteristic) ? job.Run.IterationCount : values.Count - warmup;
        values = values.Skip(warmup).Take(measured).ToList();
        if (values.Count == 0) return "?";
        values.Sort();
        double median = values.Count % 2 == 1 ? values[values.Count / 2] : (values[values.Count / 2 - 1] + values[values.Count / 2]) / 2;
        return median.ToString("F2", CultureInfo.InvariantCulture) + " s";
    }

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) => GetValue(summary, benchmarkCase);
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public bool IsAvailable(Summary summary) => true;
    public override string ToString() => ColumnName;
}
