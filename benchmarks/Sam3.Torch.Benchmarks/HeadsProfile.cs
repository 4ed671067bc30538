using System.Diagnostics;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Decoder;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// Per-op profile of the detector decoder of <see cref="Sam3Config.Full"/> (issue 15 item 2), outside BenchmarkDotNet:
/// <c>dotnet run -c Release --project benchmarks/Sam3.Torch.Benchmarks -- heads [decoder]</c>. A random decoder on the
/// real shapes (200 queries + presence token, 72×72 memory, 33 prompt tokens); times one layer op by op (the module's own
/// sub-modules, called as <see cref="TransformerDecoderLayer.forward"/> calls them) and the whole forward, with the
/// previous boxRPB construction (bias built query-major, permuted to head-major, presence row concatenated in the layer)
/// next to the module's (built head-major with the presence row, one write) as an A/B in turns. Threads:
/// SAM3_BENCH_THREADS (default 2). Inference mode. More sections: <c>rpbkernel</c> (the fused boxRPB kernel against the
/// LibTorch construction, 1 thread and SAM3_BENCH_THREADS), <c>sdpa</c> (layer 0's image cross-attention SDPA in several
/// layouts), <c>kv</c> (k/v projections of all layers + their SDPAs in three layouts), <c>rpb</c>, <c>skinny</c>, <c>text</c>.
/// </summary>
internal static partial class HeadsProfile
{
    private static double CpuSeconds() => ComputeProfile.CpuSeconds();

    private static string Load() => ComputeProfile.Uptime();

    private static (double Wall, double Cpu) Time(int reps, Action action) => ComputeProfile.Time(reps, action);

    public static int Run(string[] args)
    {
        Sam3.Torch.IO.NativeLoaderFix.EnsurePatched();
        int threads = 2;
        if (int.TryParse(Environment.GetEnvironmentVariable(BenchEnvironment.ThreadsVariable), out int t) && t > 0) threads = t;
        torch.set_num_threads(threads);
        Console.WriteLine($"# heads profile  {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC  threads={threads}  loadavg before: {Load()}");
        using var mode = torch.inference_mode();
        var sections = args.Length == 0 ? new HashSet<string> { "decoder", "text" } : args.ToHashSet();
        double gemm = sections.Overlaps(["decoder", "text"]) ? Gemm() : 0;
        if (sections.Contains("decoder")) Decoder(gemm);
        if (sections.Contains("text")) Text(gemm);
        if (sections.Contains("rpb")) RpbVariants();
        if (sections.Contains("skinny")) { SkinnyGemm(); SkinnyKernelSweep(); }
        if (sections.Contains("skinnytext")) SkinnyText();
        if (sections.Contains("rpbkernel")) RpbKernelAb(threads);
        if (sections.Contains("sdpa")) SdpaVariants(threads);
        if (sections.Contains("kv")) KvLayouts(threads);
        Console.WriteLine($"# loadavg after: {Load()}");
        return 0;
    }

