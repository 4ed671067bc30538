using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// The first call's overhead (issue 15 item 2), outside BenchmarkDotNet, in a fresh process:
/// <c>dotnet Sam3.Torch.Benchmarks.dll firstcall --checkpoint sam3.pt [--tokenizer bpe.txt.gz]
/// [--image truck.jpg] [--text truck] [--threshold 0.5] [--touch] [--sine] [--image-only] [--sine-only]</c>.
/// Loads the checkpoint through the public API (<see cref="Sam3Model.Load"/>), then times SetImage #1, SetTextPrompt #1,
/// then the same work on a second predictor (its own empty text cache, so the text encoder runs again): SetImage #2,
/// SetTextPrompt #2. Each row: wall and process CPU seconds (user+sys; sys alone), minor/major page faults (<c>/proc/self/stat</c>),
/// .NET JIT time, VmRSS and VmHWM after the stage. <c>--touch</c> first reads one float per 4 KiB page of every
/// parameter and buffer (the cost of faulting the weights in, alone); <c>--sine</c> first builds the sine position
/// tables of the vision neck's four levels with the dense construction used before and as the module builds them now
/// (their cost alone). <c>--image-only</c> skips the text prompts; <c>--sine-only</c> times only the two table
/// constructions, without a model. Wrap every full-size run in
/// <c>flock</c> on a shared lock file on shared machines. Linux only (the counters come from /proc).
/// </summary>
internal static class FirstCall
{
    public const string Verb = "firstcall";

