using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks.Reference;

/// <summary>
/// The port's side of the side-by-side harness (benchmarks/reference/run.sh), outside BenchmarkDotNet:
/// <list type="bullet">
/// <item><c>reference ours --checkpoint PT --tokenizer BPE --image JPG --prompt TEXT --threads N --out PREFIX</c>: one
///   configuration in this (fresh) process. Pass 1 = the API (<c>SetImage</c> + <c>SetTextPrompt</c>, first call: warm-up
///   included), its detections dumped as <c>PREFIX.scores.npy</c>, <c>.boxes.npy</c>, <c>.masks.npy</c> (np.packbits of
///   the bool masks [K,H,W]); pass 2 = the same work stage by stage through the model's internals (timed per stage).
///   Timings (wall and process CPU), VmRSS/VmHWM go to <c>PREFIX.json</c>.</item>
/// <item><c>reference gemm --threads N --out JSON [--seconds S]</c>: LibTorch fp32 GEMM GFLOP/s at the ViT's shapes.</item>
/// <item><c>reference flops --out JSON [--prompt-tokens P]</c>: FLOPs per stage from <see cref="Sam3Config.Full"/>.</item>
/// </list>
/// </summary>
internal static partial class ReferenceMode
{
    public const string Verb = "reference";

    public static int Run(string[] args)
    {
        if (args.Length < 2) return Usage();
        // the library's allocator setting for the GEMM rate as well as our side (Sam3Model requests it too)
        Sam3.Torch.IO.HugePageAllocation.Request();
        var opts = ParseOptions(args.Skip(2).ToArray());
        try
        {
            return args[1] switch
            {
                "ours" => Ours(opts),
                "gemm" => Gemm(opts),
                "flops" => Flops(opts),
                PostProcessProfile.Mode => PostProcessProfile.Run(opts),
                _ => Usage(),
            };
        }
        catch (KeyNotFoundException e)
        {
            Console.Error.WriteLine($"reference: {e.Message}");
            return Usage();
        }
    }

    private static int Usage()
    {
        Console.Error.WriteLine("""
            usage: Sam3.Torch.Benchmarks reference ours  --checkpoint PT --tokenizer BPE --image JPG --prompt TEXT --threads N --out PREFIX [--threshold 0.5] [--api-only true] [--linearity 1,5,20,50,200] [--config CONFIG_JSON]
                   Sam3.Torch.Benchmarks reference gemm  --threads N --out JSON [--seconds 2]
                   Sam3.Torch.Benchmarks reference flops --out JSON [--prompt-tokens 33]
                   Sam3.Torch.Benchmarks reference post  [--k 1,5,20,50,200] [--height 1200] [--width 1800] [--low 288] [--threads 2] [--chunk-elements N] [--out JSON]
            """);
        return 2;
    }

    private static Dictionary<string, string> ParseOptions(string[] a)
    {
        var d = new Dictionary<string, string>();
        for (int i = 0; i < a.Length; i++)
        {
            if (!a[i].StartsWith("--", StringComparison.Ordinal) || i + 1 >= a.Length)
                throw new ArgumentException($"reference: expected '--name value', got '{a[i]}'");
            d[a[i][2..]] = a[++i];
        }
        return d;
    }

    private static string Need(Dictionary<string, string> o, string name)
        => o.TryGetValue(name, out var v) ? v : throw new KeyNotFoundException($"missing --{name}");

    private static int Threads(Dictionary<string, string> o)
    {
        int n = o.TryGetValue("threads", out var t) ? int.Parse(t, CultureInfo.InvariantCulture) : Environment.ProcessorCount;
        torch.set_num_threads(n);
        return n;
    }

    // ------------------------------------------------------------------ process memory and time