    /// <summary>GFLOP/s of nn.functional.linear at the decoder's memory projection shape, x[5184,256]·Wᵀ[256,256].</summary>
    private static double Gemm()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(0);
        var x = torch.randn(5184, 256);
        var w = torch.randn(256, 256);
        var big = torch.randn(5184, 1024);
        var wBig = torch.randn(4736, 1024);
        nn.functional.linear(x, w).Dispose();
        var (wall, cpu) = Time(5, () => nn.functional.linear(x, w).Dispose());
        var (bw, bc) = Time(2, () => nn.functional.linear(big, wBig).Dispose());
        double rate = 2.0 * 5184 * 256 * 256 / wall / 1e9, bigRate = 2.0 * 5184 * 1024 * 4736 / bw / 1e9;
        Console.WriteLine($"## GEMM linear x[5184,256]·W[256,256]: {wall * 1e3:F2} ms ({cpu * 1e3:F2} ms CPU) → {rate:F1} GFLOP/s; " +
                          $"ViT fc1 x[5184,1024]·W[1024,4736]: {bw:F3} s → {bigRate:F1} GFLOP/s (the harness's reference rate)");
        return bigRate;
    }

    /// <summary>
    /// The full-size text encoder (24 layers, width 1024; random weights, ≈1.4 GB) on one prompt: all 32 context positions
    /// (upstream) next to the real tokens only (skipPaddedPositions), in turns; the first call of the process separately.
    /// </summary>
    private static void Text(double gemm)
    {
        var cfg = Sam3Config.Full;
        torch.manual_seed(0);
        var sw = Stopwatch.StartNew();
        using var enc = new Modeling.Text.VETextEncoder(cfg);
        enc.eval();
        Console.WriteLine($"## text encoder ({cfg.Text.Layers} layers, width {cfg.Text.Width}, context {cfg.Text.ContextLength}): built in {sw.Elapsed.TotalSeconds:F1} s; loadavg {Load()}");
        var tokenizer = Sam3.Torch.Text.ClipBpeTokenizer.FromBpeGz(BenchEnvironment.BpeVocabulary());
        double flops = Reference.StageFlops.Text(cfg.Text);
        var (readBw, copyBw) = MemoryBandwidth.Measure();
        double weightBytes = MemoryBandwidth.TextWeightBytes(cfg.Text);
        Console.WriteLine($"## memory bandwidth (sum over 512 MiB fp32): read {readBw / 1e9:F1} GB/s, copy {copyBw / 1e9:F1} GB/s (read + write); " +
                          $"text weights {weightBytes / 1e9:F3} GB → bandwidth floor {weightBytes / readBw:F3} s; loadavg {Load()}");
        using (var ls = NewDisposeScope())
        {
            // one weight-streaming GEMM at M = 3: how close a single c_fc linear gets to its bandwidth floor
            var fc = enc.encoder.transformer.resblocks[0].mlp.children().OfType<TorchSharp.Modules.Linear>().First();
            var x3 = torch.randn(1, 3, cfg.Text.Width);
            fc.forward(x3).Dispose();
            var lt = Time(5, () => fc.forward(x3).Dispose());
            double fcBytes = fc.weight!.numel() * 4.0;
            Console.WriteLine($"# one c_fc linear at M = 3: {lt.Wall * 1e3:F2} ms for {fcBytes / 1e6:F1} MB of weights → {fcBytes / lt.Wall / 1e9:F1} GB/s ({fcBytes / lt.Wall / readBw * 100:F0} % of the read bandwidth)");
        }
        foreach (var prompt in new[] { "truck", "a red double-decker bus parked next to the curb" })
        {
            using var scope = NewDisposeScope();
            var (ids, pad) = tokenizer.TokenizeToTensors([prompt]);
            long real = pad.logical_not().sum().item<long>();
            var first = Time(1, () => { using var ts = NewDisposeScope(); enc.forward(ids, pad); });
            (double Wall, double Cpu) full = (double.MaxValue, double.MaxValue), skip = (double.MaxValue, double.MaxValue);
            for (int r = 0; r < 3; r++)
            {
                var a = Time(1, () => { using var ts = NewDisposeScope(); enc.forward(ids, pad); });
                var b = Time(1, () => { using var ts = NewDisposeScope(); enc.forward(ids, pad, skipPaddedPositions: true); });
                full = (Math.Min(full.Wall, a.Wall), Math.Min(full.Cpu, a.Cpu));
                skip = (Math.Min(skip.Wall, b.Wall), Math.Min(skip.Cpu, b.Cpu));
            }
            var fo = enc.forward(ids, pad);
            var so = enc.forward(ids, pad, skipPaddedPositions: true);
            var keep = TensorIndex.Slice(0, real);
            double diff = (fo.LanguageFeatures[keep] - so.LanguageFeatures[keep]).abs().max().item<float>();
            double padded = so.LanguageFeatures[TensorIndex.Slice(real, null)].abs().max().item<float>();
            var floorsReal = MemoryBandwidth.TextFloors(cfg.Text, real, gemm * 1e9, readBw);
            var floorsAll = MemoryBandwidth.TextFloors(cfg.Text, cfg.Text.ContextLength, gemm * 1e9, readBw);
            Console.WriteLine($"# \"{prompt}\" floors: real tokens GEMM {floorsReal.GemmFloorS:F3} s, bandwidth {floorsReal.BandwidthFloorS:F3} s → real-token run at " +
                              $"{skip.Wall / floorsReal.FloorS:F2}× its floor; all {cfg.Text.ContextLength} positions GEMM {floorsAll.GemmFloorS:F3} s, bandwidth {floorsAll.BandwidthFloorS:F3} s → " +
                              $"{full.Wall / floorsAll.FloorS:F2}× its floor");
            Console.WriteLine($"# \"{prompt}\" ({real} real tokens): first call {first.Wall:F3} s wall / {first.Cpu:F3} s CPU; all positions {full.Wall:F3} s / {full.Cpu:F3} s CPU " +
                              $"({flops / full.Wall / 1e9:F1} GFLOP/s = {flops / full.Wall / 1e9 / gemm * 100:F0} % of GEMM); real tokens only {skip.Wall:F3} s / {skip.Cpu:F3} s CPU " +
                              $"(ratio {skip.Wall / full.Wall:F2} wall, {skip.Cpu / full.Cpu:F2} CPU; {flops / skip.Wall / 1e9 / gemm * 100:F0} % of GEMM by upstream's FLOPs); " +
                              $"max |Δ| at the real positions {diff:G3}, max |value| at the padded ones {padded}; loadavg {Load()}");
        }
    }

    /// <summary>
    /// Variants of one boxRPB axis MLP (Linear(2,256) → ReLU → Linear(256,8) over 14,400 rows), in turns, with bit checks
    /// against <see cref="Mlp.forward"/>: the plain module call; row blocks with ReLU in place; the first layer as one
    /// K = 3 matmul with the bias folded in (no addmm bias copy).
    /// </summary>
    private static void RpbVariants()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(0);
        var mlp = new Mlp(2, 256, 8, 2);
        mlp.eval();
        var x = torch.rand(200 * 72, 2) * 2 - 1;
        var w1 = mlp.layers[0].weight!; var b1 = mlp.layers[0].bias!;
        var w2 = mlp.layers[1].weight!; var b2 = mlp.layers[1].bias!;
        var w1Folded = cat([w1, b1.unsqueeze(1)], 1).t().contiguous(); // [3,256]
        Tensor Plain() => mlp.forward(x);
        Tensor Blocked(long block)
        {
            using var s = NewDisposeScope();
            var parts = new List<Tensor>();
            for (long i = 0; i < x.shape[0]; i += block)
            {
                using var bs = NewDisposeScope();
                var h = nn.functional.linear(x[TensorIndex.Slice(i, Math.Min(x.shape[0], i + block))], w1, b1).relu_();
                parts.Add(nn.functional.linear(h, w2, b2).MoveToOuterDisposeScope());
            }
            return cat(parts, 0).MoveToOuterDisposeScope();
        }
        Tensor Folded(long block)
        {
            using var s = NewDisposeScope();
            var x3 = cat([x, torch.ones(x.shape[0], 1)], 1);
            var parts = new List<Tensor>();
            for (long i = 0; i < x.shape[0]; i += block)
            {
                using var bs = NewDisposeScope();
                var h = torch.mm(x3[TensorIndex.Slice(i, Math.Min(x.shape[0], i + block))], w1Folded).relu_();
                parts.Add(nn.functional.linear(h, w2, b2).MoveToOuterDisposeScope());
            }
            return cat(parts, 0).MoveToOuterDisposeScope();
        }
        // the decoder's memory projections: 6 layers × (k, v) GEMMs [5184,256]·[256,256] against two [5184,256]·[256,1536]
        {
            var mem = torch.randn(5184, 256);
            var ws = Enumerable.Range(0, 6).Select(_ => torch.randn(256, 256)).ToArray();
            var bs = Enumerable.Range(0, 6).Select(_ => torch.randn(256)).ToArray();
            var wAll = cat(ws, 0); var bAll = cat(bs, 0);
            void PerLayer() { for (int i = 0; i < 6; i++) nn.functional.linear(mem, ws[i], bs[i]).Dispose(); }
            void Fused() => nn.functional.linear(mem, wAll, bAll).Dispose();
            PerLayer(); Fused();
            (double W, double C) pl = (9e9, 9e9), fu = (9e9, 9e9);
            for (int r = 0; r < 5; r++)
            {
                var a = Time(1, PerLayer); var b = Time(1, Fused);
                pl = (Math.Min(pl.W, a.Wall), Math.Min(pl.C, a.Cpu)); fu = (Math.Min(fu.W, b.Wall), Math.Min(fu.C, b.Cpu));
            }
            using var one = nn.functional.linear(mem, ws[3], bs[3]);
            using var all = nn.functional.linear(mem, wAll, bAll);
            bool same = all[.., TensorIndex.Slice(768, 1024)].eq(one).all().item<bool>();
            Console.WriteLine($"# memory projections (one of k/v): 6 GEMMs N=256 {pl.W * 1e3:F1} ms wall / {pl.C * 1e3:F1} ms CPU; one GEMM N=1536 {fu.W * 1e3:F1} / {fu.C * 1e3:F1}; slice bit-identical: {same}; loadavg {Load()}");
        }
        var reference = Plain();
        var variants = new (string Name, Func<Tensor> Run)[]
        {
            ("plain Mlp.forward", Plain),
            ("blocks 1024, ReLU in place", () => Blocked(1024)),
            ("blocks 4096, ReLU in place", () => Blocked(4096)),
            ("one block, ReLU in place", () => Blocked(x.shape[0])),
            ("folded bias K=3, blocks 1024", () => Folded(1024)),
            ("folded bias K=3, blocks 4096", () => Folded(4096)),
            ("folded bias K=3, one block", () => Folded(x.shape[0])),
        };
        var best = variants.ToDictionary(v => v.Name, _ => (Wall: 9e9, Cpu: 9e9));
        for (int r = 0; r < 5; r++)
            foreach (var (name, run) in variants)
            {
                var t = Time(1, () => run().Dispose());
                best[name] = (Math.Min(best[name].Wall, t.Wall), Math.Min(best[name].Cpu, t.Cpu));
            }
        Console.WriteLine($"## boxRPB axis MLP over {x.shape[0]} rows (best of 5, in turns), loadavg {Load()}");
        foreach (var (name, run) in variants)
        {
            using var o = run();
            Console.WriteLine($"# {name}: {best[name].Wall * 1e3:F2} ms wall / {best[name].Cpu * 1e3:F2} ms CPU; bit-identical to Mlp.forward: {o.eq(reference).all().item<bool>()}, max |Δ| {(o - reference).abs().max().item<float>():G3}");
        }
    }

    /// <summary>
    /// A weight-streaming GEMM at M = 3 (the text encoder's c_fc on a 3-token prompt, W [4096,1024], 16.8 MB): linear
    /// (addmm, x·Wᵀ) against the transposed product W·xᵀ, in turns, with the read bandwidth; text-encoder lead only.
    /// </summary>
    private static void SkinnyGemm()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(0);
        var x = torch.randn(3, 1024);
        var ws = Enumerable.Range(0, 8).Select(_ => torch.randn(4096, 1024)).ToArray(); // 134 MB: past the cache
        var bs = Enumerable.Range(0, 8).Select(_ => torch.randn(4096)).ToArray();
        void Linear() { for (int i = 0; i < 8; i++) nn.functional.linear(x, ws[i], bs[i]).Dispose(); }
        void Transposed() { for (int i = 0; i < 8; i++) torch.addmm(bs[i].unsqueeze(1), ws[i], x.t(), 1, 1).t().Dispose(); }
        void Sum() { for (int i = 0; i < 8; i++) ws[i].sum().Dispose(); }
        Linear(); Transposed(); Sum();
        (double W, double C) a = (9e9, 9e9), b = (9e9, 9e9), c = (9e9, 9e9);
        for (int r = 0; r < 5; r++)
        {
            var ta = Time(1, Linear); var tb = Time(1, Transposed); var tc = Time(1, Sum);
            a = (Math.Min(a.W, ta.Wall), Math.Min(a.C, ta.Cpu)); b = (Math.Min(b.W, tb.Wall), Math.Min(b.C, tb.Cpu)); c = (Math.Min(c.W, tc.Wall), Math.Min(c.C, tc.Cpu));
        }
        double bytes = 8 * 4096 * 1024 * 4.0;
        using var la = nn.functional.linear(x, ws[0], bs[0]);
        using var lb = torch.addmm(bs[0].unsqueeze(1), ws[0], x.t(), 1, 1).t();
        Console.WriteLine($"## M = 3 GEMMs over 8 × [4096,1024] fp32 weights ({bytes / 1e6:F0} MB), best of 5, loadavg {Load()}: " +
                          $"linear {a.W * 1e3:F1} ms ({bytes / a.W / 1e9:F1} GB/s, CPU {a.C * 1e3:F1}); W·xᵀ {b.W * 1e3:F1} ms ({bytes / b.W / 1e9:F1} GB/s, CPU {b.C * 1e3:F1}); " +
                          $"sum of the weights {c.W * 1e3:F1} ms ({bytes / c.W / 1e9:F1} GB/s); max |Δ| linear vs W·xᵀ {(la - lb).abs().max().item<float>():G3}");
    }

    /// <summary>The previous boxRPB construction: [B,Q,H,W,heads] broadcast add, permuted to [B,heads,Q,HW] by a copy.</summary>
    internal static Tensor PreviousRpb(TransformerDecoder dec, Tensor referenceBoxes, long h, long w)
    {
        using var scope = NewDisposeScope();
        var xyxy = BoxOps.CxcywhToXyxy(referenceBoxes).transpose(0, 1);
        long bs = xyxy.shape[0], nq = xyxy.shape[1];
        var ch = arange(0, h, dtype: ScalarType.Float32) / h;
        var cw = arange(0, w, dtype: ScalarType.Float32) / w;
        var flat = xyxy.reshape(-1, 1, 4);
        var dy = (ch.view(1, -1, 1) - flat[.., .., TensorIndex.Slice(1, 4, 2)]).view(bs, nq, -1, 2);
        var dx = (cw.view(1, -1, 1) - flat[.., .., TensorIndex.Slice(0, 3, 2)]).view(bs, nq, -1, 2);
        static Tensor Log(Tensor d)
        {
            var s = d * 8.0;
            return sign(s) * log2(s.abs() + 1.0) / Math.Log2(8.0);
        }
        var ex = dec.boxRPB_embed_x!.forward(Log(dx));
        var ey = dec.boxRPB_embed_y!.forward(Log(dy));
        var bias = ey.unsqueeze(3) + ex.unsqueeze(2);
        bias = bias.flatten(2, 3).permute(0, 3, 1, 2).contiguous();
        return bias.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The decoder's inference fast paths (<see cref="TransformerDecoder.UseInferenceFastPaths"/>: boxRPB MLPs in row blocks
    /// with ReLU in place, memory + pos added once, FFN ReLU in place) against the plain path, in turns, with the outputs'
    /// max |Δ|; then GetRpbMatrix alone for several row-block sizes.
    /// </summary>
    private static void FastPathsAb(TransformerDecoder dec, Tensor tgt, Tensor memory, Tensor pos, Tensor prompt, Tensor promptMask,
        Tensor refBoxes, long side, double flops, double gemm)
    {
        using var scope = NewDisposeScope();
        TransformerDecoderOutput Run(bool fast)
        {
            dec.UseInferenceFastPaths = fast;
            try { return dec.forward(tgt, memory, pos, side, side, prompt, promptMask, applyDac: false); }
            finally { dec.UseInferenceFastPaths = true; }
        }
        using (var plainOut = Run(false))
        using (var fastOut = Run(true))
        {
            double dh = (plainOut.Hs - fastOut.Hs).abs().max().item<float>();
            double db = (plainOut.ReferenceBoxes - fastOut.ReferenceBoxes).abs().max().item<float>();
            double dp = (plainOut.PresenceLogits! - fastOut.PresenceLogits!).abs().max().item<float>();
            Console.WriteLine($"# fast paths vs plain: max |Δ| hs {dh:G3}, reference boxes {db:G3}, presence logits {dp:G3}; " +
                              $"bit-identical hs: {plainOut.Hs.eq(fastOut.Hs).all().item<bool>()}");
        }
        (double Wall, double Cpu) plain = (9e9, 9e9), fast = (9e9, 9e9);
        for (int r = 0; r < 3; r++)
        {
            var a = Time(1, () => Run(false).Dispose());
            var b = Time(1, () => Run(true).Dispose());
            plain = (Math.Min(plain.Wall, a.Wall), Math.Min(plain.Cpu, a.Cpu));
            fast = (Math.Min(fast.Wall, b.Wall), Math.Min(fast.Cpu, b.Cpu));
        }
        Console.WriteLine($"# decoder fast paths A/B in turns (best of 3): plain {plain.Wall:F3} s wall / {plain.Cpu:F3} s CPU; fast {fast.Wall:F3} s / {fast.Cpu:F3} s CPU; " +
                          $"ratio {fast.Wall / plain.Wall:F2} wall, {fast.Cpu / plain.Cpu:F2} CPU; fast ≈ {flops / fast.Wall / 1e9 / gemm * 100:F0} % of the GEMM rate (wall), loadavg {Load()}");

        var blocks = new[] { 256, 512, 1024, 2048, 4096, int.MaxValue };
        var best = blocks.ToDictionary(b => b, _ => (Wall: 9e9, Cpu: 9e9));
        (double Wall, double Cpu) plainRpb = (9e9, 9e9);
        using var reference = dec.GetRpbMatrix(refBoxes, side, side, presenceRow: true);
        for (int r = 0; r < 3; r++)
        {
            dec.UseInferenceFastPaths = false;
            var p = Time(1, () => dec.GetRpbMatrix(refBoxes, side, side, presenceRow: true).Dispose());
            plainRpb = (Math.Min(plainRpb.Wall, p.Wall), Math.Min(plainRpb.Cpu, p.Cpu));
            dec.UseInferenceFastPaths = true;
            foreach (var b in blocks)
            {
                dec.RpbMlpRowBlock = b;
                var t = Time(1, () => dec.GetRpbMatrix(refBoxes, side, side, presenceRow: true).Dispose());
                best[b] = (Math.Min(best[b].Wall, t.Wall), Math.Min(best[b].Cpu, t.Cpu));
            }
        }
        dec.RpbMlpRowBlock = TransformerDecoder.DefaultRpbMlpRowBlock;
        dec.UseInferenceFastPaths = false;
        using var plainMask = dec.GetRpbMatrix(refBoxes, side, side, presenceRow: true);
        dec.UseInferenceFastPaths = true;
        Console.WriteLine($"# GetRpbMatrix (best of 3, ms wall / CPU): plain {plainRpb.Wall * 1e3:F1} / {plainRpb.Cpu * 1e3:F1}; " +
                          string.Join("; ", blocks.Select(b => $"blocks of {(b == int.MaxValue ? "all" : b.ToString())} rows {best[b].Wall * 1e3:F1} / {best[b].Cpu * 1e3:F1}")) +
                          $"; max |Δ| blocked vs plain {(reference - plainMask).abs().max().item<float>():G3}; loadavg {Load()}");
    }

    private static void Decoder(double gemm)
    {
        var cfg = Sam3Config.Full;
        torch.manual_seed(0);
        using var dec = new TransformerDecoder(cfg);
        dec.eval();
        int d = cfg.Decoder.DModel, heads = cfg.Decoder.NumHeads;
        const int side = 72, promptLen = 33;
        long hw = side * side;
        using var scope = NewDisposeScope();
        var memory = torch.randn(hw, 1, d);
        var pos = torch.randn(hw, 1, d);
        var prompt = torch.randn(promptLen, 1, d);
        var promptMask = torch.zeros(1, promptLen, dtype: ScalarType.Bool);
        promptMask[0, TensorIndex.Slice(3, 32)] = torch.tensor(true); // "truck": SOT, word, EOT, 29 pads, geometry CLS
        var tgt = dec.query_embed.weight!.unsqueeze(1);
        // reference boxes spread over the image (random weights keep them near sigmoid(N(0,1)))
        var refBoxes = torch.rand(cfg.Decoder.NumQueries, 1, 4) * 0.8 + 0.1;
        Console.WriteLine($"## decoder ({cfg.Decoder.NumLayers} layers, {cfg.Decoder.NumQueries} queries + presence, memory {side}×{side}, " +
                          $"{promptLen} prompt tokens, {heads} heads, d {d}); loadavg {Load()}");

        // ---- whole forward
        dec.forward(tgt, memory, pos, side, side, prompt, promptMask, applyDac: false).Dispose();
        var whole = Time(3, () => dec.forward(tgt, memory, pos, side, side, prompt, promptMask, applyDac: false).Dispose());
        double flops = Reference.StageFlops.DecoderAndScoring(cfg, promptLen);
        Console.WriteLine($"# decoder.forward: {whole.Wall:F3} s wall, {whole.Cpu:F3} s CPU (best of 3); decoder + scoring ≈ {flops / 1e9:F1} GFLOP → " +
                          $"{flops / whole.Wall / 1e9:F1} GFLOP/s = {flops / whole.Wall / 1e9 / gemm * 100:F0} % of the GEMM rate");

        FastPathsAb(dec, tgt, memory, pos, prompt, promptMask, refBoxes, side, flops, gemm);

        // ---- A/B in turns: the previous forward (boxRPB built query-major, permuted, presence row concatenated in the layer)
        Tensor Previous()
        {
            using var ps = NewDisposeScope();
            var refB = dec.reference_points.weight!.unsqueeze(1).sigmoid();
            var presenceOut = dec.presence_token!.weight![TensorIndex.None].expand(1, 1, -1);
            var output = tgt;
            var hs = new List<Tensor>();
            for (int i = 0; i < dec.num_layers; i++)
            {
                var qp = dec.ref_point_head.forward(dec.SineEmbedBoxes(refB));
                var rpb = PreviousRpb(dec, refB, side, side).flatten(0, 1);
                (output, presenceOut) = dec.layers[i].forward(output, qp, memory, pos, prompt, promptMask, null, null, rpb, false, true, presenceOut!);
                var normed = dec.norm.forward(output);
                refB = (dec.bbox_embed.forward(normed) + BoxOps.InverseSigmoid(refB, cfg.HardcodedInClasses.InverseSigmoidEps)).sigmoid();
                hs.Add(normed);
            }
            return stack(hs).MoveToOuterDisposeScope();
        }
        using (var check = NewDisposeScope())
        {
            using var now = dec.forward(tgt, memory, pos, side, side, prompt, promptMask, applyDac: false);
            Console.WriteLine($"# module forward equals the previous forward bit for bit (hs of all layers): {now.Hs.eq(Previous()).all().item<bool>()}");
        }
        (double Wall, double Cpu) prev = (double.MaxValue, double.MaxValue), mod = (double.MaxValue, double.MaxValue);
        for (int r = 0; r < 3; r++)
        {
            var a = Time(1, () => Previous().Dispose());
            var m = Time(1, () => dec.forward(tgt, memory, pos, side, side, prompt, promptMask, applyDac: false).Dispose());
            prev = (Math.Min(prev.Wall, a.Wall), Math.Min(prev.Cpu, a.Cpu));
            mod = (Math.Min(mod.Wall, m.Wall), Math.Min(mod.Cpu, m.Cpu));
        }
        Console.WriteLine($"# decoder A/B in turns (best of 3): previous {prev.Wall:F3} s wall / {prev.Cpu:F3} s CPU; module {mod.Wall:F3} s / {mod.Cpu:F3} s CPU; " +
                          $"ratio {mod.Wall / prev.Wall:F2} wall, {mod.Cpu / prev.Cpu:F2} CPU; module ≈ {flops / mod.Wall / 1e9 / gemm * 100:F0} % of the GEMM rate (wall), loadavg {Load()}");

        // ---- layer 0 alone: previous mask (+ cat in the layer) vs module mask (presence row included), in turns
        {
            var qp0 = dec.ref_point_head.forward(dec.SineEmbedBoxes(refBoxes));
            var pres = dec.presence_token!.weight![TensorIndex.None].expand(1, 1, -1);
            var oldMask = PreviousRpb(dec, refBoxes, side, side).flatten(0, 1);
            var newMask = dec.GetRpbMatrix(refBoxes, side, side, presenceRow: true).flatten(0, 1);
            (double, double) lo = (9e9, 9e9), ln = (9e9, 9e9), lo2 = (9e9, 9e9), ln2 = (9e9, 9e9);
            for (int r = 0; r < 3; r++)
            {
                var a = Time(1, () => { using var ls = NewDisposeScope(); dec.layers[0].forward(tgt, qp0, memory, pos, prompt, promptMask, null, null, oldMask, false, true, pres); });
                var b = Time(1, () => { using var ls = NewDisposeScope(); dec.layers[0].forward(tgt, qp0, memory, pos, prompt, promptMask, null, null, newMask, false, true, pres, crossAttnMaskHasPresenceRow: true); });
                var c = Time(1, () => { using var ls = NewDisposeScope(); PreviousRpb(dec, refBoxes, side, side); });
                var d2 = Time(1, () => { using var ls = NewDisposeScope(); dec.GetRpbMatrix(refBoxes, side, side, presenceRow: true); });
                lo = (Math.Min(lo.Item1, a.Wall), Math.Min(lo.Item2, a.Cpu)); ln = (Math.Min(ln.Item1, b.Wall), Math.Min(ln.Item2, b.Cpu));
                lo2 = (Math.Min(lo2.Item1, c.Wall), Math.Min(lo2.Item2, c.Cpu)); ln2 = (Math.Min(ln2.Item1, d2.Wall), Math.Min(ln2.Item2, d2.Cpu));
            }
            Console.WriteLine($"# layer 0 with the previous mask (cat in the layer) {lo.Item1 * 1e3:F1} ms wall / {lo.Item2 * 1e3:F1} ms CPU; with the module mask {ln.Item1 * 1e3:F1} / {ln.Item2 * 1e3:F1}; " +
                              $"PreviousRpb {lo2.Item1 * 1e3:F1} / {lo2.Item2 * 1e3:F1}; GetRpbMatrix(presenceRow) {ln2.Item1 * 1e3:F1} / {ln2.Item2 * 1e3:F1}");
        }

        // ---- one layer, op by op
        var layer = dec.layers[0];
        var ops = new Dictionary<string, (double Wall, double Cpu)>();
        void Op(string name, Action a)
        {
            var r = Time(1, a);
            ops[name] = ops.TryGetValue(name, out var o) ? (o.Wall + r.Wall, o.Cpu + r.Cpu) : r;
        }
        const int reps = 3;
        var presence = dec.presence_token!.weight![TensorIndex.None].expand(1, 1, -1);
        for (int r = 0; r < reps; r++)
        {
            using var s = NewDisposeScope();
            Tensor queryPos = null!, rpb = null!, mask = null!, x = null!, qk = null!, sa = null!, key = null!, ca = null!;
            Tensor q = null!, k = null!, v = null!, o = null!, ffn = null!, normed = null!, newRef = null!;
            Op("sine embedding of boxes", () => queryPos = dec.SineEmbedBoxes(refBoxes));
            Op("ref_point_head MLP", () => queryPos = dec.ref_point_head.forward(queryPos));
            Op("boxRPB previous (query-major + permute copy)", () => rpb = PreviousRpb(dec, refBoxes, side, side));
            Op("boxRPB previous: presence zero row (cat copy)", () =>
                mask = cat([zeros_like(rpb.flatten(0, 1)[.., TensorIndex.Slice(0, 1), ..]), rpb.flatten(0, 1)], 1));
            Tensor rpbNew = null!;
            Op("boxRPB module (GetRpbMatrix, head-major, presence row)", () => rpbNew = dec.GetRpbMatrix(refBoxes, side, side, presenceRow: true));
            if (r == 0)
                Console.WriteLine($"# boxRPB module equals previous + zero row bit for bit: {rpbNew.flatten(0, 1).eq(mask).all().item<bool>()}; " +
                                  $"contiguous: {rpbNew.is_contiguous()}");
            // boxRPB parts (comparison rows): the per-axis MLPs and the [heads,1+Q,H·W] sum
            Tensor ddx = null!, ddy = null!, ex = null!, ey = null!, h1 = null!;
            Op("boxRPB part: deltas + log (comparison)", () =>
            {
                var xyxy = BoxOps.CxcywhToXyxy(refBoxes).transpose(0, 1).reshape(-1, 1, 4);
                var c = arange(0, side, dtype: ScalarType.Float32) / side;
                ddx = c.view(1, -1, 1) - xyxy[.., .., TensorIndex.Slice(0, 3, 2)];
                ddy = c.view(1, -1, 1) - xyxy[.., .., TensorIndex.Slice(1, 4, 2)];
                var sx = ddx * 8.0; ddx = sign(sx) * log2(sx.abs() + 1.0) / 3.0;
                var sy = ddy * 8.0; ddy = sign(sy) * log2(sy.abs() + 1.0) / 3.0;
            });
            Op("boxRPB part: MLP x, first Linear(2,256) only (comparison)", () => h1 = dec.boxRPB_embed_x!.layers[0].forward(ddx));
            Op("boxRPB part: ReLU out of place (comparison)", () => nn.functional.relu(h1).Dispose());
            Op("boxRPB part: ReLU in place (comparison)", () => h1.relu_());
            Op("boxRPB part: MLP x whole (comparison)", () => ex = dec.boxRPB_embed_x!.forward(ddx));
            Op("boxRPB part: MLP y whole (comparison)", () => ey = dec.boxRPB_embed_y!.forward(ddy));
            Tensor exT = null!, eyT = null!, sumFresh = null!;
            Op("boxRPB part: head-major tables (comparison)", () =>
            {
                exT = ex.view(1, -1, side, heads).permute(0, 3, 1, 2).contiguous();
                eyT = ey.view(1, -1, side, heads).permute(0, 3, 1, 2).contiguous();
            });
            Op("boxRPB part: broadcast sum into a fresh tensor (comparison)", () => sumFresh = eyT.unsqueeze(4) + exT.unsqueeze(3));
            var reuse = torch.empty_like(sumFresh);
            Op("boxRPB part: broadcast sum into a reused buffer, copy_ + add_ (comparison)", () => reuse.copy_(eyT.unsqueeze(4).expand_as(reuse)).add_(exT.unsqueeze(3)));
            if (r == 0) Console.WriteLine($"# reused-buffer sum equals the fresh sum: {reuse.eq(sumFresh).all().item<bool>()}");
            Op("cat presence + queries, pos", () =>
            {
                x = cat([presence, tgt], 0);
                queryPos = cat([zeros_like(presence), queryPos], 0);
            });
            Op("self-attention (201 tokens)", () => { qk = x + queryPos; sa = layer.self_attn.forward(qk, qk, x); });
            Op("residual + LayerNorm", () => x = layer.norm2.forward(x + sa));
            Op("text cross-attention (33 keys)", () => ca = layer.ca_text!.forward(x + queryPos, prompt, prompt, key_padding_mask: promptMask));
            Op("residual + LayerNorm", () => x = layer.catext_norm!.forward(x + ca));
            Op("image cross-attn: memory + pos", () => key = memory + pos);
            var att = layer.cross_attn;
            var wq = att.in_proj_weight.chunk(3, 0);
            var bq = att.in_proj_bias.chunk(3, 0);
            int hd = d / heads;
            Op("image cross-attn: q projection (201)", () => q = nn.functional.linear((x + queryPos).transpose(0, 1), wq[0], bq[0]).view(1, -1, heads, hd).transpose(1, 2));
            Op("image cross-attn: k projection (5184)", () => k = nn.functional.linear(key.transpose(0, 1), wq[1], bq[1]).view(1, -1, heads, hd).transpose(1, 2));
            Op("image cross-attn: v projection (5184)", () => v = nn.functional.linear(memory.transpose(0, 1), wq[2], bq[2]).view(1, -1, heads, hd).transpose(1, 2));
            var m4 = mask.view(1, heads, -1, hw);
            Op("image cross-attn: SDPA with the float boxRPB mask", () => o = nn.functional.scaled_dot_product_attention(q, k, v, m4));
            var m4New = rpbNew.flatten(0, 1).view(1, heads, -1, hw);
            if (r == 0) Console.WriteLine($"# masks: previous strides [{string.Join(",", m4.stride())}], module strides [{string.Join(",", m4New.stride())}]");
            Op("image cross-attn: SDPA with the module's boxRPB mask (comparison)", () => nn.functional.scaled_dot_product_attention(q, k, v, m4New).Dispose());
            Op("image cross-attn: SDPA without mask (comparison)", () => nn.functional.scaled_dot_product_attention(q, k, v).Dispose());
            Op("image cross-attn: explicit math softmax(qkᵀ/√d + mask)·v (comparison)", () =>
            {
                using var ms = NewDisposeScope();
                var logits = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / Math.Sqrt(hd)) + m4;
                torch.matmul(logits.softmax(-1), v);
            });
            Op("image cross-attn: head merge + out_proj", () => o = att.out_proj.forward(o.transpose(1, 2).reshape(1, -1, d)).transpose(0, 1));
            Op("residual + LayerNorm", () => x = layer.norm1.forward(x + o));
            Op("FFN (linear1, ReLU, linear2)", () => ffn = layer.linear2.forward(nn.functional.relu(layer.linear1.forward(x))));
            Op("residual + LayerNorm", () => x = layer.norm3.forward(x + ffn));
            var queries = x[TensorIndex.Slice(1, null)];
            Op("box refinement (norm, bbox_embed, inverse_sigmoid, sigmoid)", () =>
            {
                normed = dec.norm.forward(queries);
                newRef = (dec.bbox_embed.forward(normed) + BoxOps.InverseSigmoid(refBoxes, 1e-3)).sigmoid();
            });
            Op("presence head (norm, MLP)", () => dec.presence_token_head!.forward(dec.presence_token_out_norm!.forward(x[TensorIndex.Slice(0, 1)])).Dispose());
        }
        double sum = ops.Where(kv => !kv.Key.Contains("comparison") && !kv.Key.Contains("previous")).Sum(kv => kv.Value.Wall) / reps;
        Console.WriteLine("| op (layer 0) | wall ms | CPU ms | share of the module's ops |");
        Console.WriteLine("| --- | ---: | ---: | ---: |");
        foreach (var (name, v) in ops)
        {
            bool counted = !name.Contains("comparison") && !name.Contains("previous");
            Console.WriteLine($"| {name} | {v.Wall / reps * 1e3:F2} | {v.Cpu / reps * 1e3:F2} | {(counted ? $"{v.Wall / reps / sum * 100:F1} %" : "—")} |");
        }
        Console.WriteLine($"| sum of the module's ops (one layer) | {sum * 1e3:F2} | | |");

        // PrecisionPolicy.ToModuleDtype on a two-Linear Sequential (the text MLP's call pattern)
        using var seq = nn.Sequential(("c_fc", nn.Linear(16, 16)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(16, 16)));
        using var xs = torch.randn(2, 16);
        const int calls = 20000;
        var md = Time(3, () => { for (int i = 0; i < calls; i++) global::Sam3.Torch.Precision.PrecisionPolicy.ToModuleDtype(xs, seq); });
        Console.WriteLine($"# PrecisionPolicy.ToModuleDtype: {md.Wall / calls * 1e6:F2} µs per call ({calls} calls, best of 3)");
    }

    /// <summary>A random full-size decoder with the real shapes' inputs (as <see cref="Decoder"/>).</summary>
    private static (TransformerDecoder Dec, Tensor Tgt, Tensor Memory, Tensor Pos, Tensor Prompt, Tensor PromptMask, Tensor RefBoxes) FullDecoder()
    {
        var cfg = Sam3Config.Full;
        torch.manual_seed(0);
        var dec = new TransformerDecoder(cfg);
        dec.eval();
        int d = cfg.Decoder.DModel;
        const int side = 72, promptLen = 33;
        var memory = torch.randn(side * side, 1, d).DetachFromDisposeScope();
        var pos = torch.randn(side * side, 1, d).DetachFromDisposeScope();
        var prompt = torch.randn(promptLen, 1, d).DetachFromDisposeScope();
        var promptMask = torch.zeros(1, promptLen, dtype: ScalarType.Bool).DetachFromDisposeScope();
        promptMask[0, TensorIndex.Slice(3, 32)] = torch.tensor(true);
        var tgt = dec.query_embed.weight!.detach().unsqueeze(1).DetachFromDisposeScope();
        var refBoxes = (torch.rand(cfg.Decoder.NumQueries, 1, 4) * 0.8 + 0.1).DetachFromDisposeScope();
        return (dec, tgt, memory, pos, prompt, promptMask, refBoxes);
    }

    /// <summary>
    /// The fused boxRPB kernel (<see cref="TransformerDecoder.UseRpbKernel"/>) against the LibTorch construction (row-blocked
    /// MLPs + broadcast sum), in turns, best of 3, at 1 thread (CPU time) and at <paramref name="threads"/> (wall): the bias
    /// alone and the whole decoder forward, with the max |Δ| of the bias and of hs / boxes / presence logits.
    /// </summary>
    private static void RpbKernelAb(int threads)
    {
        using var scope = NewDisposeScope();
        var (dec, tgt, memory, pos, prompt, promptMask, refBoxes) = FullDecoder();
        using var _ = dec;
        const int side = 72;
        double flops = Reference.StageFlops.DecoderAndScoring(Sam3Config.Full, 33);
        Console.WriteLine($"## boxRPB kernel A/B (full-size random decoder, 200 queries + presence, 72×72); kernel path bits {BoxRpbKernel.PathBits(2, 256, 8)}; loadavg {Load()}");
        Tensor Bias(bool kernel) { dec.UseRpbKernel = kernel; try { return dec.GetRpbMatrix(refBoxes, side, side, presenceRow: true); } finally { dec.UseRpbKernel = true; } }
        TransformerDecoderOutput Forward(bool kernel)
        {
            dec.UseRpbKernel = kernel;
            try { return dec.forward(tgt, memory, pos, side, side, prompt, promptMask, applyDac: false); }
            finally { dec.UseRpbKernel = true; }
        }
        using (var ds = NewDisposeScope())
        {
            var lib = Bias(false); var ker = Bias(true);
            using var fo = Forward(true); using var lo = Forward(false);
            dec.UseInferenceFastPaths = false;
            using var po = dec.forward(tgt, memory, pos, side, side, prompt, promptMask, applyDac: false);
            dec.UseInferenceFastPaths = true;
            Console.WriteLine($"# max |Δ| kernel vs LibTorch: bias {(ker - lib).abs().max().item<float>():G3} (max |bias| {lib.abs().max().item<float>():G3}); " +
                              $"hs {(fo.Hs - lo.Hs).abs().max().item<float>():G3}, boxes {(fo.ReferenceBoxes - lo.ReferenceBoxes).abs().max().item<float>():G3}, " +
                              $"presence logits {(fo.PresenceLogits! - lo.PresenceLogits!).abs().max().item<float>():G3}; LibTorch fast path vs plain path hs bit-identical: {lo.Hs.eq(po.Hs).all().item<bool>()}");
        }
        // the kernel's parts: the deltas (LibTorch ops, as upstream), the kernel with streaming and with plain stores
        var xyxy = BoxOps.CxcywhToXyxy(refBoxes).transpose(0, 1).reshape(-1, 1, 4);
        var coords = arange(0, side, dtype: ScalarType.Float32) / side;
        (Tensor dx, Tensor dy) Deltas()
        {
            var ddx = (coords.view(1, -1, 1) - xyxy[.., .., TensorIndex.Slice(0, 3, 2)]).view(1, -1, side, 2) * 8.0;
            var ddy = (coords.view(1, -1, 1) - xyxy[.., .., TensorIndex.Slice(1, 4, 2)]).view(1, -1, side, 2) * 8.0;
            return (sign(ddx) * log2(ddx.abs() + 1.0) / 3.0, sign(ddy) * log2(ddy.abs() + 1.0) / 3.0);
        }
        var (kdx, kdy) = Deltas();
        foreach (int t in new[] { 1, threads }.Distinct())
        {
            torch.set_num_threads(t);
            (double W, double C) pd = (9e9, 9e9), pf = (9e9, 9e9), pe = (9e9, 9e9), pn = (9e9, 9e9);
            for (int r = 0; r < 5; r++)
            {
                BoxRpbKernel.UseStreamingStores = false;
                var n = Time(1, () => BoxRpbKernel.Bias(kdx, kdy, dec.boxRPB_embed_x!, dec.boxRPB_embed_y!, true).Dispose());
                BoxRpbKernel.UseStreamingStores = true;
                pn = (Math.Min(pn.W, n.Wall), Math.Min(pn.C, n.Cpu));
                var a = Time(1, () => { using var ps = NewDisposeScope(); Deltas(); });
                var b = Time(1, () => BoxRpbKernel.Bias(kdx, kdy, dec.boxRPB_embed_x!, dec.boxRPB_embed_y!, true).Dispose());
                var e = Time(1, () => torch.empty(1, 8, 201, side * side).fill_(1f).Dispose());
                pd = (Math.Min(pd.W, a.Wall), Math.Min(pd.C, a.Cpu)); pf = (Math.Min(pf.W, b.Wall), Math.Min(pf.C, b.Cpu));
                pe = (Math.Min(pe.W, e.Wall), Math.Min(pe.C, e.Cpu));
            }
            Console.WriteLine($"# threads {t} parts (best of 5, ms wall / CPU): deltas {pd.W * 1e3:F2} / {pd.C * 1e3:F2}; kernel {pf.W * 1e3:F2} / {pf.C * 1e3:F2} " +
                              $"(with plain stores {pn.W * 1e3:F2} / {pn.C * 1e3:F2}); (empty + fill_ of a fresh 33 MB tensor {pe.W * 1e3:F2} / {pe.C * 1e3:F2}); loadavg {Load()}");
        }
        foreach (int t in new[] { 1, threads }.Distinct())
        {
            torch.set_num_threads(t);
            Bias(true).Dispose(); Bias(false).Dispose(); Forward(true).Dispose(); Forward(false).Dispose();
            (double W, double C) bl = (9e9, 9e9), bk = (9e9, 9e9), fl = (9e9, 9e9), fk = (9e9, 9e9);
            string before = Load();
            for (int r = 0; r < 3; r++)
            {
                var a = Time(1, () => Bias(false).Dispose()); var b = Time(1, () => Bias(true).Dispose());
                var c = Time(1, () => Forward(false).Dispose()); var d = Time(1, () => Forward(true).Dispose());
                bl = (Math.Min(bl.W, a.Wall), Math.Min(bl.C, a.Cpu)); bk = (Math.Min(bk.W, b.Wall), Math.Min(bk.C, b.Cpu));
                fl = (Math.Min(fl.W, c.Wall), Math.Min(fl.C, c.Cpu)); fk = (Math.Min(fk.W, d.Wall), Math.Min(fk.C, d.Cpu));
            }
            Console.WriteLine($"# threads {t} (best of 3 in turns; loadavg {before} → {Load()}): GetRpbMatrix LibTorch {bl.W * 1e3:F1} ms wall / {bl.C * 1e3:F1} ms CPU, " +
                              $"kernel {bk.W * 1e3:F1} / {bk.C * 1e3:F1} (ratio wall {bk.W / bl.W:F2}, CPU {bk.C / bl.C:F2}); decoder.forward LibTorch rpb {fl.W:F3} s / {fl.C:F3} s CPU, " +
                              $"kernel {fk.W:F3} / {fk.C:F3} (ratio wall {fk.W / fl.W:F2}, CPU {fk.C / fl.C:F2}); {flops / 1e9:F1} GFLOP → kernel {flops / fk.W / 1e9:F1} GFLOP/s wall");
        }
        torch.set_num_threads(threads);
    }

    /// <summary>
    /// Layer 0's image cross-attention SDPA (q [1,8,201,32], k/v [1,8,5184,32], the boxRPB mask [1,8,201,5184]) in the
    /// layouts the module hands it (q a transposed view, k/v column slices of the all-layer projection) against contiguous
    /// [B,H,L,D] copies, heads merged into the batch, and without a mask; in turns, best of 5, with bit checks.
    /// </summary>
    private static void SdpaVariants(int threads)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(1);
        const int heads = 8, hd = 32, l = 201, s = 72 * 72, d = heads * hd;
        var qAll = torch.randn(1, l, d);
        var kAll = torch.randn(1, s, 6 * d);
        var vAll = torch.randn(1, s, 6 * d);
        var mask = torch.randn(1, heads, l, s);
        var q = qAll.view(1, l, heads, hd).transpose(1, 2);
        var k = kAll[.., .., TensorIndex.Slice(d, 2 * d)].view(1, s, heads, hd).transpose(1, 2);
        var v = vAll[.., .., TensorIndex.Slice(d, 2 * d)].view(1, s, heads, hd).transpose(1, 2);
        var qc = q.contiguous(); var kc = k.contiguous(); var vc = v.contiguous();
        var reference = nn.functional.scaled_dot_product_attention(q, k, v, mask);
        var variants = new (string Name, Func<Tensor> Run)[]
        {
            ("module layout (strided views), fp32 mask", () => nn.functional.scaled_dot_product_attention(q, k, v, mask)),
            ("contiguous q/k/v [B,H,L,D] (copies timed)", () => nn.functional.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), mask)),
            ("contiguous q/k/v [B,H,L,D] (copies made before)", () => nn.functional.scaled_dot_product_attention(qc, kc, vc, mask)),
            ("heads merged into the batch [8,1,L,D], mask [8,1,L,S]", () => nn.functional.scaled_dot_product_attention(
                q.reshape(heads, 1, l, hd), k.reshape(heads, 1, s, hd), v.reshape(heads, 1, s, hd), mask.view(heads, 1, l, s)).view(1, heads, l, hd)),
            ("3-d [8,L,D] with mask [8,L,S]", () => nn.functional.scaled_dot_product_attention(
                qc.view(heads, l, hd), kc.view(heads, s, hd), vc.view(heads, s, hd), mask.view(heads, l, s)).view(1, heads, l, hd)),
            ("mask broadcast over a size-1 query-batch (expand)", () => nn.functional.scaled_dot_product_attention(q, k, v, mask.expand(1, heads, l, s))),
            ("no mask (comparison)", () => nn.functional.scaled_dot_product_attention(q, k, v)),
        };
        foreach (int t in new[] { 1, threads }.Distinct())
        {
            torch.set_num_threads(t);
            var best = variants.ToDictionary(x => x.Name, _ => (Wall: 9e9, Cpu: 9e9));
            foreach (var (_, run) in variants) run().Dispose();
            string before = Load();
            for (int r = 0; r < 5; r++)
                foreach (var (name, run) in variants)
                {
                    var tm = Time(1, () => run().Dispose());
                    best[name] = (Math.Min(best[name].Wall, tm.Wall), Math.Min(best[name].Cpu, tm.Cpu));
                }
            Console.WriteLine($"## SDPA variants, threads {t}, best of 5 in turns (loadavg {before} → {Load()}); 2·2·201·5184·256 = {4.0 * l * s * d / 1e9:F2} GFLOP");
            foreach (var (name, run) in variants)
            {
                using var o = run();
                bool noMask = name.StartsWith("no mask");
                Console.WriteLine($"# {name}: {best[name].Wall * 1e3:F2} ms wall / {best[name].Cpu * 1e3:F2} ms CPU ({4.0 * l * s * d / best[name].Wall / 1e9:F1} GFLOP/s)" +
                                  (noMask ? "" : $"; bit-identical: {o.eq(reference).all().item<bool>()}, max |Δ| {(o - reference).abs().max().item<float>():G3}"));
            }
        }
        torch.set_num_threads(threads);
    }

    /// <summary>
    /// The six layers' memory k/v projections plus their six SDPA calls, with k/v in three layouts: (a) as the module makes
    /// them (two GEMMs [5184,256]·[256,1536], each layer's k/v a strided column slice); (b) the same GEMMs, then one
    /// permute copy to [layers,B,H,S,D] contiguous; (c) batched GEMMs writing [layers·H,S,D] directly (matmul, then the bias added). Bit checks
    /// of the projections and of the attention outputs against (a); in turns, best of 3.
    /// </summary>
    private static void KvLayouts(int threads)
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(2);
        const int heads = 8, hd = 32, l = 201, s = 72 * 72, d = heads * hd, layers = 6;
        var mem = torch.randn(s, d);
        var w = torch.randn(layers * d, d) * 0.06;
        var bias = torch.randn(layers * d) * 0.1;
        var q = torch.randn(1, heads, l, hd);
        var mask = torch.randn(1, heads, l, s);
        var wT = w.view(layers * heads, hd, d).transpose(1, 2); // [48,256,32] view
        var bB = bias.view(layers * heads, 1, hd);
        Tensor ProjA() => nn.functional.linear(mem, w, bias); // [S, 6·256]
        Tensor SliceA(Tensor all, int i) => all[.., TensorIndex.Slice(i * d, (i + 1) * d)].view(1, s, heads, hd).transpose(1, 2);
        Tensor ProjB() => ProjA().view(s, layers, heads, hd).permute(1, 2, 0, 3).contiguous(); // [6,8,S,32]
        Tensor ProjC() => torch.matmul(mem.unsqueeze(0), wT).add_(bB).view(layers, heads, s, hd);
        Tensor SliceBC(Tensor all, int i) => all[i].unsqueeze(0);
        var projA = ProjA();
        var outsA = Enumerable.Range(0, layers).Select(i => nn.functional.scaled_dot_product_attention(q, SliceA(projA, i), SliceA(projA, i), mask)).ToArray();
        var projB = ProjB(); var projC = ProjC();
        bool bSame = projB.eq(projA.view(s, layers, heads, hd).permute(1, 2, 0, 3)).all().item<bool>();
        bool cSame = projC.eq(projA.view(s, layers, heads, hd).permute(1, 2, 0, 3)).all().item<bool>();
        double cDiff = (projC - projA.view(s, layers, heads, hd).permute(1, 2, 0, 3)).abs().max().item<float>();
        bool attB = Enumerable.Range(0, layers).All(i => nn.functional.scaled_dot_product_attention(q, SliceBC(projB, i), SliceBC(projB, i), mask).eq(outsA[i]).all().item<bool>());
        void RunA() { using var rs = NewDisposeScope(); var p = ProjA(); for (int i = 0; i < layers; i++) nn.functional.scaled_dot_product_attention(q, SliceA(p, i), SliceA(p, i), mask); }
        void RunB() { using var rs = NewDisposeScope(); var p = ProjB(); for (int i = 0; i < layers; i++) nn.functional.scaled_dot_product_attention(q, SliceBC(p, i), SliceBC(p, i), mask); }
        void RunC() { using var rs = NewDisposeScope(); var p = ProjC(); for (int i = 0; i < layers; i++) nn.functional.scaled_dot_product_attention(q, SliceBC(p, i), SliceBC(p, i), mask); }
        void ProjOnlyA() { using var rs = NewDisposeScope(); ProjA(); }
        void ProjOnlyB() { using var rs = NewDisposeScope(); ProjB(); }
        void ProjOnlyC() { using var rs = NewDisposeScope(); ProjC(); }
        foreach (int t in new[] { 1, threads }.Distinct())
        {
            torch.set_num_threads(t);
            var runs = new (string Name, Action Run)[] { ("a strided slices", RunA), ("b permute copy", RunB), ("c matmul head-major", RunC),
                ("projection only a", ProjOnlyA), ("projection only b", ProjOnlyB), ("projection only c", ProjOnlyC) };
            foreach (var (_, r) in runs) r();
            var best = runs.ToDictionary(x => x.Name, _ => (Wall: 9e9, Cpu: 9e9));
            string before = Load();
            for (int r = 0; r < 3; r++)
                foreach (var (name, run) in runs)
                {
                    var tm = Time(1, run);
                    best[name] = (Math.Min(best[name].Wall, tm.Wall), Math.Min(best[name].Cpu, tm.Cpu));
                }
            Console.WriteLine($"## k (=v here) projection of 6 layers + 6 SDPAs, threads {t}, best of 3 in turns (loadavg {before} → {Load()}): " +
                              string.Join("; ", runs.Select(x => $"{x.Name} {best[x.Name].Wall * 1e3:F1} ms wall / {best[x.Name].Cpu * 1e3:F1} CPU")) +
                              $"; b projection bit-identical {bSame}, b attention bit-identical {attB}; c projection bit-identical {cSame} (max |Δ| {cDiff:G3})");
        }
    }
}
