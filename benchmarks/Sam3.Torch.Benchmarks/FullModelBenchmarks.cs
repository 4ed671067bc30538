using Sam3.Torch.Loading;
using BenchmarkDotNet.Attributes;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Modeling.Text;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// The released-size image model (<see cref="Sam3Config.Full"/>, random weights from the modules' own initialisation,
/// built by <see cref="Sam3ModelLoader.Build"/> with its defaults, i.e. with the interactive heads and the SAM2 neck)
/// on CPU, one normalised 1008×1008 image and one text prompt:
/// <list type="bullet">
/// <item>ImageBackbone: <c>backbone.ForwardImage</c> (ViT + both necks), fp32 — the baseline of the Ratio column;</item>
/// <item>ImageBackboneBf16: the same with the whole model and the image cast to bfloat16 (category "bf16": on a CPU
///   without AVX-512 BF16 LibTorch falls back to slow reference kernels, ~25 min an invocation on 2 AVX2 cores; leave
///   it out with <c>--anyCategories fp32</c>);</item>
/// <item>TextEncoder: <c>backbone.ForwardText</c> on the tokenized prompt;</item>
/// <item>GroundingHeads: <c>ForwardGrounding</c> (geometry encoder, fusion encoder, decoder, scoring, segmentation
///   head) with backbone and text features computed once in the set-up;</item>
/// <item>Total: tokenize + all three stages.</item>
/// </list>
/// Each invocation runs under inference mode in its own dispose scope. Every benchmark builds its own model (one process
/// per benchmark by default), so the Peak RSS column is that benchmark's footprint including model construction.
/// Run: dotnet run -c Release --project benchmarks/Sam3.Torch.Benchmarks -- --filter '*FullModel*'
/// </summary>
[Config(typeof(FullModelConfig))]
public class FullModelBenchmarks
{
    /// <summary>The text prompt of every benchmark.</summary>
    public const string PromptText = "a red car";

    private Sam3ImageModel _model = null!;
    private ClipBpeTokenizer _tokenizer = null!;
    private Tensor _image = null!;
    private Tensor _tokenIds = null!;
    private BackboneOutput? _cachedImage;
    private TextEncoderOutput? _cachedText;
    private string _current = "";

    private void BuildModel(ScalarType dtype)
    {
        int threads = BenchEnvironment.PinThreads();
        torch.manual_seed(0);
        var cfg = Sam3Config.Full;
        var started = DateTime.UtcNow;
        _model = Sam3ModelLoader.Build(cfg);
        if (dtype != ScalarType.Float32) _model.to(dtype);
        double buildSeconds = (DateTime.UtcNow - started).TotalSeconds;
        int size = cfg.Vit.ImgSize;
        // A normalised image has values in [-1, 1] ((u/255 - 0.5) / 0.5).
        _image = (torch.rand(1, 3, size, size) * 2 - 1).to(dtype);
        _tokenizer = ClipBpeTokenizer.FromBpeGz(BenchEnvironment.BpeVocabulary());
        var (ids, mask) = _tokenizer.TokenizeToTensors([PromptText]);
        mask.Dispose();
        _tokenIds = ids;
        long parameters = _model.parameters().Sum(p => p.numel());
        Console.WriteLine($"// FullModel setup: {threads} LibTorch threads, {parameters:N0} parameters ({dtype}), built in {buildSeconds:F1} s, image [1,3,{size},{size}]");
    }

    [GlobalSetup(Targets = [nameof(ImageBackbone), nameof(TextEncoder), nameof(Total)])]
    public void SetupFp32() => BuildModel(ScalarType.Float32);

    [GlobalSetup(Target = nameof(ImageBackboneBf16))]
    public void SetupBf16() => BuildModel(ScalarType.BFloat16);

    [GlobalSetup(Target = nameof(GroundingHeads))]
    public void SetupGrounding()
    {
        BuildModel(ScalarType.Float32);
        using var mode = torch.inference_mode();
        _cachedImage = _model.backbone.ForwardImage(_image);
        var text = _model.backbone.ForwardText(_tokenIds);
        foreach (var t in new[] { text.LanguageMask, text.LanguageFeatures, text.LanguageEmbeds }) t.DetachFromDisposeScope();
        _cachedText = text;
    }

    [Benchmark(Baseline = true, Description = "Image backbone fp32")]
    [BenchmarkCategory("fp32")]
    public long ImageBackbone()
    {
        using var cpu = Begin(nameof(ImageBackbone));
        using var scope = torch.NewDisposeScope();
        using var mode = torch.inference_mode();
        using var features = _model.backbone.ForwardImage(_image);
        return features.VisionFeatures.shape[1];
    }

    [Benchmark(Description = "Image backbone bf16")]
    [BenchmarkCategory("bf16")]
    public long ImageBackboneBf16()
    {
        using var cpu = Begin(nameof(ImageBackboneBf16));
        using var scope = torch.NewDisposeScope();
        using var mode = torch.inference_mode();
        using var features = _model.backbone.ForwardImage(_image);
        return features.VisionFeatures.shape[1];
    }

    [Benchmark(Description = "Text encoder fp32")]
    [BenchmarkCategory("fp32")]
    public long TextEncoder()
    {
        using var cpu = Begin(nameof(TextEncoder));
        using var scope = torch.NewDisposeScope();
        using var mode = torch.inference_mode();
        var ids = _tokenizer.TokenizeToTensors([PromptText]).Ids;
        var text = _model.backbone.ForwardText(ids);
        return text.LanguageFeatures.shape[0];
    }

    [Benchmark(Description = "Grounding heads fp32 (backbone cached)")]
    [BenchmarkCategory("fp32")]
    public long GroundingHeads()
    {
        using var cpu = Begin(nameof(GroundingHeads));
        using var scope = torch.NewDisposeScope();
        using var mode = torch.inference_mode();
        return Ground(_cachedImage!, _cachedText!);
    }

    [Benchmark(Description = "Total fp32 (image + text + grounding)")]
    [BenchmarkCategory("fp32")]
    public long Total()
    {
        using var cpu = Begin(nameof(Total));
        using var scope = torch.NewDisposeScope();
        using var mode = torch.inference_mode();
        using var features = _model.backbone.ForwardImage(_image);
        var ids = _tokenizer.TokenizeToTensors([PromptText]).Ids;
        var text = _model.backbone.ForwardText(ids);
        return Ground(features, text);
    }

    private BenchEnvironment.CpuTimer Begin(string method)
    {
        _current = method;
        return BenchEnvironment.MeasureCpu(nameof(FullModelBenchmarks) + "." + method);
    }

    private long Ground(BackboneOutput features, TextEncoderOutput text)
    {
        var textIds = torch.zeros(1, dtype: ScalarType.Int64);
        var imgIds = torch.zeros(1, dtype: ScalarType.Int64);
        using var output = _model.ForwardGrounding(features, text.LanguageFeatures, text.LanguageMask, textIds, imgIds, Prompt.Empty(1));
        return output.PredMasks?.shape[1] ?? -1;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        BenchEnvironment.RecordPeakRss(nameof(FullModelBenchmarks) + "." + _current);
        _cachedImage?.Dispose();
        if (_cachedText is { } t)
        {
            t.LanguageMask.Dispose();
            t.LanguageFeatures.Dispose();
            t.LanguageEmbeds.Dispose();
        }
        _image?.Dispose();
        _tokenIds?.Dispose();
        _model?.Dispose();
    }
}
