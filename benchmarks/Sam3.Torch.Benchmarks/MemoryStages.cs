using System.Diagnostics;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Loading;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// Peak resident memory per stage of one image + text prompt (issue 15 item 3), outside BenchmarkDotNet:
/// <c>dotnet Sam3.Torch.Benchmarks.dll memory --checkpoint sam3.pt --image truck.jpg --text truck [--config full|tiny]
/// [--copy] [--breakdown] [--trim] [--stop-after-load] [--threshold T] [--split] [--top K] [--no-second]</c>. Before each stage the kernel's peak counter is reset (<c>/proc/self/clear_refs</c> ← 5),
/// after it <c>VmHWM</c> is that stage's peak and <c>VmRSS</c>/<c>RssAnon</c>/<c>RssFile</c> what it left resident.
/// <c>--copy</c> loads the way it was done before the memory work (model built with its random initialisation, checkpoint
/// tensors copied into it), for a side-by-side comparison. <c>--breakdown</c> re-runs the image encoder in pieces (ViT
/// trunk, then both necks) to attribute the set_image peak. <c>--trim</c> calls <c>malloc_trim(0)</c> after every stage
/// and prints its time and what is resident then (what the C heap kept free). <c>--threshold</c> sets the detector's score threshold
/// (0.15 keeps all 200 queries of the random checkpoint); <c>--split</c> runs the prompt once more in two parts
/// (heads + post-processing into tensors, then the caller-owned results); <c>--top K</c> repeats it with a threshold
/// keeping the K best detections (the peak with few masks). Linux only.
/// </summary>
internal static class MemoryStages
{
    public static int Run(string[] args)
    {
        string Arg(string name, string? fallback = null)
        {
            int i = Array.IndexOf(args, "--" + name);
            if (i >= 0 && i + 1 < args.Length) return args[i + 1];
            return fallback ?? throw new ArgumentException($"memory: --{name} is required");
        }
        bool copy = args.Contains("--copy");
        bool breakdown = args.Contains("--breakdown");
        _trim = args.Contains("--trim");
        string checkpointPath = Arg("checkpoint");
        string imagePath = Arg("image");
        string text = Arg("text", "truck");
        var cfg = Arg("config", "full") == "tiny" ? Sam3Config.Tiny : Sam3Config.Full;
        string vocab = Arg("vocab", Path.Combine(BenchEnvironment.RepoRoot(), "..", "shared", "parity", "inputs", "bpe_simple_vocab_16e6.txt.gz"));
        int threads = BenchEnvironment.PinThreads();
        Console.WriteLine($"memory stages: {checkpointPath} ({new FileInfo(checkpointPath).Length / 1e9:F2} GB), config {cfg.Name}, " +
                          $"{(copy ? "copy (random init + copy_)" : "adopt (meta + memory-mapped parameters)")}, {threads} threads");
        Console.WriteLine($"{"stage",-34} {"seconds",8} {"peak GB",8} {"rss GB",8} {"anon GB",8} {"file GB",8}");
        Stage("start", () => { });

        var tokenizer = ClipBpeTokenizer.FromBpeGz(vocab);
        ICheckpoint checkpoint = null!;
        Sam3ImageModel model = null!;
        Stage("open checkpoint", () => checkpoint = CheckpointFile.Open(checkpointPath));
        if (copy)
        {
            Stage("build (random init)", () => model = new Sam3ImageModel(cfg));
            Stage("load (copy_)", () => Sam3ModelLoader.LoadInto(model, checkpoint, new Sam3LoadOptions()));
        }
        else
        {
            Stage("build (meta)", () => model = ParameterAdoption.BuildOnMeta(() => new Sam3ImageModel(cfg)));
            Stage("load (adopt)", () => Sam3ModelLoader.LoadInto(model, checkpoint, new Sam3LoadOptions()));
        }
        Stage("dispose checkpoint", () => checkpoint.Dispose());
        model.eval();
        long weightBytes = model.parameters().Sum(p => p.numel() * p.element_size()) + model.buffers().Sum(b => b.numel() * b.element_size());
        Console.WriteLine($"  weights: {weightBytes / 1e9:F3} GB");
        if (args.Contains("--stop-after-load")) { model.Dispose(); return 0; }

        using var sam3 = Sam3Model.FromNetwork(model, tokenizer);
        double threshold = double.Parse(Arg("threshold", "0.5"), System.Globalization.CultureInfo.InvariantCulture);
        using var predictor = sam3.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = threshold });
        Sam3ImageState state = null!;
        Stage("set_image", () => state = predictor.SetImage(imagePath));
        IReadOnlyList<ImageDetections> detections = null!;
        Stage("set_text_prompt (+ post-processing)", () => detections = predictor.SetTextPrompt(state, text));
        Console.WriteLine($"  detections: {detections.Sum(d => d.Count)} (threshold {threshold})");
        if (args.Contains("--split"))
        {
            // the same prompt in two parts: heads + post-processing into tensors, then the caller-owned results
            detections = null!;
            IReadOnlyList<DetectionTensors> tensors = null!;
            Stage("  prompt: heads + post-proc tensors", () => tensors = predictor.SetTextPromptCore(state, text));
            Stage("  prompt: public results", () =>
            {
                detections = tensors.Select(t => t.ToDetections()).ToList();
                foreach (var t in tensors) t.Dispose();
            });
        }
        if (int.TryParse(Arg("top", "0"), out int top) && top > 0)
        {
            // the same prompt with a threshold that keeps the top K detections (midway between the K-th and K+1-th
            // score), after the previous results are released: the peak with few full-resolution masks
            var scores = detections.SelectMany(d => d.Select(x => x.Score)).OrderByDescending(x => x).ToArray();
            if (scores.Length > top)
            {
                double t = (scores[top - 1] + scores[top]) / 2;
                detections = null!;
                GC.Collect();
                NativeHeap.Trim();
                using var few = sam3.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = t });
                Stage($"set_text_prompt, top {top} kept", () => detections = few.SetTextPrompt(state, text));
                Console.WriteLine($"  detections: {detections.Sum(d => d.Count)} (threshold {t:G6})");
            }
        }
        if (!args.Contains("--no-second"))
            Stage("second set_text_prompt", () => detections = predictor.SetTextPrompt(state, text));
        Stage("dispose state", () => state.Dispose());

        if (breakdown)
        {
            int s = cfg.ImageSize;
            using var input = torch.rand(1, 3, s, s) * 2 - 1;
            Tensor trunk = null!;
            Stage("breakdown: ViT trunk", () =>
            {
                using var _ = torch.inference_mode();
                trunk = model.backbone.vision_backbone.trunk.forward(input).DetachFromDisposeScope();
            });
            Stage("breakdown: necks (sam3 + sam2)", () =>
            {
                using var _ = torch.inference_mode();
                using var neck = model.backbone.vision_backbone.ForwardNecks(trunk);
            });
            trunk.Dispose();
        }
        return 0;
    }

    private static bool _trim;

    private static void Stage(string name, Action action)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        File.WriteAllText("/proc/self/clear_refs", "5");
        var sw = Stopwatch.StartNew();
        using (NewDisposeScope()) action();
        sw.Stop();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var st = Status();
        Console.WriteLine($"{name,-34} {sw.Elapsed.TotalSeconds,8:F1} {st["VmHWM"] / 1e9,8:F3} {st["VmRSS"] / 1e9,8:F3} {st["RssAnon"] / 1e9,8:F3} {st["RssFile"] / 1e9,8:F3}");
        if (_trim)
        {
            var trim = Stopwatch.StartNew();
            bool trimmed = NativeHeap.Trim();
            trim.Stop();
            st = Status();
            if (trimmed)
                Console.WriteLine($"{"  after malloc_trim",-34} {trim.Elapsed.TotalSeconds,8:F3} {"",8} {st["VmRSS"] / 1e9,8:F3} {st["RssAnon"] / 1e9,8:F3} {st["RssFile"] / 1e9,8:F3}");
        }
    }

    /// <summary>kB fields of /proc/self/status, in bytes.</summary>
    /// <summary>The byte figures of /proc/self/status (VmHWM, VmRSS, RssAnon, RssFile, …), by field name.</summary>
    internal static Dictionary<string, long> Status()
    {
        var d = new Dictionary<string, long>();
        foreach (var line in File.ReadAllLines("/proc/self/status"))
        {
            int colon = line.IndexOf(':');
            if (colon < 0 || !line.EndsWith(" kB")) continue;
            if (long.TryParse(line[(colon + 1)..^3].Trim(), out long kb)) d[line[..colon]] = kb * 1000;
        }
        return d;
    }
}
