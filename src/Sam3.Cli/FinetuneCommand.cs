using System.Globalization;
using Sam3.Torch;
using Sam3.Torch.Loading;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Loop;
using Sam3.Torch.Training.Lora;

namespace Sam3.Cli;

/// <summary>
/// <c>sam3 finetune</c>: fine-tunes the detector on a Roboflow-layout COCO folder (<c>DATA/train/_annotations.coco.json</c>)
/// with <see cref="Sam3Trainer"/>. Writes OUT/checkpoint/ (weights in the released layout + optimizer + trainer state) after
/// every epoch and when stopped with Ctrl-C, OUT/losses.csv (one row per step) and OUT/model.safetensors at the end; a
/// second run with the same OUT resumes from OUT/checkpoint exactly.
/// </summary>
internal static class FinetuneCommand
{
    public static int RunWithConsoleCancel(CliArgs args, CliContext context)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler handler = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += handler;
        try { return Run(args, context, cts.Token); }
        finally { Console.CancelKeyPress -= handler; }
    }

    public static int Run(CliArgs a, CliContext c, CancellationToken cancellation)
    {
        string checkpoint = a.Required("checkpoint"), data = a.Required("data"), outDir = a.Required("out");
        int epochs = Int(a, "epochs", 1), batch = Int(a, "batch", 1), accum = Int(a, "accum", 1), seed = Int(a, "seed", 0, min: 0);
        var defaults = TrainingConfig.Default;
        double lrScale = a.Double("lr", defaults.Optimizer.LrScale);
        if (lrScale <= 0) throw new UsageException($"--lr expects a positive number, got {lrScale}");
        var freeze = ParseFreeze(a.Value("freeze") ?? "none");
        var loraOptions = a.Value("lora") is { } loraSpec ? ParseLora(loraSpec) : null;
        if (loraOptions is not null && a.Value("freeze") is { } fz && fz != "none")
            throw new UsageException($"--lora trains the adapters alone (the base weights are frozen); --freeze {fz} does not apply");
        bool tensorBoard = (a.Value("tensorboard") ?? "on") switch
        {
            "on" => true, "off" => false,
            var v => throw new UsageException($"--tensorboard expects on|off, got '{v}'"),
        };
        if (!CocoDataset.HasSplit(data, "train")) throw new UsageException($"--data {data}: no train/{CocoDataset.RoboflowAnnotationFile}");
        string? evalSplit = FinetuneEvaluation.ResolveSplit(data, a.Value("eval-split"));

        var configOption = a.Value("config");
        var files = ModelFolder.Locate(checkpoint, new Sam3ModelOptions
        {
            Config = configOption is null ? null : SegmentCommand.ResolveConfig(configOption),
            TokenizerPath = a.Value("vocab"),
        });
        Directory.CreateDirectory(outDir);
        using var runLock = RunLock.ForFolder(outDir); // a second finetune onto the same OUT fails at once (its save recovery would clean this run's temporaries)
        var baseline = evalSplit is null ? null : FinetuneEvaluation.Baseline(outDir, files.CheckpointPath, files, data, evalSplit, c.Stderr);
        if (cancellation.IsCancellationRequested) return 130;

        var tokenizer = ModelFolder.LoadTokenizer(files.TokenizerPath, files.Config);
        string final = Path.Combine(outDir, "model.safetensors");
        int finalStep;
        using (var model = Sam3ModelLoader.LoadImageModel(files.CheckpointPath, files.Config, new Sam3LoadOptions { EnableInstInteractivity = false }))
        {
            var dataset = new TrainingDataset(CocoDataset.Open(data, "train"),
                TransformPipelines.Train(new TrainTransformConfig
                {
                    // upstream's random resize range (multiples of 32 from 480 to the resolution); a model whose resolution
                    // leaves no such size (the tiny one, 336) trains at its own size
                    Resolution = files.Config.ImageSize,
                    ResizeSizes = TrainTransformConfig.RandomResizeScales(files.Config.ImageSize, new TrainTransformConfig().MinResizeSize, false).Count == 0
                        ? [files.Config.ImageSize] : null,
                }), seed);
            var config = defaults with { Optimizer = defaults.Optimizer with { LrScale = lrScale } };
            var options = new TrainerOptions
            {
                Epochs = epochs, BatchSize = batch, AccumulationSteps = accum, TorchSeed = seed,
                Freeze = loraOptions is null ? freeze : null,
                CsvLogPath = Path.Combine(outDir, "losses.csv"),
                TensorBoardDirectory = tensorBoard ? Path.Combine(outDir, "tensorboard") : null,
                SourceCheckpoint = files.CheckpointPath,
            };
            using var lora = loraOptions is null ? null : LoraModel.Attach(model, loraOptions);
            var trainer = new Sam3Trainer(model, tokenizer, dataset, config, options, lora);
            string ckpt = Path.Combine(outDir, "checkpoint");
            TrainerCheckpoint.RecoverInterrupted(ckpt);
            if (File.Exists(Path.Combine(ckpt, TrainerCheckpoint.StateFile)))
            {
                trainer.Resume(ckpt);
                c.Stderr.WriteLine($"resumed from {ckpt} at step {trainer.Step} of {trainer.TotalSteps}");
            }
            c.Stderr.WriteLine($"{dataset.Count} datapoints, {trainer.StepsPerEpoch} steps per epoch, {trainer.TrainedParameters.Count} trained tensors" +
                               (lora is null ? "" : $" ({lora.Adapters.Count} LoRA adapters)"));

            using (var progress = CliProgress.Start(c, "finetune", trainer.TotalSteps, "steps", trainer.Step))
            {
                while (!trainer.Finished && !cancellation.IsCancellationRequested)
                {
                    int toEpochEnd = trainer.StepsPerEpoch - trainer.Step % trainer.StepsPerEpoch;
                    trainer.Run(new StepProgress(r => progress.Report(r.Step,
                        string.Format(CultureInfo.InvariantCulture, "loss {0:F4}, {1:F2} steps/s, ETA {2:hh\\:mm\\:ss}", r.CoreLoss, r.StepsPerSecond, r.Eta))),
                        cancellation, toEpochEnd);
                    trainer.SaveCheckpoint(ckpt);
                }
                if (trainer.Finished) progress.Complete();
            }
            if (!trainer.Finished)
            {
                c.Stderr.WriteLine($"stopped at step {trainer.Step} of {trainer.TotalSteps}; checkpoint in {ckpt} (run again to resume)");
                return 130;
            }
            if (lora is not null)
            {
                string adapters = Path.Combine(outDir, TrainerCheckpoint.LoraFile);
                lora.Save(adapters);
                c.Stdout.WriteLine($"LoRA adapters: {adapters}");
                lora.MergeIntoBase();
            }
            TrainerCheckpoint.WriteModel(model, final, files.CheckpointPath);
            finalStep = trainer.Step;
        }
        c.Stdout.WriteLine($"fine-tuned model: {final}");

        if (baseline is not null && evalSplit is not null)
        {
            c.Stderr.WriteLine($"evaluating the fine-tuned model on {evalSplit}");
            var after = FinetuneEvaluation.Evaluate(final, files, data, evalSplit, c.Stderr);
            var board = tensorBoard ? new TensorBoardLog(Path.Combine(outDir, "tensorboard")) : null;
            var (table, _) = FinetuneEvaluation.Summarise(outDir, evalSplit, baseline, after, board, finalStep);
            c.Stdout.Write(table);
        }
        return 0;
    }

    /// <summary><c>part[:rank[:alpha]]</c>, comma-separated; parts attention and mlp (<see cref="LoraPart"/>); rank 8 and alpha 16 by default.</summary>
    internal static LoraOptions ParseLora(string spec)
    {
        var parts = new List<LoraPart>();
        foreach (var item in spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var f = item.Split(':');
            int rank = 8;
            double alpha = 16;
            if (f.Length > 3 || (f.Length > 1 && (!int.TryParse(f[1], NumberStyles.None, CultureInfo.InvariantCulture, out rank) || rank < 1))
                || (f.Length > 2 && (!double.TryParse(f[2], NumberStyles.Float, CultureInfo.InvariantCulture, out alpha) || !(alpha > 0))))
                throw new UsageException($"--lora expects part[:rank[:alpha]] items (rank ≥ 1, alpha > 0), got '{item}'");
            parts.Add(f[0] switch
            {
                "attention" => LoraPart.Attention(rank, alpha),
                "mlp" => LoraPart.Mlp(rank, alpha),
                _ => throw new UsageException($"--lora part must be attention or mlp, got '{f[0]}'"),
            });
            if (parts.Count(p => p.Name == parts[^1].Name) > 1) throw new UsageException($"--lora names '{f[0]}' twice");
        }
        if (parts.Count == 0) throw new UsageException("--lora expects at least one part (attention, mlp)");
        return new LoraOptions { Parts = parts };
    }

    private static FreezePreset ParseFreeze(string value) => value switch
    {
        "none" => FreezePreset.None,
        "vision" => FreezePreset.VisionEncoder,
        "text" => FreezePreset.TextEncoder,
        "backbones" => FreezePreset.AllBackbones,
        "heads-only" => FreezePreset.AllButHeads,
        _ => throw new UsageException($"--freeze expects none|vision|text|backbones|heads-only, got '{value}'"),
    };

    private static int Int(CliArgs a, string name, int defaultValue, int min = 1)
    {
        string? v = a.Value(name);
        if (v is null) return defaultValue;
        if (!int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int x) || x < min)
            throw new UsageException($"--{name} expects an integer ≥ {min}, got '{v}'");
        return x;
    }

    private sealed class StepProgress(Action<TrainerStepReport> report) : IProgress<TrainerStepReport>
    {
        public void Report(TrainerStepReport value) => report(value);
    }
}
