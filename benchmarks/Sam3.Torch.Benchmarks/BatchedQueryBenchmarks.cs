using Sam3.Torch.Loading;
using System.Globalization;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Sam3.Torch.Batched;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Processing;
using Sam3.Torch.Text;
using TorchSharp;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// N images × M text queries, three ways, side by side in one run:
/// <list type="bullet">
/// <item>OneAtATime (baseline): the processor API as a user calls it one query at a time: per image <c>SetImage</c>
///   (backbone once), then one <c>SetTextPrompt</c> per query (text encoder from its cache, fusion encoder + decoder + heads
///   for one query);</item>
/// <item>BatchedPerImage: <see cref="Sam3BatchedPredictor"/> once per image, its M queries in one decoder pass (what
///   <c>sam3 label</c> does by default);</item>
/// <item>Batched: one <see cref="Sam3BatchedPredictor.Predict"/> for all N images and N·M queries (backbone on the
///   N-image batch, one text pass, one decoder pass).</item>
/// </list>
/// Every path post-processes to masks at the original size above the same threshold. Columns images/s and queries/s
/// are N and N·M over the mean time.
/// </summary>
public abstract class BatchedQueryBenchmarksBase
{
    /// <summary>The queries asked on every image: the first M (SAM3_BENCH_BATCH_QUERIES, default 4) of these.</summary>
    public static readonly string[] Texts = new[] { "car", "tire", "person", "grocery bag" }[..EnvCount("SAM3_BENCH_BATCH_QUERIES", 4)];

    /// <summary>Images of an invocation: the first N (SAM3_BENCH_BATCH_IMAGES, default 4) of the shared test images, cycled.</summary>
    public static readonly string[] ImageNames = new[] { "truck.jpg", "groceries.jpg", "test_image.jpg", "truck.jpg" }[..EnvCount("SAM3_BENCH_BATCH_IMAGES", 4)];

    internal static int EnvCount(string name, int max) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), out int n) && n >= 1 && n <= max ? n : max;

    public const double Threshold = 0.3;

    private protected Sam3ImageModel Model = null!;
    private ClipBpeTokenizer _tokenizer = null!;
    private List<RgbImage> _images = null!;
    private Sam3BatchedPredictor _predictor = null!;
    private Sam3ImagePredictor _processor = null!;
    private string _current = "";

    private protected abstract Sam3ImageModel BuildModel(out Sam3Config config);

    /// <summary>The class name as BenchmarkDotNet's columns key it (in process the running type is a generated subclass).</summary>
    protected abstract string Key { get; }

    [GlobalSetup]
    public void Setup()
    {
        int threads = BenchEnvironment.PinThreads();
        var model = BuildModel(out var cfg);
        Model = model;
        _tokenizer = ClipBpeTokenizer.FromBpeGz(BenchEnvironment.BpeVocabulary(), new ClipTokenizerOptions { Text = cfg.Text });
        _images = ImageNames.Select(n => ImageLoader.Load(Path.Combine(BenchEnvironment.SharedFolder(), "parity", "inputs", n))).ToList();
        _predictor = new Sam3BatchedPredictor(model, _tokenizer);
        _processor = Sam3Model.FromNetwork(model, _tokenizer).CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = Threshold });
        Console.WriteLine($"// {Key} setup: {threads} LibTorch threads, image size {cfg.ImageSize}, {_images.Count} images x {Texts.Length} queries");
    }

    private PostProcessImage Post => new() { DetectionThreshold = Threshold, MaxDetsPerImg = 100 };

    private List<Datapoint> Datapoints(IEnumerable<int> images)
    {
        long id = 0;
        return images.Select(i => new Datapoint(_images[i], Texts.Select(t =>
            new FindQuery(t, new InferenceMetadata(++id, i, 1, _images[i].Height, _images[i].Width))).ToList())).ToList();
    }

    [Benchmark(Baseline = true, Description = "One at a time (processor API)")]
    public int OneAtATime()
    {
        using var cpu = Begin(nameof(OneAtATime));
        int detections = 0;
        foreach (var image in _images)
        {
            using var state = _processor.SetImage(image);
            foreach (var t in Texts) detections += _processor.SetTextPrompt(state, t)[0].Count;
        }
        return detections;
    }

    [Benchmark(Description = "Batched per image (M queries per forward)")]
    public int BatchedPerImage()
    {
        using var cpu = Begin(nameof(BatchedPerImage));
        int detections = 0;
        for (int i = 0; i < _images.Count; i++)
        {
            using var r = _predictor.PredictTensors(Datapoints([i]), Post);
            detections += r.Values.Sum(d => d.Count);
        }
        return detections;
    }

    [Benchmark(Description = "Batched (N images x M queries in one forward)")]
    public int Batched()
    {
        using var cpu = Begin(nameof(Batched));
        using var r = _predictor.PredictTensors(Datapoints(Enumerable.Range(0, _images.Count)), Post);
        return r.Values.Sum(d => d.Count);
    }

    private BenchEnvironment.CpuTimer Begin(string method)
    {
        _current = method;
        return BenchEnvironment.MeasureCpu(Key + "." + method);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        BenchEnvironment.RecordPeakRss(Key + "." + _current);
        _processor?.Dispose();
        Model?.Dispose();
    }
}