    /// <summary>VmRSS and VmHWM of this process in bytes (Linux /proc/self/status).</summary>
    internal static (long Rss, long Hwm) Memory()
    {
        long rss = 0, hwm = 0;
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) rss = Kb(line);
            else if (line.StartsWith("VmHWM:", StringComparison.Ordinal)) hwm = Kb(line);
        }
        return (rss, hwm);
        static long Kb(string line) => long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
    }

    private static TimeSpan Cpu()
    {
        using var p = Process.GetCurrentProcess();
        return p.TotalProcessorTime;
    }

    /// <summary>Wall and CPU seconds of named stages, in order.</summary>
    private sealed class StageClock
    {
        public readonly List<(string Name, double Wall, double Cpu)> Stages = [];
        public T Time<T>(string name, Func<T> f)
        {
            var cpu0 = Cpu();
            var sw = Stopwatch.StartNew();
            var r = f();
            sw.Stop();
            Stages.Add((name, sw.Elapsed.TotalSeconds, (Cpu() - cpu0).TotalSeconds));
            return r;
        }
        public JsonObject ToJson()
        {
            var o = new JsonObject();
            foreach (var (n, w, c) in Stages) o[n] = new JsonObject { ["wall_s"] = w, ["cpu_s"] = c };
            return o;
        }
    }

    // ------------------------------------------------------------------ ours

    private static int Ours(Dictionary<string, string> o)
    {
        int threads = Threads(o);
        string checkpoint = Need(o, "checkpoint"), bpe = Need(o, "tokenizer"), imagePath = Need(o, "image"), prompt = Need(o, "prompt");
        string prefix = Need(o, "out");
        double threshold = o.TryGetValue("threshold", out var th) ? double.Parse(th, CultureInfo.InvariantCulture) : 0.5;
        var report = new JsonObject
        {
            ["side"] = "ours", ["threads"] = threads, ["image"] = Path.GetFileName(imagePath), ["prompt"] = prompt,
            ["threshold"] = threshold, ["torch"] = "LibTorch via TorchSharp " + typeof(torch).Assembly.GetName().Version,
        };
        var (rss0, _) = Memory();
        report["rss_start_bytes"] = rss0;

        var load = new StageClock();
        // --config CONFIG_JSON: another architecture than the released one (a quick run on the tiny checkpoint)
        var config = o.TryGetValue("config", out var cfgPath) ? Sam3Config.Load(cfgPath) : Sam3Config.Full;
        using var model = load.Time("load", () => Sam3Model.Load(checkpoint, new Sam3ModelOptions { Config = config, TokenizerPath = bpe }));
        var (rssLoaded, _) = Memory();
        report["load"] = load.ToJson();
        report["rss_after_load_bytes"] = rssLoaded;
        report["parameters"] = model.ParameterCount;
        using var predictor = model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = threshold });
        var image = ImageLoader.Load(imagePath);
        report["image_size"] = $"{image.Width}x{image.Height}";

        // Pass 1: the public pipeline, as a user calls it (first call of the process: warm-up included).
        var api = new StageClock();
        int apiMasks;
        using (var inference = torch.inference_mode())
        {
            using var state = api.Time("set_image", () => predictor.SetImage(image));
            // the public call itself (its C-heap trim and the masks written into the results included), so that the
            // peak below is the user's; the dumps are made from its results
            var publicResults = api.Time("set_text_prompt", () => predictor.SetTextPrompt(state, prompt));
            var (_, hwmApi) = Memory();
            report["api"] = api.ToJson();
            report["vmhwm_api_bytes"] = hwmApi;
            report["detections"] = publicResults[0].Count;
            Dump(prefix, publicResults[0]);
            DumpAllQueries(prefix, state.RawOutput!);
            apiMasks = MasksFingerprint(publicResults[0]);
        }
        GC.Collect();
        report["rss_between_passes_bytes"] = Memory().Rss;

        // Pass 2: the same work stage by stage (what the API calls inside, through the model's internals).
        var staged = new StageClock();
        float[] stagedScores = [];
        bool apiOnly = o.TryGetValue("api-only", out var ao) && ao == "true";
        if (!apiOnly)
        {
            using var inference = torch.inference_mode();
            using var scope = NewDisposeScope();
            stagedScores = Staged(model, predictor, image, prompt, threshold, staged, out int stagedMasks);
            // the staged pass runs the public pass's work: its masks are the dumped ones, byte for byte
            report["staged_masks_equal_api"] = stagedMasks == apiMasks;
            if (stagedMasks != apiMasks) Console.Error.WriteLine("reference: the staged pass's masks differ from the public pass's");
        }
        report["stages"] = staged.ToJson();
        var (_, hwm) = Memory();
        report["vmhwm_bytes"] = hwm;
        report["staged_detections"] = stagedScores.Length;
        // FLOPs of the text row for the prompt's real tokens (what the staged pass and the predictor run)
        int textTokens = TextTokens(model, prompt);
        report["text_tokens"] = textTokens;
        report["stage_flops"] = new JsonObject { ["text"] = StageFlops.Text(model.Config.Text, textTokens) };
        if (o.TryGetValue("linearity", out var ks))
            report["linearity"] = Linearity(model, predictor, image, prompt, ks.Split(',').Select(v => int.Parse(v, CultureInfo.InvariantCulture)).ToArray());
        File.WriteAllText(prefix + ".json", report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        Console.WriteLine($"ours {Path.GetFileName(imagePath)} '{prompt}': set_image {Wall(api, "set_image"):F1} s, set_text_prompt {Wall(api, "set_text_prompt"):F1} s, " +
                          $"{report["detections"]} detections, VmHWM {hwm / 1e9:F2} GB");
        return 0;
    }

    private static double Wall(StageClock c, string name) => c.Stages.First(s => s.Name == name).Wall;

    /// <summary>
    /// Sam3ImagePredictor.SetImage + SetTextPrompt split into the stages of the table, each finishing its work before
    /// the clock stops (eager LibTorch on CPU: every op is done when it returns). Returns the kept scores and
    /// <paramref name="masksFingerprint"/> of the kept masks (<see cref="MasksFingerprint"/>).
    /// </summary>
    private static float[] Staged(Sam3Model owner, Sam3ImagePredictor predictor, RgbImage image, string prompt, double threshold, StageClock clock,
        out int masksFingerprint)
    {
        var net = owner.Network;
        var device = owner.TorchDevice;
        var input = clock.Time("preprocess", () => predictor.Preprocessor.Preprocess([image], device));
        var trunk = clock.Time("vit", () => net.backbone.vision_backbone.trunk.forward(input));
        var backbone = clock.Time("necks", () =>
        {
            var neck = net.backbone.vision_backbone.ForwardNecks(trunk);
            int keep = neck.Sam3Out.Length - net.backbone.scalp;
            var sam2 = neck.Sam2Out is null ? null : new BackboneOutput(neck.Sam2Out.Take(keep).ToArray(), neck.Sam2Pos!.Take(keep).ToArray());
            if (sam2 is not null && net.Tracker is { } tracker)
            {
                sam2.BackboneFpn[0] = tracker.sam_mask_decoder.conv_s0!.forward(sam2.BackboneFpn[0]);
                sam2.BackboneFpn[1] = tracker.sam_mask_decoder.conv_s1!.forward(sam2.BackboneFpn[1]);
            }
            return new BackboneOutput(neck.Sam3Out.Take(keep).ToArray(), neck.Sam3Pos.Take(keep).ToArray(), sam2);
        });
        trunk.Dispose();
        // the image predictor's text path (the prompt's real tokens), fusion encoder, decoder + scoring, segmentation head
        using var output = Heads(owner, backbone, prompt, clock);
        // the public calls' post-processing on these outputs: threshold, boxes, masks upsampled and thresholded straight
        // into the public results (the predictor's internal call, C-heap trim included)
        using var state = new Sam3ImageState(owner, backbone, [(image.Height, image.Width)]); // owns the backbone now
        var results = clock.Time("postprocess", () => predictor.PostProcessToPublic(state, output, threshold))[0];
        masksFingerprint = MasksFingerprint(results);
        return results.Select(d => d.Score).ToArray();
    }

    /// <summary>A fingerprint of the detections' masks (their bytes, in order), to check that two passes agree.</summary>
    private static int MasksFingerprint(ImageDetections detections)
    {
        var hash = new HashCode();
        hash.Add(detections.Count);
        foreach (var d in detections) hash.AddBytes(d.Mask.Data);
        return hash.ToHashCode();
    }

    /// <summary>
    /// The public results as .npy files: scores f4 [K], boxes f4 [K,4] xyxy pixels, masks = np.packbits(bool [K,H,W]) u1
    /// (big-endian bit order, zero-padded to whole bytes).
    /// </summary>
    private static void Dump(string prefix, ImageDetections r)
    {
        int k = r.Count, h = r.Height, w = r.Width;
        Npy.Write(prefix + ".scores.npy", r.Select(d => d.Score).ToArray(), [k]);
        Npy.Write(prefix + ".boxes.npy", r.SelectMany(d => new[] { d.Box.A, d.Box.B, d.Box.C, d.Box.D }).ToArray(), [k, 4]);
        long n = (long)k * h * w;
        var packed = new byte[(n + 7) / 8];
        long bit = 0;
        foreach (var d in r)
            foreach (byte v in d.Mask.Data)
            {
                if (v != 0) packed[bit >> 3] |= (byte)(0x80 >> (int)(bit & 7));
                bit++;
            }
        Npy.Write(prefix + ".masks.npy", packed, [packed.Length]);
        File.WriteAllText(prefix + ".masks.shape", $"{k} {h} {w}");
    }

    /// <summary>Detections as .npy files: scores f4 [K], boxes f4 [K,4] xyxy pixels, masks = np.packbits(bool [K,H,W]) u1.</summary>
    private static void Dump(string prefix, DetectionTensors r)
    {
        using var scope = NewDisposeScope();
        Npy.Write(prefix + ".scores.npy", r.Count == 0 ? [] : r.Scores.contiguous().data<float>().ToArray(), [r.Count]);
        Npy.Write(prefix + ".boxes.npy", r.Count == 0 ? [] : r.Boxes.contiguous().data<float>().ToArray(), [r.Count, 4]);
        // packbits (big-endian bit order) in LibTorch: pad to a multiple of 8, weight each bit, sum.
        long n = (long)r.Count * r.Height * r.Width;
        var flat = r.Masks.reshape(-1).to(ScalarType.Byte);
        long padded = (n + 7) / 8 * 8;
        if (padded != n) flat = torch.cat([flat, torch.zeros(padded - n, dtype: ScalarType.Byte)]);
        var weights = torch.tensor(new byte[] { 128, 64, 32, 16, 8, 4, 2, 1 });
        var packed = n == 0 ? [] : (flat.view(-1, 8) * weights).sum(1, type: ScalarType.Int32).to(ScalarType.Byte).contiguous().data<byte>().ToArray();
        Npy.Write(prefix + ".masks.npy", packed, [packed.Length]);
        File.WriteAllText(prefix + ".masks.shape", $"{r.Count} {r.Height} {r.Width}");
    }

    /// <summary>
    /// Every query before the threshold (so that agreement is checked even when nothing passes it): score
    /// σ(logit)·σ(presence) f4 [Q] and normalised cxcywh boxes f4 [Q,4].
    /// </summary>
    private static void DumpAllQueries(string prefix, GroundingOutput raw)
    {
        using var scope = NewDisposeScope();
        var probs = (raw.PredLogits![0].sigmoid() * raw.PresenceLogitDec![0].sigmoid().unsqueeze(0)).squeeze(-1).to(ScalarType.Float32).contiguous();
        var boxes = raw.PredBoxes![0].to(ScalarType.Float32).contiguous();
        Npy.Write(prefix + ".all_scores.npy", probs.data<float>().ToArray(), [probs.shape[0]]);
        Npy.Write(prefix + ".all_boxes.npy", boxes.data<float>().ToArray(), [boxes.shape[0], 4]);
    }

    // ------------------------------------------------------------------ GEMM rate

    private static int Gemm(Dictionary<string, string> o)
    {
        int threads = Threads(o);
        string outPath = Need(o, "out");
        double seconds = o.TryGetValue("seconds", out var s) ? double.Parse(s, CultureInfo.InvariantCulture) : 2.0;
        var v = Sam3Config.Full.Vit;
        int grid = StageFlops.VitGrid(v), tokens = grid * grid, d = v.EmbedDim, hidden = StageFlops.VitMlpHidden(v);
        int w = v.WindowSize, windows = (grid + w - 1) / w * ((grid + w - 1) / w), heads = v.NumHeads, hd = d / heads;
        // (name, batch, m, k, n): batch = 1 for the linear layers (x[m,k]·Wᵀ, W stored [n,k] as nn.Linear does)
        var shapes = new (string Name, int Batch, int M, int K, int N, bool Linear)[]
        {
            ($"qkv [{tokens},{d}]x[{d},{3 * d}]", 1, tokens, d, 3 * d, true),
            ($"proj [{tokens},{d}]x[{d},{d}]", 1, tokens, d, d, true),
            ($"mlp.fc1 [{tokens},{d}]x[{d},{hidden}]", 1, tokens, d, hidden, true),
            ($"mlp.fc2 [{tokens},{hidden}]x[{hidden},{d}]", 1, tokens, hidden, d, true),
            ($"window attn QK^T {windows * heads}x[{w * w},{hd}]x[{hd},{w * w}]", windows * heads, w * w, hd, w * w, false),
            ($"global attn QK^T {heads}x[{tokens},{hd}]x[{hd},{tokens}]", heads, tokens, hd, tokens, false),
        };
        var rows = new JsonArray();
        double linFlops = 0, linTime = 0;
        using var inference = torch.inference_mode();
        foreach (var (name, batch, m, k, n, linear) in shapes)
        {
            using var scope = NewDisposeScope();
            Tensor run;
            Func<Tensor> op;
            if (linear)
            {
                var x = torch.randn(m, k);
                var wt = torch.randn(n, k);
                var bias = torch.randn(n);
                op = () => nn.functional.linear(x, wt, bias);
            }
            else
            {
                var a = torch.randn(batch, m, k);
                var b = torch.randn(batch, k, n);
                op = () => torch.bmm(a, b);
            }
            op().Dispose(); // warm-up
            int reps = 0;
            var sw = Stopwatch.StartNew();
            var cpu0 = Cpu();
            while (sw.Elapsed.TotalSeconds < seconds || reps < 2)
            {
                run = op();
                run.Dispose();
                reps++;
            }
            double t = sw.Elapsed.TotalSeconds / reps, cpu = (Cpu() - cpu0).TotalSeconds / reps;
            double flops = StageFlops.Gemm(m, k, n) * batch;
            if (linear) { linFlops += flops; linTime += t; }
            Console.WriteLine($"gemm {name}: {t * 1e3:F1} ms, {flops / t / 1e9:F1} GFLOP/s ({reps} reps)");
            rows.Add(new JsonObject { ["shape"] = name, ["linear"] = linear, ["seconds"] = t, ["cpu_s"] = cpu, ["flops"] = flops, ["gflops"] = flops / t / 1e9, ["reps"] = reps });
        }
        var report = new JsonObject { ["threads"] = threads, ["shapes"] = rows, ["vit_linear_gflops"] = linFlops / linTime / 1e9 };
        Console.WriteLine($"gemm: ViT linear mix (qkv+proj+fc1+fc2) {linFlops / linTime / 1e9:F1} GFLOP/s on {threads} threads");
        File.WriteAllText(outPath, report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return 0;
    }

    // ------------------------------------------------------------------ FLOPs

    private static int Flops(Dictionary<string, string> o)
    {
        string outPath = Need(o, "out");
        var cfg = Sam3Config.Full;
        // Prompt tokens of set_text_prompt: the whole text context plus the geometry encoder's CLS token (empty prompt).
        double p = o.TryGetValue("prompt-tokens", out var pt) ? double.Parse(pt, CultureInfo.InvariantCulture) : cfg.Text.ContextLength + 1;
        var (lin, attn, patch) = StageFlops.Vit(cfg.Vit);
        var report = new JsonObject
        {
            ["vit"] = lin + attn + patch, ["vit_linear"] = lin, ["vit_attention"] = attn, ["vit_patch_embed"] = patch,
            ["necks"] = StageFlops.Necks(cfg),
            ["text"] = StageFlops.Text(cfg.Text),
            ["fusion_encoder"] = StageFlops.FusionEncoder(cfg, p),
            ["decoder_scoring"] = StageFlops.DecoderAndScoring(cfg, p),
            ["segmentation_head"] = StageFlops.SegmentationHead(cfg, p),
            ["prompt_tokens"] = p,
        };
        Console.WriteLine($"flops: ViT {(lin + attn + patch) / 1e12:F2} TFLOP (linear {lin / 1e12:F2}, attention {attn / 1e12:F2}, patch embed {patch / 1e9:F1} GFLOP)");
        File.WriteAllText(outPath, report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return 0;
    }
}

/// <summary>Minimal NumPy .npy (version 1.0) writer for 1-D data with a given shape.</summary>
internal static class Npy
{
    public static void Write(string path, float[] data, long[] shape) => Write(path, "<f4", shape, System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()).ToArray());
    public static void Write(string path, byte[] data, long[] shape) => Write(path, "|u1", shape, data);

    private static void Write(string path, string descr, long[] shape, byte[] bytes)
    {
        string dims = shape.Length == 1 ? $"({shape[0]},)" : "(" + string.Join(", ", shape) + ")";
        string header = $"{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}";
        int total = 10 + header.Length + 1;
        header += new string(' ', (64 - total % 64) % 64) + "\n";
        using var f = File.Create(path);
        f.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0]);
        f.Write(BitConverter.GetBytes((ushort)header.Length));
        f.Write(System.Text.Encoding.ASCII.GetBytes(header));
        f.Write(bytes);
    }
}
