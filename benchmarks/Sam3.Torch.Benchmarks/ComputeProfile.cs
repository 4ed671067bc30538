using System.Diagnostics;
using Sam3.Torch.Config;
using Sam3.Torch.Loading;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Modeling.Vision;
using Sam3.Torch.Processing;
using Sam3.Torch.Text;
using Sam3.Torch.Visualization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// Console profile of the fp32 CPU image path (issue 15 item 2), outside BenchmarkDotNet:
/// <c>dotnet run -c Release --project benchmarks/Sam3.Torch.Benchmarks -- profile [gemm] [blocks] [post] [model]</c>
/// (no section = all). Times with Stopwatch and process CPU time (user + system):
/// <list type="bullet">
/// <item>gemm: <c>x[5184,1024]·W[1024,4736]</c> with torch.matmul, the reference GEMM rate;</item>
/// <item>blocks: one windowed and one global ViT block of <see cref="Sam3Config.Full"/>, op by op (the module's own
///   sub-modules called in the order of <see cref="Block.forward"/>), next to the module's forward;</item>
/// <item>post: processor post-processing of K detections (SAM3_PROFILE_DETECTIONS, default 200) at 1800×1200 from
///   random 288×288 logits: the previous all-at-once float path next to <see cref="MaskUpsampler"/>, and the conversion
///   to public detections;</item>
/// <item>model: the full-size random model (or SAM3_PROFILE_CHECKPOINT): trunk block by block, the necks layer by
///   layer, text encoder, grounding heads stage by stage (timestamps of the parity probe points).</item>
/// </list>
/// Threads: SAM3_BENCH_THREADS (default 2 here). Everything runs under inference mode.
/// </summary>
internal static class ComputeProfile
{
    private static readonly Process Self = Process.GetCurrentProcess();

    internal static double CpuSeconds()
    {
        Self.Refresh();
        return Self.TotalProcessorTime.TotalSeconds;
    }

    internal static string Uptime() => File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Trim() : "n/a";

    /// <summary>Runs <paramref name="action"/> <paramref name="reps"/> times; returns the minimum wall and CPU seconds.</summary>
    internal static (double Wall, double Cpu) Time(int reps, Action action)
    {
        double bestWall = double.MaxValue, bestCpu = double.MaxValue;
        for (int r = 0; r < reps; r++)
        {
            double c0 = CpuSeconds();
            var sw = Stopwatch.StartNew();
            action();
            sw.Stop();
            bestWall = Math.Min(bestWall, sw.Elapsed.TotalSeconds);
            bestCpu = Math.Min(bestCpu, CpuSeconds() - c0);
        }
        return (bestWall, bestCpu);
    }

    private static long MinorFaults()
    {
        // /proc/self/stat field 10 (minflt); the command name (field 2) may hold spaces, so count after the last ')'
        var stat = File.ReadAllText("/proc/self/stat");
        var rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return long.Parse(rest[7]);
    }

    /// <summary>One run: wall, CPU (user + system), system CPU and minor page faults of the process.</summary>
    private static (double Wall, double Cpu, double Sys, long Faults) TimeDetailed(Action action)
    {
        Self.Refresh();
        double c0 = Self.TotalProcessorTime.TotalSeconds, s0 = Self.PrivilegedProcessorTime.TotalSeconds;
        long f0 = MinorFaults();
        var sw = Stopwatch.StartNew();
        action();
        sw.Stop();
        long f1 = MinorFaults();
        Self.Refresh();
        return (sw.Elapsed.TotalSeconds, Self.TotalProcessorTime.TotalSeconds - c0, Self.PrivilegedProcessorTime.TotalSeconds - s0, f1 - f0);
    }

