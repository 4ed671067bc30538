using System.Diagnostics;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// The weight-streaming kernel <see cref="SkinnyLinear"/> against LibTorch's <c>linear</c> (issue 15 item 2):
/// <c>heads skinny</c> sweeps the row count M on the text encoder's MLP shapes, <c>heads skinnytext</c> times the
/// full-size text encoder over a prompt's real tokens with the kernel on and off, in turns (run it under the heavy lock).
/// </summary>
internal static partial class HeadsProfile
{
    /// <summary>M = 1…32 rows through c_fc-shaped [4096,1024] and c_proj-shaped [1024,4096] weights, 8 of each (past the caches).</summary>
    private static void SkinnyKernelSweep()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(0);
        const int copies = 8;
        var shapes = new (string Name, int N, int K)[] { ("c_fc [4096,1024]", 4096, 1024), ("c_proj [1024,4096]", 1024, 4096) };
        Console.WriteLine($"## SkinnyLinear ({SkinnyLinear.Best}) vs linear, {copies} weights of each shape in turns, best of 3, loadavg {Load()}");
        foreach (var (name, n, k) in shapes)
        {
            var ws = Enumerable.Range(0, copies).Select(_ => torch.randn(n, k)).ToArray();
            var bs = Enumerable.Range(0, copies).Select(_ => torch.randn(n)).ToArray();
            double bytes = copies * (double)n * k * sizeof(float);
            foreach (int m in new[] { 1, 2, 3, 4, 5, 8, 12, 16, 24, 32 })
            {
                var x = torch.randn(m, k);
                void Lib() { for (int i = 0; i < copies; i++) nn.functional.linear(x, ws[i], bs[i]).Dispose(); }
                void Kernel() { for (int i = 0; i < copies; i++) SkinnyLinear.Linear(x, ws[i], bs[i]).Dispose(); }
                Lib(); Kernel();
                (double W, double C) a = (9e9, 9e9), b = (9e9, 9e9);
                for (int r = 0; r < 3; r++)
                {
                    var ta = Time(1, Lib); var tb = Time(1, Kernel);
                    a = (Math.Min(a.W, ta.Wall), Math.Min(a.C, ta.Cpu)); b = (Math.Min(b.W, tb.Wall), Math.Min(b.C, tb.Cpu));
                }
                using var ya = nn.functional.linear(x, ws[0], bs[0]);
                using var yb = SkinnyLinear.Linear(x, ws[0], bs[0]);
                Console.WriteLine($"# {name} M = {m,2}: linear {a.W * 1e3,6:F2} ms ({bytes / a.W / 1e9,5:F1} GB/s, CPU {a.C * 1e3,6:F2}); " +
                                  $"kernel {b.W * 1e3,6:F2} ms ({bytes / b.W / 1e9,5:F1} GB/s, CPU {b.C * 1e3,6:F2}); kernel/linear {b.W / a.W:F2} wall, {b.C / a.C:F2} CPU; " +
                                  $"max |Δ| {(ya - yb).abs().max().item<float>():G3}");
            }
        }
        Console.WriteLine($"# loadavg {Load()}");
    }

    /// <summary>Full-size random text encoder, "truck" and a 10-word prompt over their real tokens: kernel on/off in turns, best of 3.</summary>
    private static void SkinnyText()
    {
        var cfg = Sam3Config.Full;
        torch.manual_seed(0);
        var sw = Stopwatch.StartNew();
        using var enc = new Modeling.Text.VETextEncoder(cfg);
        enc.eval();
        var tokenizer = Sam3.Torch.Text.ClipBpeTokenizer.FromBpeGz(BenchEnvironment.BpeVocabulary());
        var (readBw, _) = MemoryBandwidth.Measure();
        double weightBytes = MemoryBandwidth.TextWeightBytes(cfg.Text);
        Console.WriteLine($"## text encoder kernel A/B (built in {sw.Elapsed.TotalSeconds:F1} s): read bandwidth {readBw / 1e9:F1} GB/s, " +
                          $"weights {weightBytes / 1e9:F3} GB → floor {weightBytes / readBw:F3} s; loadavg {Load()}");
        foreach (var prompt in new[] { "truck", "a red double-decker bus parked next to the curb" })
        {
            using var scope = NewDisposeScope();
            var (ids, pad) = tokenizer.TokenizeToTensors([prompt]);
            long real = pad.logical_not().sum().item<long>();
            Tensor Run(bool kernel)
            {
                enc.UseSkinnyLinear = kernel;
                try { return enc.forward(ids, pad, skipPaddedPositions: true).LanguageFeatures.MoveToOuterDisposeScope(); }
                finally { enc.UseSkinnyLinear = true; }
            }
            Tensor Once(bool kernel) { using var s = NewDisposeScope(); return Run(kernel).MoveToOuterDisposeScope(); }
            Once(false).Dispose(); Once(true).Dispose();
            (double W, double C) lib = (9e9, 9e9), ker = (9e9, 9e9);
            for (int r = 0; r < 3; r++)
            {
                var a = Time(1, () => Once(false).Dispose());
                var b = Time(1, () => Once(true).Dispose());
                lib = (Math.Min(lib.W, a.Wall), Math.Min(lib.C, a.Cpu)); ker = (Math.Min(ker.W, b.Wall), Math.Min(ker.C, b.Cpu));
            }
            using var fa = Once(false);
            using var fb = Once(true);
            var keep = TensorIndex.Slice(0, real);
            double diff = (fa[keep] - fb[keep]).abs().max().item<float>();
            double rel = diff / fa[keep].abs().max().item<float>();
            Console.WriteLine($"# \"{prompt}\" ({real} tokens): linear {lib.W:F3} s wall / {lib.C:F3} s CPU ({weightBytes / lib.W / 1e9:F1} GB/s); " +
                              $"kernel {ker.W:F3} s / {ker.C:F3} s CPU ({weightBytes / ker.W / 1e9:F1} GB/s, {ker.W / (weightBytes / readBw):F2}× the floor); " +
                              $"ratio {ker.W / lib.W:F2} wall, {ker.C / lib.C:F2} CPU; max |Δ| features {diff:G3} (relative to max |value| {rel:G3}); loadavg {Load()}");
        }
    }
}
