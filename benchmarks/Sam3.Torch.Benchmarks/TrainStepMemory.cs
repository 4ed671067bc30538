using System.Diagnostics;
using System.Text.Json.Nodes;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Loading;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Processing;
using Sam3.Torch.Text;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Loop;
using Sam3.Torch.Training.Lora;
using Sam3.Torch.Visualization;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// Time and resident memory of fine-tuning steps, phase by phase (issue 13 items 6 and 9), outside BenchmarkDotNet:
/// <code>
/// dotnet Sam3.Torch.Benchmarks.dll trainstep (--checkpoint sam3.pt | --random) [--config full|tiny] [--image-size N]
///     [--freeze none|vision|text|backbones|heads-only] [--lora attention,mlp] [--deterministic] [--act-checkpoint]
///     [--steps N] [--data DIR] [--trainer]
/// </code>
/// Each step is cut into phases: data (one collated batch), the vision backbone, the text encoder, the heads (fusion
/// encoder, decoder, segmentation head), the loss (matchers and every loss term), the backward and the optimizer step
/// (clipping + AdamW). Before a phase the kernel's peak counter is reset (<c>/proc/self/clear_refs</c> ← 5), after it
/// <c>VmHWM</c> is that phase's peak and <c>VmRSS</c>/<c>RssAnon</c> what it left resident; "live" is TorchSharp's count of
/// undisposed tensors. <c>--random</c> builds the model with its random initialisation instead of loading a checkpoint, so
/// <c>--image-size</c> can lower the resolution (the released checkpoint's global RoPE tables are tied to 1008 px; the
/// ViT grid must stay a multiple of the 24-token window, e.g. 672). <c>--trainer</c> runs whole steps through
/// <see cref="Sam3Trainer"/> (the code path of <c>sam3 finetune</c>) instead of the phase-by-phase replica. Without
/// <c>--data</c> a two-image synthetic COCO folder is written to a temporary folder. Linux only. Threads: SAM3_BENCH_THREADS.
/// </summary>
internal static class TrainStepMemory
{
    public const string Verb = "trainstep";