/// <summary>The batched-query comparison with the tiny model (shared/parity/tiny, real weights, 336 px).
/// Run: dotnet run -c Release --project benchmarks/Sam3.Torch.Benchmarks -- --filter '*BatchedQueryTiny*'</summary>
[Config(typeof(BatchedQueryConfig))]
public class BatchedQueryTinyBenchmarks : BatchedQueryBenchmarksBase
{
    protected override string Key => nameof(BatchedQueryTinyBenchmarks);

    private protected override Sam3ImageModel BuildModel(out Sam3Config config)
    {
        string dir = Path.Combine(BenchEnvironment.SharedFolder(), "parity", "tiny");
        config = Sam3Config.Load(Path.Combine(dir, "config.json"));
        return Sam3ModelLoader.LoadImageModel(Path.Combine(dir, "model.safetensors"), config, new Sam3LoadOptions { EnableInstInteractivity = false });
    }
}

/// <summary>The batched-query comparison with the released-size model (<see cref="Sam3Config.Full"/>, random weights,
/// 1008 px; minutes an invocation on a 2-core CPU).
/// Run: dotnet run -c Release --project benchmarks/Sam3.Torch.Benchmarks -- --filter '*BatchedQueryFull*'</summary>
[Config(typeof(BatchedQueryConfig))]
public class BatchedQueryFullBenchmarks : BatchedQueryBenchmarksBase
{
    protected override string Key => nameof(BatchedQueryFullBenchmarks);

    private protected override Sam3ImageModel BuildModel(out Sam3Config config)
    {
        torch.manual_seed(0);
        config = Sam3Config.Full;
        return Sam3ModelLoader.Build(config, enableInstInteractivity: false);
    }
}

/// <summary>1 warm-up and 3 measured invocations (model benchmarks' settings) plus the throughput columns.</summary>
public sealed class BatchedQueryConfig : ModelBenchmarkConfig
{
    /// <summary>SAM3_BENCH_WARMUP=0 skips the warm-up; SAM3_BENCH_ITERATIONS (1-3) measures fewer invocations (full size on a CPU).</summary>
    public BatchedQueryConfig() : base("BatchedQuery", warmupCount: Environment.GetEnvironmentVariable("SAM3_BENCH_WARMUP") == "0" ? 0 : 1,
        iterationCount: BatchedQueryBenchmarksBase.EnvCount("SAM3_BENCH_ITERATIONS", 3))
    {
        AddColumn(new ThroughputColumn("images/s", false), new ThroughputColumn("queries/s", true));
    }
}

/// <summary>Images or queries per second of wall time: N (or N·M) over the mean of an invocation.</summary>
public sealed class ThroughputColumn(string name, bool queries) : IColumn
{
    public string Id => nameof(ThroughputColumn) + name;
    public string ColumnName => name;
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => queries ? 3 : 2;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => queries ? "Queries (images x texts) per second of wall time" : "Images per second of wall time";

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase)
    {
        var stats = summary[benchmarkCase]?.ResultStatistics;
        if (stats is null || stats.Mean <= 0) return "?";
        double n = BatchedQueryBenchmarksBase.ImageNames.Length * (queries ? BatchedQueryBenchmarksBase.Texts.Length : 1);
        return (n / (stats.Mean / 1e9)).ToString("F2", CultureInfo.InvariantCulture);
    }

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style) => GetValue(summary, benchmarkCase);
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public bool IsAvailable(Summary summary) => true;
    public override string ToString() => ColumnName;
}