    public static int Run(string[] args)
    {
        string Arg(string name, Func<string> fallback)
        {
            int i = Array.IndexOf(args, "--" + name);
            return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback();
        }
        string checkpoint = Arg("checkpoint", () => throw new ArgumentException("firstcall needs --checkpoint PATH (a full-size sam3.pt)"));
        string tokenizer = Arg("tokenizer", BenchEnvironment.BpeVocabulary);
        string imagePath = Arg("image", () => Path.Combine(BenchEnvironment.SharedFolder(), "parity", "inputs", "truck.jpg"));
        string text = Arg("text", () => "truck");
        double threshold = double.Parse(Arg("threshold", () => "0.5"), CultureInfo.InvariantCulture);
        int threads = BenchEnvironment.PinThreads();
        Console.WriteLine($"firstcall: {checkpoint} ({new FileInfo(checkpoint).Length / 1e9:F2} GB), {threads} threads");
        Console.WriteLine($"uptime: {Uptime()}");
        Console.WriteLine($"{"stage",-28} {"wall s",8} {"cpu s",8} {"sys s",7} {"minflt",9} {"majflt",7} {"jit s",6} {"rss GB",7} {"hwm GB",7}");

        if (args.Contains("--sine-only"))
        {
            // the tables' cost without the model: the dense construction (before) and the module's (now), twice each
            for (int i = 0; i < 2; i++)
            {
                Stage("sine tables, dense (before)", () => BuildSineTables(Sam3Config.Full, dense: true));
                Stage("sine tables, separable", () => BuildSineTables(Sam3Config.Full, dense: false));
            }
            return 0;
        }
        var image = Stage("decode image", () => ImageLoader.Load(imagePath));
        var model = Stage("load", () => Sam3Model.Load(checkpoint, new Sam3ModelOptions { Config = Sam3Config.Full, TokenizerPath = tokenizer }));
        using (model)
        {
            if (args.Contains("--sine"))
            {
                Stage("sine tables, dense (before)", () => BuildSineTables(model.Config, dense: true));
                Stage("sine tables, separable", () => BuildSineTables(model.Config, dense: false));
            }
            if (args.Contains("--touch")) Stage("touch weights", () => TouchWeights(model));
            bool imageOnly = args.Contains("--image-only");
            using (var first = model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = threshold }))
            {
                using var state = Stage("SetImage #1", () => first.SetImage(image));
                if (!imageOnly)
                {
                    var d = Stage("SetTextPrompt #1", () => first.SetTextPrompt(state, text));
                    Console.WriteLine($"  detections #1: {d.Sum(x => x.Count)}");
                }
            }
            using (var second = model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = threshold }))
            {
                using var state = Stage("SetImage #2", () => second.SetImage(image));
                if (!imageOnly)
                {
                    var d = Stage("SetTextPrompt #2", () => second.SetTextPrompt(state, text));
                    Console.WriteLine($"  detections #2: {d.Sum(x => x.Count)}");
                }
            }
        }
        Console.WriteLine($"uptime: {Uptime()}");
        return 0;
    }

    private static T Stage<T>(string name, Func<T> action)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var (min0, maj0) = Faults();
        var p0 = Process.GetCurrentProcess();
        var cpu0 = p0.TotalProcessorTime;
        var sys0 = p0.PrivilegedProcessorTime;
        var jit0 = System.Runtime.JitInfo.GetCompilationTime();
        var sw = Stopwatch.StartNew();
        T result;
        using (var scope = NewDisposeScope())
        {
            result = action();
            if (result is Tensor t) t.DetachFromDisposeScope();
        }
        sw.Stop();
        var p1 = Process.GetCurrentProcess();
        var cpu = p1.TotalProcessorTime - cpu0;
        var sys = p1.PrivilegedProcessorTime - sys0;
        var jit = System.Runtime.JitInfo.GetCompilationTime() - jit0;
        var (min1, maj1) = Faults();
        var st = MemoryStages.Status();
        Console.WriteLine($"{name,-28} {sw.Elapsed.TotalSeconds,8:F2} {cpu.TotalSeconds,8:F2} {sys.TotalSeconds,7:F2} {min1 - min0,9} {maj1 - maj0,7} {jit.TotalSeconds,6:F2} " +
                          $"{st["VmRSS"] / 1e9,7:F3} {st["VmHWM"] / 1e9,7:F3}");
        return result;
    }

    private static int Stage(string name, Action action) => Stage(name, () => { action(); return 0; });

    /// <summary>Minor and major page faults of this process so far (fields 10 and 12 of /proc/self/stat).</summary>
    internal static (long Minor, long Major) Faults()
    {
        string stat = File.ReadAllText("/proc/self/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' '); // fields from 3 (state) on
        return (long.Parse(fields[10 - 3], CultureInfo.InvariantCulture), long.Parse(fields[12 - 3], CultureInfo.InvariantCulture));
    }

    private static string Uptime()
    {
        try { return File.ReadAllText("/proc/loadavg").Trim(); }
        catch (IOException) { return "?"; }
    }

    /// <summary>
    /// The vision neck's sine tables for the configured input size, on a fresh encoder (empty cache), either as the
    /// module builds them now or with the dense construction it used before (upstream's, written out here).
    /// </summary>
    private static void BuildSineTables(Sam3Config cfg, bool dense)
    {
        using var sine = new PositionEmbeddingSine(cfg.PositionEncoding);
        int grid = cfg.Vit.TokensPerSide;
        foreach (double scale in cfg.Neck.ScaleFactors)
        {
            long side = (long)(grid * scale);
            using var scope = NewDisposeScope();
            if (dense) DenseSine(sine, side, side);
            else sine.forward(torch.empty(1, 1, side, side));
        }
    }

    private static Tensor DenseSine(PositionEmbeddingSine pe, long h, long w)
    {
        var yEmbed = torch.arange(1, h + 1, dtype: ScalarType.Float32).view(-1, 1).expand(h, w);
        var xEmbed = torch.arange(1, w + 1, dtype: ScalarType.Float32).view(1, -1).expand(h, w);
        yEmbed = yEmbed / ((float)h + PositionEmbeddingSine.NormalizeEps) * pe.scale;
        xEmbed = xEmbed / ((float)w + PositionEmbeddingSine.NormalizeEps) * pe.scale;
        var dimT = torch.pow(pe.temperature, 2 * torch.floor_divide(torch.arange(pe.num_pos_feats, dtype: ScalarType.Float32), 2) / pe.num_pos_feats);
        Tensor Interleave(Tensor pos) => torch.stack([pos[TensorIndex.Ellipsis, TensorIndex.Slice(0, null, 2)].sin(),
            pos[TensorIndex.Ellipsis, TensorIndex.Slice(1, null, 2)].cos()], dim: -1).flatten(-2);
        var px = Interleave(xEmbed[.., .., TensorIndex.None] / dimT);
        var py = Interleave(yEmbed[.., .., TensorIndex.None] / dimT);
        return torch.cat([py, px], 2).permute(2, 0, 1).contiguous();
    }

    /// <summary>Reads one float per 4 KiB page of every parameter and buffer (faults the weights in).</summary>
    private static double TouchWeights(Sam3Model model)
    {
        double sum = 0;
        foreach (var t in model.Network.parameters().Cast<Tensor>().Concat(model.Network.buffers()))
        {
            if (t.device_type != DeviceType.CPU || t.numel() == 0) continue;
            IntPtr p = TensorMemory.DataPointer(t);
            long bytes = t.numel() * t.element_size();
            for (long o = 0; o < bytes; o += 4096) sum += Marshal.ReadByte(p + (nint)o);
            sum += Marshal.ReadByte(p + (nint)(bytes - 1));
        }
        return sum;
    }
}