    public static int Run(string[] args)
    {
        string? Opt(string name)
        {
            int i = Array.IndexOf(args, "--" + name);
            return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
        }
        bool random = args.Contains("--random");
        string? checkpointPath = Opt("checkpoint");
        if (!random && checkpointPath is null) throw new ArgumentException("trainstep: --checkpoint PATH or --random is required");
        var cfg = Sam3Config.Resolve(Opt("config") ?? "full");
        if (Opt("image-size") is { } sizeText)
        {
            int s = int.Parse(sizeText, System.Globalization.CultureInfo.InvariantCulture);
            cfg = cfg with
            {
                ImageSize = s, Vit = cfg.Vit with { ImgSize = s }, Decoder = cfg.Decoder with { Resolution = s },
            };
        }
        var freeze = (Opt("freeze") ?? "backbones") switch
        {
            "none" => FreezePreset.None,
            "vision" => FreezePreset.VisionEncoder,
            "text" => FreezePreset.TextEncoder,
            "backbones" => FreezePreset.AllBackbones,
            "heads-only" => FreezePreset.AllButHeads,
            var v => throw new ArgumentException($"trainstep: unknown --freeze {v}"),
        };
        LoraOptions? loraOptions = Opt("lora") is { } loraSpec
            ? new LoraOptions
            {
                Parts = loraSpec.Split(',').Select(p => p switch
                {
                    "attention" => LoraPart.Attention(),
                    "mlp" => LoraPart.Mlp(),
                    _ => throw new ArgumentException($"trainstep: --lora part must be attention or mlp, got {p}"),
                }).ToList(),
            }
            : null;
        int steps = int.Parse(Opt("steps") ?? "1", System.Globalization.CultureInfo.InvariantCulture);
        bool useTrainer = args.Contains("--trainer");
        var modelOptions = new TrainingModelOptions
        {
            Deterministic = args.Contains("--deterministic"),
            ActivationCheckpointing = args.Contains("--act-checkpoint"),
            DropPathRate = args.Contains("--act-checkpoint") ? 0.0 : null,
        };
        string vocab = Opt("vocab") ?? BenchEnvironment.BpeVocabulary();
        int threads = BenchEnvironment.PinThreads();
        string data = Opt("data") ?? WriteSyntheticCoco(Path.Combine(Path.GetTempPath(), $"sam3-trainstep-{Environment.ProcessId}"));

        Console.WriteLine($"trainstep: {(random ? "random init" : checkpointPath)}, config {cfg.Name} at {cfg.ImageSize} px, freeze {freeze}" +
                          $"{(loraOptions is null ? "" : ", LoRA " + string.Join("+", loraOptions.Parts.Select(p => p.Name)))}, " +
                          $"dropout {(modelOptions.Deterministic ? "off" : "on")}{(modelOptions.ActivationCheckpointing ? ", ViT activation checkpointing" : "")}, " +
                          $"{threads} threads, data {data}");
        Console.WriteLine($"{"phase",-28} {"wall s",8} {"cpu s",8} {"peak GB",8} {"rss GB",8} {"anon GB",8} {"live",7}");
        var clock = new PhaseClock();
        clock.Mark("start");

        var tokenizer = ClipBpeTokenizer.FromBpeGz(vocab);
        Sam3ImageModel model = random
            ? new Sam3ImageModel(cfg, enableInstInteractivity: false)
            : Sam3ModelLoader.LoadImageModel(checkpointPath!, cfg, new Sam3LoadOptions { EnableInstInteractivity = false });
        clock.Mark("load model");

        var dataset = new TrainingDataset(CocoDataset.Open(data, "train"),
            TransformPipelines.Train(new TrainTransformConfig
            {
                Resolution = cfg.ImageSize,
                ResizeSizes = TrainTransformConfig.RandomResizeScales(cfg.ImageSize, new TrainTransformConfig().MinResizeSize, false).Count == 0
                    ? [cfg.ImageSize] : null,
            }), seed: 0);
        using var lora = loraOptions is null ? null : LoraModel.Attach(model, loraOptions);
        var trainer = new Sam3Trainer(model, tokenizer, dataset, TrainingConfig.Default, new TrainerOptions
        {
            Epochs = Math.Max(1, steps), BatchSize = 1, Freeze = lora is null ? freeze : null, ModelOptions = modelOptions,
        }, lora);
        var summary = ParameterFreezing.Summarize(model);
        Console.WriteLine($"  {summary}; {trainer.TrainedParameters.Count} trained tensors" +
                          (lora is null ? "" : $" ({lora.Adapters.Count} LoRA adapters)"));
        clock.Mark("trainer (freeze, optimizer)");

        for (int step = 0; step < steps; step++)
        {
            if (useTrainer)
            {
                trainer.Run(maxSteps: 1);
                clock.Mark($"step {step + 1} (Sam3Trainer)");
                continue;
            }
            model.zero_grad();
            using var scope = NewDisposeScope();
            var batches = dataset.EpochBatches(0, 1);
            using var batch = dataset.GetBatch(batches[step % batches.Count], 0);
            clock.Mark($"step {step + 1}: data");
            using var outputs = Sam3TrainingForward.Forward(model, tokenizer, batch, (name, _) =>
            {
                if (name == "vision_features") clock.Mark("  vision backbone");
                else if (name == "text.language_features") clock.Mark("  text encoder");
                else if (name == "encoder_hidden_states") clock.Mark("  fusion encoder");
                else if (name == "decoder.hs") clock.Mark("  decoder");
            });
            clock.Mark("  heads (scoring, seg head)");
            var loss = trainer.Loss.Compute(outputs, batch.Targets);
            double core = loss.CoreLoss.item<float>();
            clock.Mark($"  loss ({core:F3})");
            loss.CoreLoss.backward();
            clock.Mark("  backward");
            trainer.Optimizer.Step(0, 0.0);
            clock.Mark("  optimizer step");
            model.zero_grad();
            scope.Dispose();
            clock.Mark("  end of step (freed)");
        }
        model.Dispose();
        if (Opt("data") is null) Directory.Delete(data, recursive: true);
        return 0;
    }