    public static int Run(string[] args)
    {
        Sam3.Torch.IO.NativeLoaderFix.EnsurePatched();
        int threads = 2;
        if (int.TryParse(Environment.GetEnvironmentVariable(BenchEnvironment.ThreadsVariable), out int t) && t > 0) threads = t;
        torch.set_num_threads(threads);
        var sections = args.Length == 0 ? new HashSet<string> { "gemm", "blocks", "post", "model" } : args.ToHashSet();
        Console.WriteLine($"# compute profile  {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC  threads={threads}  loadavg before: {Uptime()}");
        using var mode = torch.inference_mode();
        double gemm = double.NaN;
        if (sections.Contains("gemm") || sections.Contains("blocks") || sections.Contains("model")) gemm = Gemm();
        if (sections.Contains("blocks")) Blocks(gemm);
        if (sections.Contains("post")) Post();
        if (sections.Contains("model")) Model(gemm);
        Console.WriteLine($"# loadavg after: {Uptime()}  peak RSS {PeakRssGiB():F2} GiB");
        return 0;
    }

    private static double PeakRssGiB()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmHWM:")) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0 / 1024.0;
        return double.NaN;
    }

    /// <summary>GFLOP/s of x[5184,1024]·W[1024,4736] (the ViT's fc1 shape) with torch.matmul.</summary>
    private static double Gemm()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(0);
        var x = torch.randn(5184, 1024);
        var w = torch.randn(1024, 4736);
        torch.matmul(x, w).Dispose();
        var (wall, cpu) = Time(3, () => torch.matmul(x, w).Dispose());
        double flop = 2.0 * 5184 * 1024 * 4736;
        double rate = flop / wall / 1e9;
        Console.WriteLine($"## GEMM x[5184,1024]·W[1024,4736]: {wall:F3} s wall, {cpu:F3} s CPU → {rate:F1} GFLOP/s (best of 3)");
        return rate;
    }

    /// <summary>Linear and attention FLOPs of one full-size block (L tokens, attention spans of <paramref name="span"/> tokens).</summary>
    private static (double Linear, double Attention) BlockFlops(VitConfig c, int span)
    {
        double l = (double)c.TokensPerSide * c.TokensPerSide, d = c.EmbedDim, m = c.MlpHiddenDim;
        double linear = 2 * l * (d * 3 * d + d * d + 2 * d * m);
        double attention = 4 * l * span * d;
        return (linear, attention);
    }

    private static void Blocks(double gemm)
    {
        var cfg = Sam3Config.Full;
        var c = cfg.Vit;
        int windowed = Enumerable.Range(0, c.Depth).First(i => !c.IsGlobalBlock(i));
        int global = Enumerable.Range(0, c.Depth).First(c.IsGlobalBlock);
        torch.manual_seed(0);
        int n = c.TokensPerSide;
        var x = torch.randn(1, n, n, c.EmbedDim);
        foreach (int index in new[] { windowed, global })
        {
            using var block = VitBlockBenchmarks.BuildBlock(cfg, index);
            bool isGlobal = block.window_size == 0;
            var ops = new Dictionary<string, (double Wall, double Cpu)>();
            void Op(string name, Action a)
            {
                var r = Time(1, a);
                ops[name] = ops.TryGetValue(name, out var o) ? (o.Wall + r.Wall, o.Cpu + r.Cpu) : r;
            }
            var attn = block.attn;
            Tensor cos, sin;
            using (var s = NewDisposeScope())
            {
                var angles = AxialRope.ComputeAngles(attn.head_dim, attn.input_size.H, attn.input_size.W, attn.rope_theta, attn.RopeScalePos, 0);
                (cos, sin) = AxialRope.InterleavedTables(angles);
                cos.DetachFromDisposeScope(); sin.DetachFromDisposeScope();
            }
            block.forward(x).Dispose(); // warm-up (RoPE tables, allocator)
            // A/B in turns: the previous forward (out-of-place residual adds and GELU) and the module's forward
            Tensor Previous(Tensor input)
            {
                using var sc = NewDisposeScope();
                var y = block.norm1.forward(input);
                if (!isGlobal)
                {
                    var (wins, padHw) = WindowOps.Partition(y, block.window_size);
                    y = WindowOps.Unpartition(attn.forward(wins), block.window_size, padHw, (n, n));
                }
                else y = attn.forward(y);
                var x1 = input + y;
                var hid = nn.functional.gelu(block.mlp.fc1.forward(block.norm2.forward(x1)));
                x1 = x1 + block.mlp.fc2.forward(hid);
                return x1.MoveToOuterDisposeScope();
            }
            using (var check = NewDisposeScope())
                Console.WriteLine($"# block {index}: module forward equals the previous forward bit for bit: {block.forward(x).eq(Previous(x)).all().item<bool>()}");
            (double Wall, double Cpu, double Sys, long Faults) prev = default, moduleTime = default;
            for (int r = 0; r < 2; r++)
            {
                var a = TimeDetailed(() => Previous(x).Dispose());
                var m = TimeDetailed(() => block.forward(x).Dispose());
                if (r == 0 || a.Wall < prev.Wall) prev = a;
                if (r == 0 || m.Wall < moduleTime.Wall) moduleTime = m;
            }
            Console.WriteLine($"# block {index}: previous forward {prev.Wall:F3} s wall / {prev.Cpu:F3} s CPU (sys {prev.Sys:F3}) / {prev.Faults} minor faults; " +
                              $"module forward {moduleTime.Wall:F3} s / {moduleTime.Cpu:F3} s CPU (sys {moduleTime.Sys:F3}) / {moduleTime.Faults} faults; " +
                              $"ratio new/previous {moduleTime.Wall / prev.Wall:F3} wall, {moduleTime.Cpu / prev.Cpu:F3} CPU");
            const int reps = 2;
            var opsTotal = Stopwatch.StartNew();
            for (int r = 0; r < reps; r++)
            {
                using var scope = NewDisposeScope();
                Tensor y = null!, win = null!, qkvOut = null!, qkvT = null!, qk = null!, o = null!, a2 = null!, h = null!, x1 = null!;
                (long, long) pad = default;
                Op("LayerNorm", () => y = block.norm1.forward(x));
                if (!isGlobal) Op("window partition (copy)", () => (win, pad) = WindowOps.Partition(y, block.window_size));
                else win = y;
                long b = win.shape[0], hh = win.shape[1], ww = win.shape[2], l = hh * ww;
                Op("qkv GEMM", () => qkvOut = attn.qkv.forward(win));
                Op("layout (views)", () => qkvT = qkvOut.reshape(b, l, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4));
                Op("RoPE", () => qk = AxialRope.Apply(qkvT.slice(0, 0, 2, 1), cos, sin));
                Op("SDPA", () => o = nn.functional.scaled_dot_product_attention(qk[0], qk[1], qkvT[2]));
                Op("layout (head merge copy)", () => o = o.permute(0, 2, 1, 3).reshape(b, hh, ww, -1));
                Op("proj GEMM", () => a2 = attn.proj.forward(o));
                if (!isGlobal) Op("window unpartition (copy)", () => a2 = WindowOps.Unpartition(a2, block.window_size, pad, (n, n)));
                Op("residual add", () => x1 = x + a2);
                Op("LayerNorm", () => y = block.norm2.forward(x1));
                Op("fc1 GEMM", () => h = block.mlp.fc1.forward(y));
                Op("GELU", () => h = nn.functional.gelu(h));
                Op("fc2 GEMM", () => h = block.mlp.fc2.forward(h));
                Op("residual add", () => x1 = x1 + h);
            }
            opsTotal.Stop();
            var (linF, attF) = BlockFlops(c, isGlobal ? n * n : c.WindowSize * c.WindowSize);
            Console.WriteLine($"## block {index} ({(isGlobal ? "global" : $"windowed {c.WindowSize}")}): module forward {moduleTime.Wall:F3} s wall, {moduleTime.Cpu:F3} s CPU (best of 2); " +
                              $"{(linF + attF) / 1e9:F1} GFLOP (linear {linF / 1e9:F1}, attention {attF / 1e9:F1}) → {(linF + attF) / moduleTime.Wall / 1e9:F1} GFLOP/s = {(linF + attF) / moduleTime.Wall / 1e9 / gemm * 100:F0} % of GEMM");
            double sum = ops.Values.Sum(v => v.Wall) / reps;
            Console.WriteLine("| op | wall s | CPU s | share |");
            Console.WriteLine("| --- | ---: | ---: | ---: |");
            foreach (var (name, v) in ops)
                Console.WriteLine($"| {name} | {v.Wall / reps:F4} | {v.Cpu / reps:F4} | {v.Wall / reps / sum * 100:F1} % |");
            Console.WriteLine($"| sum of ops | {sum:F4} | {ops.Values.Sum(v => v.Cpu) / reps:F4} | |");
            cos.Dispose(); sin.Dispose();
        }
        x.Dispose();
    }

    private static void Post()
    {
        int k = int.TryParse(Environment.GetEnvironmentVariable("SAM3_PROFILE_DETECTIONS"), out int kk) && kk > 0 ? kk : 200;
        const int h = 1200, w = 1800, lowSide = 288;
        torch.manual_seed(0);
        using var low = torch.randn(k, lowSide, lowSide) * 4;
        Console.WriteLine($"## post-processing: {k} kept detections, logits [{k},{lowSide},{lowSide}] → {w}x{h}");
        // previous path: all kept queries upsampled at once to float, sigmoid, > 0.5; the float tensor kept alive
        var old = Time(1, () =>
        {
            using var scope = NewDisposeScope();
            var prob = nn.functional.interpolate(low.unsqueeze(1), [h, w], mode: InterpolationMode.Bilinear, align_corners: false).sigmoid().squeeze(1).cpu();
            var masks = prob.gt(0.5);
        });
        Console.WriteLine($"| previous: interpolate all → sigmoid → gt (float [K,H,W] kept) | {old.Wall:F3} s | {old.Cpu:F3} s CPU |");
        Tensor newMasks = null!;
        var neu = Time(1, () => newMasks = MaskUpsampler.Masks(low, h, w, 0.5));
        Console.WriteLine($"| MaskUpsampler.Masks (chunked, in-place sigmoid, bool) | {neu.Wall:F3} s | {neu.Cpu:F3} s CPU |");
        // public conversion: previous per-mask path vs the batched byte conversion
        var perMask = Time(1, () =>
        {
            for (int i = 0; i < k; i++)
            {
                using var scope = NewDisposeScope();
                BinaryMask.FromBytes(newMasks[i].to(ScalarType.Byte).contiguous().data<byte>().ToArray(), w, h);
            }
        });
        Console.WriteLine($"| previous ToDetections masks (per mask: to(Byte), ToArray, FromBytes) | {perMask.Wall:F3} s | {perMask.Cpu:F3} s CPU |");
        var batch = Time(1, () =>
        {
            using var scope = NewDisposeScope();
            BinaryMask.FromTensorBatch(newMasks);
        });
        Console.WriteLine($"| BinaryMask.FromTensorBatch (one byte conversion) | {batch.Wall:F3} s | {batch.Cpu:F3} s CPU |");
        newMasks.Dispose();
    }

    private static void Model(double gemm)
    {
        var cfg = Sam3Config.Full;
        // SAM3_PROFILE_LIGHT_BACKBONE=1: the full-size model with a 2-block ViT (one windowed, one global) and a 2-layer
        // text encoder (≈0.3 GB instead of 3.4 GB; no heavy lock needed): necks and heads keep their full sizes and inputs.
        bool light = Environment.GetEnvironmentVariable("SAM3_PROFILE_LIGHT_BACKBONE") == "1";
        if (light)
            cfg = cfg with
            {
                Vit = cfg.Vit with { Depth = 2, GlobalAttBlocks = [1] },
                Text = cfg.Text with { Layers = 2 },
            };
        torch.manual_seed(0);
        var sw = Stopwatch.StartNew();
        string? ckpt = light ? null : Environment.GetEnvironmentVariable("SAM3_PROFILE_CHECKPOINT");
        using var model = string.IsNullOrEmpty(ckpt) ? Sam3ModelLoader.Build(cfg) : Sam3ModelLoader.LoadImageModel(ckpt, cfg);
        Console.WriteLine($"## full model ({(string.IsNullOrEmpty(ckpt) ? "random init" : ckpt)}{(light ? ", LIGHT backbone: ViT depth 2, text 2 layers" : "")}): built in {sw.Elapsed.TotalSeconds:F1} s, RSS peak so far {PeakRssGiB():F2} GiB, loadavg {Uptime()}");
        model.eval();
        int size = cfg.Vit.ImgSize;
        using var image = torch.rand(1, 3, size, size) * 2 - 1;
        var neck = model.backbone.vision_backbone;
        var trunk = neck.trunk;
        var c = cfg.Vit;
        var rows = new List<(string Stage, double Wall, double Cpu, double Flop)>();
        using var scope = NewDisposeScope();
        Tensor x = null!;
        var pe = Time(1, () =>
        {
            x = trunk.patch_embed.forward(image);
            if (trunk.pos_embed is not null) x = x + trunk.AbsPos(x.shape[1], x.shape[2]);
            x = trunk.ln_pre.forward(x);
        });
        rows.Add(("ViT patch embed + abs pos + ln_pre", pe.Wall, pe.Cpu, 2.0 * c.TokensPerSide * c.TokensPerSide * 3 * c.PatchSize * c.PatchSize * c.EmbedDim));
        double wWall = 0, wCpu = 0, gWall = 0, gCpu = 0;
        int nw = 0, ng = 0;
        for (int i = 0; i <= trunk.full_attn_ids[^1]; i++)
        {
            var prev = x;
            var r = Time(1, () => x = trunk.blocks[i].forward(prev));
            prev.Dispose();
            if (c.IsGlobalBlock(i)) { gWall += r.Wall; gCpu += r.Cpu; ng++; } else { wWall += r.Wall; wCpu += r.Cpu; nw++; }
        }
        var (wl, wa) = BlockFlops(c, c.WindowSize * c.WindowSize);
        var (gl, ga) = BlockFlops(c, c.TokensPerSide * c.TokensPerSide);
        rows.Add(($"ViT {nw} windowed blocks", wWall, wCpu, nw * (wl + wa)));
        rows.Add(($"ViT {ng} global blocks", gWall, gCpu, ng * (gl + ga)));
        var trunkOut = trunk.ln_post.forward(x).permute(0, 3, 1, 2);
        Console.WriteLine($"# ViT total {pe.Wall + wWall + gWall:F1} s wall, {(nw * (wl + wa) + ng * (gl + ga)) / 1e12:F2} TFLOP → " +
                          $"{(nw * (wl + wa) + ng * (gl + ga)) / (pe.Wall + wWall + gWall) / 1e9:F1} GFLOP/s = {(nw * (wl + wa) + ng * (gl + ga)) / (pe.Wall + wWall + gWall) / 1e9 / gemm * 100:F0} % of the GEMM rate; loadavg {Uptime()}");
        // necks, layer by layer
        foreach (var (label, seqs) in new[] { ("sam3 neck", neck.convs), ("sam2 neck", neck.sam2_convs) })
        {
            if (seqs is null) continue;
            for (int lvl = 0; lvl < seqs.Count; lvl++)
            {
                Tensor y = trunkOut;
                foreach (var (name, m) in seqs[lvl].named_children())
                {
                    var inp = y;
                    var r = Time(1, () => y = ((nn.Module<Tensor, Tensor>)m).forward(inp));
                    rows.Add(($"{label} level {lvl} {name} → [{string.Join(",", y.shape)}]", r.Wall, r.Cpu, ConvFlops(m, y)));
                }
                var yy = y;
                var pr = Time(1, () => neck.position_encoding.forward(yy).Dispose());
                rows.Add(($"{label} level {lvl} position encoding", pr.Wall, pr.Cpu, 0));
            }
        }
        // the backbone output as SAM3VLBackbone.ForwardImage assembles it (necks again, no second ViT pass)
        NeckOutput necks = null!;
        var nk = Time(1, () => necks = neck.ForwardNecks(trunkOut));
        Console.WriteLine($"# necks + position encodings (ForwardNecks, whole): {nk.Wall:F2} s wall, {nk.Cpu:F2} s CPU; loadavg {Uptime()}");
        int keep = necks.Sam3Out.Length - cfg.Neck.Scalp;
        BackboneOutput? sam2 = necks.Sam2Out is null ? null
            : new BackboneOutput(necks.Sam2Out.Take(keep).ToArray(), necks.Sam2Pos!.Take(keep).ToArray());
        var features = new BackboneOutput(necks.Sam3Out.Take(keep).ToArray(), necks.Sam3Pos.Take(keep).ToArray(), sam2);
        // text
        var tokenizer = ClipBpeTokenizer.FromBpeGz(BenchEnvironment.BpeVocabulary());
        Modeling.Text.TextEncoderOutput text = null!;
        var te = Time(2, () =>
        {
            var ids = tokenizer.TokenizeToTensors(["truck"]).Ids;
            text = model.backbone.ForwardText(ids);
        });
        rows.Add(("text encoder (tokenize + forward)", te.Wall, te.Cpu, 0));
        // grounding heads: timestamps at the parity probe points, grouped by prefix
        var textIds = torch.zeros(1, dtype: ScalarType.Int64);
        var imgIds = torch.zeros(1, dtype: ScalarType.Int64);
        var stamps = new List<(string Name, double Wall, double Cpu)>();
        var gsw = new Stopwatch();
        double c0 = 0;
        void Probe(string name, Tensor _) => stamps.Add((name, gsw.Elapsed.TotalSeconds, CpuSeconds() - c0));
        for (int rep = 0; rep < 2; rep++)
        {
            stamps.Clear();
            c0 = CpuSeconds();
            gsw.Restart();
            using var output = model.ForwardGrounding(features, text.LanguageFeatures, text.LanguageMask, textIds, imgIds, Prompt.Empty(1), Probe);
            gsw.Stop();
            stamps.Add(("end", gsw.Elapsed.TotalSeconds, CpuSeconds() - c0));
        }
        double pw = 0, pc = 0;
        foreach (var group in stamps.Select((s, i) => (s.Name.Split('.')[0], s.Wall - (i == 0 ? 0 : stamps[i - 1].Wall), s.Cpu - (i == 0 ? 0 : stamps[i - 1].Cpu)))
                     .GroupBy(g => g.Item1))
        {
            rows.Add(($"heads: {group.Key}", group.Sum(g => g.Item2), group.Sum(g => g.Item3), 0));
            pw += group.Sum(g => g.Item2); pc += group.Sum(g => g.Item3);
        }
        var noProbe = Time(1, () => model.ForwardGrounding(features, text.LanguageFeatures, text.LanguageMask, textIds, imgIds, Prompt.Empty(1)).Dispose());
        Console.WriteLine($"# heads with probes {pw:F2} s wall / {pc:F2} s CPU, without probes {noProbe.Wall:F2} s wall / {noProbe.Cpu:F2} s CPU");
        Console.WriteLine("| stage | wall s | CPU s | GFLOP | GFLOP/s | % of GEMM |");
        Console.WriteLine("| --- | ---: | ---: | ---: | ---: | ---: |");
        foreach (var (stage, wall, cpu, flop) in rows)
            Console.WriteLine(flop > 0
                ? $"| {stage} | {wall:F3} | {cpu:F3} | {flop / 1e9:F1} | {flop / wall / 1e9:F1} | {flop / wall / 1e9 / gemm * 100:F0} % |"
                : $"| {stage} | {wall:F3} | {cpu:F3} | | | |");
    }

    private static double ConvFlops(nn.Module m, Tensor output)
    {
        long outPixels = output.shape[0] * output.shape[2] * output.shape[3];
        switch (m)
        {
            case Conv2d conv:
            {
                var wt = conv.weight!;
                return 2.0 * outPixels * wt.shape[0] * wt.shape[1] * wt.shape[2] * wt.shape[3];
            }
            case ConvTranspose2d dconv:
            {
                var wt = dconv.weight!; // [in, out, k, k], stride k: every output value gets `in` MACs
                return 2.0 * outPixels * wt.shape[1] * wt.shape[0];
            }
            default:
                return 0;
        }
    }
}
