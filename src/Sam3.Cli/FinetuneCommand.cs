using Sam3.Torch.IO;
using System.Globalization;
using Sam3.Torch;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Lora;

namespace Sam3.Cli;

/// <summary>
/// <c>sam3 finetune</c>: fine-tunes the detector on a Roboflow-layout COCO folder (<c>DATA/train/_annotations.coco.json</c>)
/// through the public <see cref="Sam3FineTuning"/> API (this command parses the options, draws the progress bar and
/// holds the run lock). Writes OUT/checkpoint/ (weights in the released layout + optimizer + trainer state) after
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
        var loraOptions = a.Value("lora") is { } loraSpec ? ToPublic(ParseLora(loraSpec)) : null;
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
        var options = new Sam3FineTuningOptions
        {
            CheckpointPath = checkpoint, DataDirectory = data, OutputDirectory = outDir,
            Config = configOption is null ? null : SegmentCommand.ResolveConfig(configOption),
            TokenizerPath = a.Value("vocab"),
            Freeze = freeze, Lora = loraOptions,
            Epochs = epochs, BatchSize = batch, AccumulationSteps = accum, Seed = seed, LearningRateScale = lrScale,
            Evaluate = evalSplit is not null, EvaluationSplit = evalSplit, TensorBoard = tensorBoard,
        };

        CliProgress? progress = null;
        try
        {
            var hooks = new FineTuningHooks
            {
                Log = c.Stderr,
                // a second finetune onto the same OUT fails at once (its save recovery would clean this run's temporaries)
                LockOutput = RunLock.ForFolder,
                TrainingStarted = (done, total) => progress = CliProgress.Start(c, "finetune", total, "steps", done),
                TrainingEnded = finished =>
                {
                    if (finished) progress?.Complete();
                    progress?.Dispose();
                    progress = null;
                },
                ModelWritten = (model, lora) =>
                {
                    if (lora is not null) c.Stdout.WriteLine($"LoRA adapters: {lora}");
                    c.Stdout.WriteLine($"fine-tuned model: {model}");
                },
            };
            var result = Sam3FineTuning.Run(options, new StepProgress(r => progress?.Report(r.Step,
                string.Format(CultureInfo.InvariantCulture, "loss {0:F4}, {1:F2} steps/s, ETA {2:hh\\:mm\\:ss}", r.Loss, r.StepsPerSecond, r.Eta))),
                cancellation, hooks);
            if (!result.Completed) return 130;
            if (result.SummaryTable is { } table) c.Stdout.Write(table);
            return 0;
        }
        finally
        {
            progress?.Dispose();
        }
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

    /// <summary>The parsed parts as the public API's (attention / mlp, rank, alpha).</summary>
    private static IReadOnlyList<Sam3LoraPart> ToPublic(LoraOptions o) => o.Parts.Select(p => new Sam3LoraPart
    {
        Target = p.Name == "mlp" ? Sam3LoraTarget.Mlp : Sam3LoraTarget.Attention, Rank = p.Rank, Alpha = p.Alpha,
    }).ToList();

    private static Sam3FreezePreset ParseFreeze(string value) => value switch
    {
        "none" => Sam3FreezePreset.None,
        "vision" => Sam3FreezePreset.VisionEncoder,
        "text" => Sam3FreezePreset.TextEncoder,
        "backbones" => Sam3FreezePreset.AllBackbones,
        "heads-only" => Sam3FreezePreset.AllButHeads,
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

    private sealed class StepProgress(Action<Sam3TrainingProgress> report) : IProgress<Sam3TrainingProgress>
    {
        public void Report(Sam3TrainingProgress value) => report(value);
    }
}
