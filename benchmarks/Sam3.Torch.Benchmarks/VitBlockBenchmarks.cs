using BenchmarkDotNet.Attributes;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// One ViT block of the released model (<see cref="Sam3Config.Full"/>: dim 1024, 16 heads, MLP 4736, RoPE) on the full
/// token grid [1, 72, 72, 1024] on CPU, random weights (the modules' own initialisation): the windowed block 0
/// (9 windows of 24×24 tokens) against the global block 7 (attention over all 5184 tokens), in fp32 (the baseline is
/// the global fp32 block) and, with the same weights cast to bfloat16, in bf16. Each invocation runs under inference
/// mode inside its own dispose scope. The blocks are built exactly as <see cref="ViT"/> builds its blocks.
/// Run: dotnet run -c Release --project benchmarks/Sam3.Torch.Benchmarks -- --filter '*VitBlock*'
/// </summary>
[Config(typeof(VitBlockConfig))]
public class VitBlockBenchmarks
{
    private const int WindowedIndex = 0;
    private const int GlobalIndex = 7;

    private Block _windowed = null!;
    private Block _global = null!;
    private Block _windowedBf16 = null!;
    private Block _globalBf16 = null!;
    private Block _globalPolicy = null!;
    private Tensor _x = null!;
    private Tensor _xBf16 = null!;
    private string _current = "";

    [GlobalSetup]
    public void Setup()
    {
        int threads = BenchEnvironment.PinThreads();
        var cfg = Sam3Config.Full;
        if (cfg.Vit.IsGlobalBlock(WindowedIndex) || !cfg.Vit.IsGlobalBlock(GlobalIndex))
            throw new InvalidOperationException($"Sam3Config.Full: expected block {WindowedIndex} windowed and block {GlobalIndex} global");
        torch.manual_seed(0);
        _windowed = BuildBlock(cfg, WindowedIndex);
        _global = BuildBlock(cfg, GlobalIndex);
        _windowedBf16 = BuildBlock(cfg, WindowedIndex);
        _windowedBf16.load_state_dict(_windowed.state_dict());
        _windowedBf16.to(ScalarType.BFloat16);
        _globalBf16 = BuildBlock(cfg, GlobalIndex);
        _globalBf16.load_state_dict(_global.state_dict());
        _globalBf16.to(ScalarType.BFloat16);
        // the bf16 policy (Precision/PrecisionPolicy): bf16 GEMM weights, fp32 LayerNorms and residual stream
        _globalPolicy = BuildBlock(cfg, GlobalIndex);
        _globalPolicy.load_state_dict(_global.state_dict());
        Sam3.Torch.Precision.PrecisionPolicy.Apply(_globalPolicy);
        int n = cfg.Vit.TokensPerSide;
        _x = torch.randn(1, n, n, cfg.Vit.EmbedDim);
        _xBf16 = _x.to(ScalarType.BFloat16);
        Console.WriteLine($"// VitBlock setup: {threads} LibTorch threads, input [1,{n},{n},{cfg.Vit.EmbedDim}], window {cfg.Vit.WindowSize}");
    }

    /// <summary>Block <paramref name="i"/> with the arguments <see cref="ViT"/>'s constructor gives it, in eval mode.</summary>
    internal static Block BuildBlock(Sam3Config cfg, int i)
    {
        var c = cfg.Vit;
        int n = c.TokensPerSide;
        double dpr = c.Depth > 1 ? c.DropPathRate * i / (c.Depth - 1) : 0.0;
        var block = new Block(c.EmbedDim, c.NumHeads, c.MlpHiddenDim, c.QkvBias, dpr, cfg.HardcodedInClasses.VitLayerNormEps,
            c.IsGlobalBlock(i) ? 0 : c.WindowSize, (n, n), c.UseRope, c.RopeTheta, (c.RopePtSide, c.RopePtSide), c.UseInterpRope);
        block.eval();
        return block;
    }

    [Benchmark(Description = "Windowed block 0 fp32")]
    public long WindowedBlock()
    {
        using var cpu = Begin(nameof(WindowedBlock));
        return Run(_windowed, _x);
    }

    [Benchmark(Baseline = true, Description = "Global block 7 fp32")]
    public long GlobalBlock()
    {
        using var cpu = Begin(nameof(GlobalBlock));
        return Run(_global, _x);
    }

    [Benchmark(Description = "Windowed block 0 bf16")]
    public long WindowedBlockBf16()
    {
        using var cpu = Begin(nameof(WindowedBlockBf16));
        return Run(_windowedBf16, _xBf16);
    }

    [Benchmark(Description = "Global block 7 bf16")]
    public long GlobalBlockBf16()
    {
        using var cpu = Begin(nameof(GlobalBlockBf16));
        return Run(_globalBf16, _xBf16);
    }

    [Benchmark(Description = "Global block 7 bf16 policy")]
    public long GlobalBlockBf16Policy()
    {
        using var cpu = Begin(nameof(GlobalBlockBf16Policy));
        return Run(_globalPolicy, _x);
    }

    private BenchEnvironment.CpuTimer Begin(string method)
    {
        _current = method;
        return BenchEnvironment.MeasureCpu(nameof(VitBlockBenchmarks) + "." + method);
    }

    private static long Run(Block block, Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        using var mode = torch.inference_mode();
        var y = block.forward(x);
        return y.shape[3];
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        BenchEnvironment.RecordPeakRss(nameof(VitBlockBenchmarks) + "." + _current);
        _windowed?.Dispose();
        _global?.Dispose();
        _windowedBf16?.Dispose();
        _globalBf16?.Dispose();
        _globalPolicy?.Dispose();
        _x?.Dispose();
        _xBf16?.Dispose();
    }
}
