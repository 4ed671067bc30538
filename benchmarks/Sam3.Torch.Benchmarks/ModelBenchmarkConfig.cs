using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Engines;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// Configuration of the model benchmarks (invocations of seconds to a minute): RunStrategy.Monitoring (no pilot and no
/// overhead stages: one invocation per iteration), one launch, few iterations, MemoryDiagnoser, and the
/// <see cref="CpuTimeColumn"/> and <see cref="PeakRssColumn"/>. SAM3_BENCH_INPROCESS=1 (set by Program.cs for
/// <c>--inProcess</c>) runs the job in the host process: no child build; peak RSS then accumulates over the run.
/// </summary>
public abstract class ModelBenchmarkConfig : ManualConfig
{
    protected ModelBenchmarkConfig(string id, int warmupCount, int iterationCount)
    {
        var job = Job.Default
            .WithStrategy(RunStrategy.Monitoring)
            .WithLaunchCount(1)
            .WithWarmupCount(warmupCount)
            .WithIterationCount(iterationCount)
            .WithId(id);
        if (Environment.GetEnvironmentVariable("SAM3_BENCH_INPROCESS") == "1")
            job = job.WithToolchain(new InProcessEmitToolchain(TimeSpan.FromHours(2), logOutput: true)); // full-size invocations take minutes
        AddJob(job);
        AddDiagnoser(MemoryDiagnoser.Default);
        AddColumn(new CpuTimeColumn(), new PeakRssColumn());
    }
}

/// <summary>One ViT block (seconds an invocation on 2 cores, much more in bf16 without AVX-512): 1 warm-up, 3 measured iterations.</summary>
public sealed class VitBlockConfig() : ModelBenchmarkConfig("VitBlock", warmupCount: 1, iterationCount: 3);

/// <summary>The whole image model (tens of seconds an invocation on 2 cores): 1 warm-up, 3 measured iterations.</summary>
public sealed class TrackerFrameConfig() : ModelBenchmarkConfig("TrackerFrame", warmupCount: 0, iterationCount: 2);
public sealed class FullModelConfig() : ModelBenchmarkConfig("FullModel", warmupCount: 1, iterationCount: 3);