    /// <summary>Two 640×480 images with a filled circle / square each, categories "circle" and "square" (RLE masks).</summary>
    private static string WriteSyntheticCoco(string root)
    {
        string train = Path.Combine(root, "train");
        Directory.CreateDirectory(train);
        var images = new JsonArray();
        var annotations = new JsonArray();
        (bool circle, double cx, double cy, double r)[] shapes = [(true, 300, 200, 120), (false, 350, 260, 150)];
        const int w = 640, h = 480;
        for (int i = 0; i < shapes.Length; i++)
        {
            var (circle, cx, cy, radius) = shapes[i];
            var rgb = new byte[w * h * 3];
            var mask = new byte[w * h];
            int x0 = int.MaxValue, y0 = int.MaxValue, x1 = -1, y1 = -1;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                {
                    double u = x + 0.5 - cx, v = y + 0.5 - cy;
                    bool inside = circle ? u * u + v * v <= radius * radius : Math.Abs(u) <= radius && Math.Abs(v) <= radius;
                    byte c = inside ? (byte)220 : (byte)40;
                    rgb[(y * w + x) * 3] = c; rgb[(y * w + x) * 3 + 1] = (byte)(255 - c); rgb[(y * w + x) * 3 + 2] = 90;
                    if (!inside) continue;
                    mask[y * w + x] = 1;
                    x0 = Math.Min(x0, x); y0 = Math.Min(y0, y); x1 = Math.Max(x1, x); y1 = Math.Max(y1, y);
                }
            string file = $"shape{i}.png";
            ImageWriter.Save(new RgbImage(w, h, rgb), Path.Combine(train, file));
            images.Add(new JsonObject { ["id"] = i + 1, ["file_name"] = file, ["width"] = w, ["height"] = h });
            annotations.Add(new JsonObject
            {
                ["id"] = i + 1, ["image_id"] = i + 1, ["category_id"] = circle ? 1 : 2,
                ["bbox"] = new JsonArray(x0, y0, x1 - x0 + 1, y1 - y0 + 1), ["area"] = mask.Sum(b => (int)b), ["iscrowd"] = 0,
                ["segmentation"] = new JsonObject { ["size"] = new JsonArray(h, w), ["counts"] = CocoRle.Encode(mask, h, w).Counts },
            });
        }
        var coco = new JsonObject
        {
            ["images"] = images, ["annotations"] = annotations,
            ["categories"] = new JsonArray(new JsonObject { ["id"] = 1, ["name"] = "circle" }, new JsonObject { ["id"] = 2, ["name"] = "square" }),
        };
        File.WriteAllText(Path.Combine(train, CocoDataset.RoboflowAnnotationFile), coco.ToJsonString());
        return root;
    }

    /// <summary>Wall and CPU time, peak and resident memory since the previous mark.</summary>
    private sealed class PhaseClock
    {
        private readonly Stopwatch _wall = Stopwatch.StartNew();
        private TimeSpan _cpu = Process.GetCurrentProcess().TotalProcessorTime;

        public void Mark(string name)
        {
            double wall = _wall.Elapsed.TotalSeconds;
            var cpuNow = Process.GetCurrentProcess().TotalProcessorTime;
            var st = MemoryStages.Status();
            long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
            Console.WriteLine($"{name,-28} {wall,8:F1} {(cpuNow - _cpu).TotalSeconds,8:F1} {st["VmHWM"] / 1e9,8:F3} {st["VmRSS"] / 1e9,8:F3} {st["RssAnon"] / 1e9,8:F3} {live,7}");
            File.WriteAllText("/proc/self/clear_refs", "5");
            _cpu = Process.GetCurrentProcess().TotalProcessorTime;
            _wall.Restart();
        }
    }
}
