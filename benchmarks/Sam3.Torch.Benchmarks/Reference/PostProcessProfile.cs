using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sam3.Torch.Processing;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks.Reference;

/// <summary>
/// <c>reference post [--k 1,5,20,50,200] [--height 1200] [--width 1800] [--low 288] [--threads 2] [--chunk-elements N]
/// [--out JSON]</c>: the mask post-processing of K kept detections op by op, without a model (smooth random low-resolution
/// logits of the full model's mask size), all in this process so that every row runs under the same load:
/// <list type="bullet">
/// <item>the path before this change (<c>interpolate → sigmoid_ → gt(0.5) → cpu().contiguous()</c> per chunk, then each
///   mask's bytes copied into a fresh managed array), op by op, with minor page faults;</item>
/// <item>the path of the public results now (<see cref="MaskUpsampler.MasksInto"/>: interpolate, then the exact logit
///   comparison written straight into uninitialised managed arrays), and its compact (RLE) form;</item>
/// <item>floors: the interpolation alone, and a memcpy of K·H·W bytes into fresh arrays.</item>
/// </list>
/// Checks that the new masks equal the old ones byte for byte. CPU seconds are process user+sys.
/// </summary>
internal static class PostProcessProfile
{
    public const string Mode = "post";

    public static int Run(Dictionary<string, string> o)
    {
        int threads = o.TryGetValue("threads", out var t) ? int.Parse(t, CultureInfo.InvariantCulture) : 2;
        torch.set_num_threads(threads);
        int height = Int(o, "height", 1200), width = Int(o, "width", 1800), lowSize = Int(o, "low", 288);
        long chunkElements = o.TryGetValue("chunk-elements", out var ce) ? long.Parse(ce, CultureInfo.InvariantCulture) : MaskUpsampler.DefaultChunkElements;
        int[] ks = (o.TryGetValue("k", out var kk) ? kk : "1,5,20,50,200").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        long pixels = (long)height * width;
        long perChunk = Math.Max(1, chunkElements / pixels);
        if (o.TryGetValue("diagnose", out var dg) && dg == "true")
        {
            foreach (var line in BilinearThreshold.Diagnose()) Console.WriteLine(line);
            return 0;
        }
        Console.WriteLine($"fused upsampling + threshold: {(BilinearThreshold.Variant is { } v ? v.ToString() : "not available (LibTorch's interpolate is used)")}");
        Console.WriteLine($"post-processing of K masks {lowSize}x{lowSize} -> {width}x{height}, {threads} threads, chunk {perChunk} masks ({chunkElements} floats); uptime: {Uptime()}");
        Console.WriteLine("| K | old: interpolate | sigmoid_ | gt | cpu().contiguous() | copy to arrays | old total | new (MasksInto) | new, RLE | LibTorch interpolate + logit compare | floor: interpolate | floor: memcpy K·H·W | old/new | equal |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        var rows = new JsonArray();
        using var inference = torch.inference_mode();
        torch.manual_seed(1234);
        foreach (int k in ks)
        {
            using var scope = NewDisposeScope();
            // smooth blobs of both signs, like a segmentation head's logits (about a fifth of the pixels positive)
            var coarse = torch.randn(k, 1, lowSize / 16, lowSize / 16) * 6 - 3;
            var low = nn.functional.interpolate(coarse, [lowSize, lowSize], mode: InterpolationMode.Bilinear, align_corners: false).squeeze(1).contiguous();

            // ---- the previous path, op by op
            var ops = new Dictionary<string, Measure>();
            var oldArrays = new byte[k][];
            Collect();
            var oldTotal = Measure.Of(() =>
            {
                for (long start = 0; start < k; start += perChunk)
                {
                    using var cs = NewDisposeScope();
                    long end = Math.Min(k, start + perChunk);
                    var chunkLow = low.slice(0, start, end, 1).unsqueeze(1);
                    var up = Add(ops, "interpolate", () => nn.functional.interpolate(chunkLow, [height, width], mode: InterpolationMode.Bilinear, align_corners: false));
                    Add(ops, "sigmoid_", () => up.sigmoid_());
                    var gt = Add(ops, "gt", () => up.gt(0.5).squeeze(1));
                    var cpu = Add(ops, "cpu_contiguous", () => gt.cpu().contiguous());
                    Add(ops, "copy", () =>
                    {
                        var all = cpu.bytes;
                        for (int j = 0; j < cpu.shape[0]; j++) oldArrays[start + j] = all.Slice((int)(j * pixels), (int)pixels).ToArray();
                        return 0;
                    });
                }
                return 0;
            }).M;

            // ---- the path of the public results now
            Collect();
            var newArrays = new byte[k][];
            var (_, fresh) = Measure.Of(() =>
            {
                MaskUpsampler.MasksInto(low, height, width, 0.5, chunkElements, _ => GC.AllocateUninitializedArray<byte>((int)pixels), (i, a) => newArrays[i] = a);
                return 0;
            });
            bool equal = Enumerable.Range(0, k).All(i => oldArrays[i].AsSpan().SequenceEqual(newArrays[i]));
            newArrays = new byte[k][];
            Collect();
            var (_, chunked) = Measure.Of(() =>
            {
                MaskUpsampler.MasksInto(low, height, width, 0.5, chunkElements, _ => GC.AllocateUninitializedArray<byte>((int)pixels), (i, a) => newArrays[i] = a,
                    allowFused: false);
                return 0;
            });
            equal &= Enumerable.Range(0, k).All(i => oldArrays[i].AsSpan().SequenceEqual(newArrays[i]));
            newArrays = null!;
            Collect();
            var rles = new CocoRle[k];
            var scratch = new byte[Math.Min(k, perChunk)][];
            var (_, rle) = Measure.Of(() =>
            {
                MaskUpsampler.MasksInto(low, height, width, 0.5, chunkElements, i => scratch[i % scratch.Length] ??= GC.AllocateUninitializedArray<byte>((int)pixels),
                    (i, a) => rles[i] = CocoRle.Encode(a.AsSpan(0, (int)pixels), height, width));
                return 0;
            });
            bool rleEqual = Enumerable.Range(0, k).All(i => rles[i].Decode().AsSpan().SequenceEqual(oldArrays[i]));

            // ---- floors
            Collect();
            var (_, interp) = Measure.Of(() =>
            {
                for (long start = 0; start < k; start += perChunk)
                {
                    using var cs = NewDisposeScope();
                    nn.functional.interpolate(low.slice(0, start, Math.Min(k, start + perChunk), 1).unsqueeze(1), [height, width],
                        mode: InterpolationMode.Bilinear, align_corners: false);
                }
                return 0;
            });
            Collect();
            var copies = new byte[k][];
            var (_, memcpy) = Measure.Of(() =>
            {
                for (int i = 0; i < k; i++)
                {
                    copies[i] = GC.AllocateUninitializedArray<byte>((int)pixels);
                    oldArrays[i].AsSpan().CopyTo(copies[i]);
                }
                return 0;
            });
            copies = null!;
            oldArrays = null!;
            Collect();

            string F(Measure m) => $"{m.Wall:F3} s ({m.Cpu:F2} CPU, {m.Faults / 1000}k flt)";
            Console.WriteLine($"| {k} | {F(ops["interpolate"])} | {F(ops["sigmoid_"])} | {F(ops["gt"])} | {F(ops["cpu_contiguous"])} | {F(ops["copy"])} | " +
                              $"{F(oldTotal)} | {F(fresh)} | {F(rle)} | {F(chunked)} | {F(interp)} | {F(memcpy)} | {oldTotal.Wall / fresh.Wall:F2}x wall, {oldTotal.Cpu / Math.Max(1e-9, fresh.Cpu):F2}x CPU | {equal && rleEqual} |");
            var row = new JsonObject { ["k"] = k, ["equal"] = equal, ["rle_equal"] = rleEqual };
            foreach (var (name, m) in ops) row["old_" + name] = m.ToJson();
            row["old_total"] = oldTotal.ToJson(); row["new"] = fresh.ToJson(); row["new_rle"] = rle.ToJson(); row["new_unfused"] = chunked.ToJson();
            row["floor_interpolate"] = interp.ToJson(); row["floor_memcpy"] = memcpy.ToJson();
            rows.Add(row);
            if (!equal || !rleEqual) Console.Error.WriteLine($"K={k}: the new masks differ from the old ones");
        }
        Console.WriteLine($"uptime after: {Uptime()}");
        if (o.TryGetValue("out", out var outPath))
            File.WriteAllText(outPath, new JsonObject { ["threads"] = threads, ["height"] = height, ["width"] = width, ["low"] = lowSize, ["chunk_elements"] = chunkElements, ["rows"] = rows }
                .ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return rows.All(r => r!["equal"]!.GetValue<bool>() && r["rle_equal"]!.GetValue<bool>()) ? 0 : 1;
    }

    private static int Int(Dictionary<string, string> o, string name, int dflt)
        => o.TryGetValue(name, out var v) ? int.Parse(v, CultureInfo.InvariantCulture) : dflt;

    private static void Collect()
    {
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
    }

    internal static string Uptime()
    {
        try { return File.ReadAllText("/proc/loadavg").Trim(); } catch (IOException) { return "?"; }
    }

    private static T Add<T>(Dictionary<string, Measure> ops, string name, Func<T> f)
    {
        var (r, m) = Measure.Of(f);
        ops[name] = ops.TryGetValue(name, out var prev) ? prev + m : m;
        return r;
    }

    /// <summary>Wall seconds, process CPU seconds and minor page faults of one piece of work.</summary>
    internal readonly record struct Measure(double Wall, double Cpu, long Faults)
    {
        public static Measure operator +(Measure a, Measure b) => new(a.Wall + b.Wall, a.Cpu + b.Cpu, a.Faults + b.Faults);

        public static (T Result, Measure M) Of<T>(Func<T> f)
        {
            long f0 = MinorFaults();
            var c0 = CpuSeconds();
            var sw = Stopwatch.StartNew();
            var r = f();
            sw.Stop();
            return (r, new Measure(sw.Elapsed.TotalSeconds, CpuSeconds() - c0, MinorFaults() - f0));
        }

        public JsonObject ToJson() => new() { ["wall_s"] = Wall, ["cpu_s"] = Cpu, ["minor_faults"] = Faults };

        private static double CpuSeconds()
        {
            using var p = Process.GetCurrentProcess();
            return p.TotalProcessorTime.TotalSeconds;
        }

        /// <summary>minflt of /proc/self/stat (field 10), 0 where unavailable.</summary>
        internal static long MinorFaults()
        {
            try
            {
                var stat = File.ReadAllText("/proc/self/stat");
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                return long.Parse(fields[7], CultureInfo.InvariantCulture);
            }
            catch (IOException) { return 0; }
        }
    }
}
