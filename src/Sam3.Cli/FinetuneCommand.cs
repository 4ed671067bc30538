using System.Globalization;
using Sam3.Torch;
using Sam3.Torch.Loading;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Loop;

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
        if (!CocoDataset.HasSplit(data, "train")) throw new UsageException($"--data {data}: no train/{CocoDataset.RoboflowAnnotationFile}");

        var configOption = a.Value("config");
        var files = ModelFolder.Locate(checkpoint, new Sam3ModelOptions
        {
            Config = configOption is null ? null : SegmentCommand.ResolveConfig(configOption),
            TokenizerPath = a.Value("vocab"),
        });
        var tokenizer = ModelFolder.LoadTokenizer(files.TokenizerPath, files.Config);
        using var model = Sam3ModelLoader.LoadImageModel(files.CheckpointPath, files.Config, new Sam3LoadOptions { EnableInstInteractivity = false });
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
        Directory.CreateDirectory(outDir);
        var options = new TrainerOptions
        {
            Epochs = epochs, BatchSize = batch, AccumulationSteps = accum, Freeze = freeze, TorchSeed = seed,
            CsvLogPath = Path.Combine(outDir, "losses.csv"),
        };
        var trainer = new Sam3Trainer(model, tokenizer, dataset, config, options);
        string ckpt = Path.Combine(outDir, "checkpoint");
        if (File.Exists(Path.Combine(ckpt, TrainerCheckpoint.StateFile)))
        {
            trainer.Resume(ckpt);
            c.Stderr.WriteLine($"resumed from {ckpt} at step {trainer.Step} of {trainer.TotalSteps}");
        }
        c.Stderr.WriteLine($"{dataset.Count} datapoints, {trainer.StepsPerEpoch} steps per epoch, {trainer.TrainedParameters.Count} trained tensors");

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
        string final = Path.Combine(outDir, "model.safetensors");
        TrainerCheckpoint.WriteModel(model, final);
        c.Stdout.WriteLine($"fine-tuned model: {final}");
        return 0;
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
