using Sam3.Torch.IO;
using System.Globalization;
using System.Text.Json.Nodes;
using Sam3.Torch.Loading;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Loop;
using Sam3.Torch.Training.Lora;

namespace Sam3.Torch.Training;

/// <summary>
/// Fine-tunes the SAM3 detector on a COCO folder (Roboflow layout) with upstream's fine-tuning recipe: its data
/// pipeline (category names as text queries, negatives, random resize, box noise), matchers and losses, AdamW with
/// per-part learning rates, layer decay, the inverse-square-root schedule and gradient clipping. What
/// <c>sam3 finetune</c> runs.
/// </summary>
/// <remarks>
/// A run is resumable: <c>OUT/checkpoint</c> is written after every epoch and when the call stops early; a call with
/// the same options continues from it and ends exactly where an uninterrupted run ends. The result is written in the
/// released key layout (the source's tracker weights copied unchanged), so it loads with <see cref="Sam3Model.Load"/>
/// and in the official Python code. With evaluation, the zero-shot and the fine-tuned model are evaluated on the
/// validation split so a worse result is seen at once (<see cref="Sam3FineTuningResult.IsWorseThanBaseline"/>).
/// </remarks>
/// <example>
/// <code>
/// using var cts = new CancellationTokenSource();
/// var result = Sam3FineTuning.Run(
///     new Sam3FineTuningOptions { CheckpointPath = "sam3/", DataDirectory = "data/", OutputDirectory = "runs/1", Epochs = 5 },
///     new Progress&lt;Sam3TrainingProgress&gt;(p => Console.WriteLine($"step {p.Step}/{p.TotalSteps}: loss {p.Loss:F4}, ETA {p.Eta}")),
///     cts.Token);
/// if (!result.Completed) Console.WriteLine($"stopped at step {result.Step}; run again to resume");
/// </code>
/// </example>
public static class Sam3FineTuning
{
    /// <summary>The training checkpoint folder inside the output folder.</summary>
    internal const string CheckpointFolder = "checkpoint";
    internal const string ModelFile = "model.safetensors";
    internal const string LossLogFile = "losses.csv";
    internal const string TensorBoardFolder = "tensorboard";

    /// <summary>
    /// Runs (or continues) the fine-tuning described by <paramref name="options"/>: the zero-shot evaluation, the
    /// training steps, the written model and the fine-tuned evaluation.
    /// </summary>
    /// <param name="options">What to train on, what to train, for how long.</param>
    /// <param name="progress">Told after every optimizer step (synchronously on the training thread unless it posts elsewhere, as <see cref="Progress{T}"/> does).</param>
    /// <param name="cancellationToken">
    /// Stops the run between optimizer steps: the state is saved to <c>OUT/checkpoint</c> and the call returns with
    /// <see cref="Sam3FineTuningResult.Completed"/> false (no exception); a later call continues from there.
    /// </param>
    /// <exception cref="ArgumentException">An option is invalid; <see cref="ArgumentException.ParamName"/> names it.</exception>
    /// <exception cref="Sam3CheckpointException">The checkpoint is missing or does not fit, or the checkpoint in the output folder belongs to another schedule.</exception>
    /// <exception cref="Sam3StateException"><see cref="Sam3FineTuningOptions.Resume"/> is false and the output folder holds a checkpoint.</exception>
    /// <exception cref="Sam3Exception">The data cannot be read, or the loss became non-finite.</exception>
    public static Sam3FineTuningResult Run(Sam3FineTuningOptions options, IProgress<Sam3TrainingProgress>? progress = null,
        CancellationToken cancellationToken = default) => Run(options, progress, cancellationToken, new FineTuningHooks());

    /// <summary>The run with the CLI's hooks (log lines, its progress bar, its run lock).</summary>
    internal static Sam3FineTuningResult Run(Sam3FineTuningOptions options, IProgress<Sam3TrainingProgress>? progress,
        CancellationToken cancellation, FineTuningHooks hooks)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(hooks);
        options.Validate();
        var log = hooks.Log;
        string data = options.DataDirectory, outDir = options.OutputDirectory;
        if (!CocoDataset.HasSplit(data, "train"))
            throw new ArgumentException($"DataDirectory {data}: no train/{CocoDataset.RoboflowAnnotationFile}", nameof(Sam3FineTuningOptions.DataDirectory));
        string? evalSplit = options.Evaluate ? FineTuningComparison.ResolveSplit(data, options.EvaluationSplit) : null;

        var files = ModelFolder.Locate(options.CheckpointPath, new Sam3ModelOptions { Config = options.Config, TokenizerPath = options.TokenizerPath });
        Directory.CreateDirectory(outDir);
        // one run per output folder (a second one would clean this run's save temporaries); the CLI passes the same lock
        using var runLock = (hooks.LockOutput ?? RunLock.ForFolder)(outDir);
        string ckpt = Path.Combine(outDir, CheckpointFolder);
        TrainerCheckpoint.RecoverInterrupted(ckpt);
        if (!options.Resume && File.Exists(Path.Combine(ckpt, TrainerCheckpoint.StateFile)))
            throw new Sam3StateException($"{ckpt} holds a training checkpoint and Resume is false: choose another OutputDirectory or delete it");

        JsonObject? baseline = null;
        if (evalSplit is not null)
        {
            try { baseline = FineTuningComparison.Baseline(outDir, files.CheckpointPath, files, data, evalSplit, log, cancellation); }
            catch (OperationCanceledException) when (cancellation.IsCancellationRequested) { }
        }
        string csvPath = Path.Combine(outDir, LossLogFile);
        if (cancellation.IsCancellationRequested)
        {
            var (step, total) = SavedPosition(ckpt);
            return Stopped(step, total, ckpt, csvPath, evalSplit, baseline, data);
        }

        var tokenizer = ModelFolder.LoadTokenizer(files.TokenizerPath, files.Config);
        string final = Path.Combine(outDir, ModelFile);
        string? loraPath = null;
        int finalStep, totalSteps;
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
                }), options.Seed);
            var defaults = TrainingConfig.Default;
            var config = defaults with
            {
                Optimizer = defaults.Optimizer with { LrScale = options.LearningRateScale },
                Schedule = defaults.Schedule with { WarmupSteps = options.WarmupSteps, CooldownSteps = options.CooldownSteps },
            };
            var trainerOptions = new TrainerOptions
            {
                Epochs = options.Epochs, BatchSize = options.BatchSize, AccumulationSteps = options.AccumulationSteps, TorchSeed = options.Seed,
                Freeze = options.Lora is null ? Map(options.Freeze) : null,
                ExtraFrozen = options.Lora is null && options.FrozenModules is { Count: > 0 } f ? f : null,
                CsvLogPath = csvPath,
                TensorBoardDirectory = options.TensorBoard ? Path.Combine(outDir, TensorBoardFolder) : null,
                SourceCheckpoint = files.CheckpointPath,
            };
            using var lora = options.Lora is { } parts ? LoraModel.Attach(model, ToLoraOptions(parts)) : null;
            var trainer = NewTrainer(model, tokenizer, dataset, config, trainerOptions, lora);
            if (File.Exists(Path.Combine(ckpt, TrainerCheckpoint.StateFile)))
            {
                trainer.Resume(ckpt);
                log.WriteLine($"resumed from {ckpt} at step {trainer.Step} of {trainer.TotalSteps}");
            }
            log.WriteLine($"{dataset.Count} datapoints, {trainer.StepsPerEpoch} steps per epoch, {trainer.TrainedParameters.Count} trained tensors" +
                          (lora is null ? "" : $" ({lora.Adapters.Count} LoRA adapters)"));

            hooks.TrainingStarted?.Invoke(trainer.Step, trainer.TotalSteps);
            var reporter = progress is null ? null : new StepReporter(progress);
            int budget = options.MaxSteps ?? int.MaxValue, done = 0;
            while (!trainer.Finished && !cancellation.IsCancellationRequested && done < budget)
            {
                int toEpochEnd = trainer.StepsPerEpoch - trainer.Step % trainer.StepsPerEpoch;
                done += trainer.Run(reporter, cancellation, Math.Min(toEpochEnd, budget - done));
                trainer.SaveCheckpoint(ckpt);
            }
            hooks.TrainingEnded?.Invoke(trainer.Finished);
            if (!trainer.Finished)
            {
                log.WriteLine($"stopped at step {trainer.Step} of {trainer.TotalSteps}; checkpoint in {ckpt} (run again to resume)");
                return Stopped(trainer.Step, trainer.TotalSteps, ckpt, csvPath, evalSplit, baseline, data);
            }
            if (lora is not null)
            {
                loraPath = Path.Combine(outDir, TrainerCheckpoint.LoraFile);
                lora.Save(loraPath);
                lora.MergeIntoBase();
            }
            TrainerCheckpoint.WriteModel(model, final, files.CheckpointPath);
            finalStep = trainer.Step;
            totalSteps = trainer.TotalSteps;
        }
        hooks.ModelWritten?.Invoke(final, loraPath);

        Sam3EvaluationResult? before = null, after = null;
        string? table = null;
        bool worse = false;
        if (baseline is not null && evalSplit is not null)
        {
            log.WriteLine($"evaluating the fine-tuned model on {evalSplit}");
            var afterJson = FineTuningComparison.Evaluate(final, files, data, evalSplit, log);
            var board = options.TensorBoard ? new TensorBoardLog(Path.Combine(outDir, TensorBoardFolder)) : null;
            (table, worse) = FineTuningComparison.Summarise(outDir, evalSplit, baseline, afterJson, board, finalStep);
            before = Public(baseline, evalSplit, data);
            after = Public(afterJson, evalSplit, data);
        }
        return new Sam3FineTuningResult
        {
            Completed = true, Step = finalStep, TotalSteps = totalSteps, CheckpointDirectory = ckpt, ModelPath = final, LoraPath = loraPath,
            EpochLosses = EpochLosses(csvPath), EvaluationSplit = evalSplit, Baseline = before, FineTuned = after,
            IsWorseThanBaseline = worse, SummaryTable = table,
        };
    }

    private static Sam3FineTuningResult Stopped(int step, int totalSteps, string? ckpt, string csvPath, string? evalSplit, JsonObject? baseline, string data) => new()
    {
        Completed = false, Step = step, TotalSteps = totalSteps,
        CheckpointDirectory = ckpt is not null && File.Exists(Path.Combine(ckpt, TrainerCheckpoint.StateFile)) ? ckpt : null,
        EpochLosses = EpochLosses(csvPath), EvaluationSplit = baseline is null ? null : evalSplit,
        Baseline = baseline is not null && evalSplit is not null ? Public(baseline, evalSplit, data) : null,
    };

    /// <summary>(step, total steps) of the checkpoint in <paramref name="ckpt"/>; (0, 0) without one.</summary>
    private static (int Step, int TotalSteps) SavedPosition(string ckpt)
    {
        string path = Path.Combine(ckpt, TrainerCheckpoint.StateFile);
        if (!File.Exists(path)) return (0, 0);
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(path));
            var root = doc.RootElement;
            return (root.TryGetProperty("Step", out var s) && s.TryGetInt32(out int step) ? step : 0,
                root.TryGetProperty("TotalSteps", out var t) && t.TryGetInt32(out int total) ? total : 0);
        }
        catch (System.Text.Json.JsonException) { return (0, 0); }
    }

    private static Sam3EvaluationResult Public(JsonObject report, string split, string data) =>
        FineTuningComparison.FromJson(report, split, Path.GetFullPath(Path.Combine(data, split, CocoDataset.RoboflowAnnotationFile)));

    private static Sam3Trainer NewTrainer(Modeling.Detector.Sam3ImageModel model, Text.ClipBpeTokenizer tokenizer, TrainingDataset dataset,
        TrainingConfig config, TrainerOptions trainerOptions, LoraModel? lora)
    {
        try
        {
            return new Sam3Trainer(model, tokenizer, dataset, config, trainerOptions, lora);
        }
        catch (ArgumentException e) when (e.ParamName == "extraFrozen")
        {
            throw new ArgumentException($"FrozenModules: {e.Message.Split(" (Parameter")[0]}", nameof(Sam3FineTuningOptions.FrozenModules), e);
        }
        catch (ArgumentException e) when (PublicOption(e.ParamName) is { } name)
        {
            // a trainer option error (options.X) names the public option the caller set
            throw new ArgumentException(e.Message.Split(" (Parameter")[0], name, e);
        }
    }

    /// <summary>The <see cref="Sam3FineTuningOptions"/> property behind a <see cref="TrainerOptions"/> error's ParamName (<c>options.X</c>).</summary>
    private static string? PublicOption(string? trainerParam) => trainerParam switch
    {
        "options." + nameof(TrainerOptions.BatchSize) => nameof(Sam3FineTuningOptions.BatchSize),
        "options." + nameof(TrainerOptions.AccumulationSteps) => nameof(Sam3FineTuningOptions.AccumulationSteps),
        "options." + nameof(TrainerOptions.Epochs) => nameof(Sam3FineTuningOptions.Epochs),
        "options." + nameof(TrainerOptions.ExtraFrozen) => nameof(Sam3FineTuningOptions.FrozenModules),
        "options." + nameof(TrainerOptions.Freeze) => nameof(Sam3FineTuningOptions.Freeze),
        _ => null,
    };

    /// <summary>Mean core loss per epoch of losses.csv (columns <c>step,epoch,where,core_loss,…</c>), epochs in order.</summary>
    internal static IReadOnlyList<double> EpochLosses(string csvPath)
    {
        if (!File.Exists(csvPath)) return [];
        var sums = new SortedDictionary<int, (double Sum, int Count)>();
        foreach (var line in File.ReadLines(csvPath).Skip(1))
        {
            var f = line.Split(',');
            if (f.Length < 4 || !int.TryParse(f[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out int epoch)
                || !double.TryParse(f[3], NumberStyles.Float, CultureInfo.InvariantCulture, out double loss)) continue;
            var (s, n) = sums.GetValueOrDefault(epoch);
            sums[epoch] = (s + loss, n + 1);
        }
        return sums.Values.Select(v => v.Sum / v.Count).ToList();
    }

    internal static FreezePreset Map(Sam3FreezePreset preset) => preset switch
    {
        Sam3FreezePreset.None => FreezePreset.None,
        Sam3FreezePreset.VisionEncoder => FreezePreset.VisionEncoder,
        Sam3FreezePreset.TextEncoder => FreezePreset.TextEncoder,
        Sam3FreezePreset.AllBackbones => FreezePreset.AllBackbones,
        Sam3FreezePreset.AllButHeads => FreezePreset.AllButHeads,
        _ => throw new ArgumentOutOfRangeException(nameof(preset), preset, "unknown freeze preset"),
    };

    internal static LoraOptions ToLoraOptions(IReadOnlyList<Sam3LoraPart> parts) => new()
    {
        Parts = parts.Select(p => p.Target switch
        {
            Sam3LoraTarget.Attention => LoraPart.Attention(p.Rank, p.Alpha),
            Sam3LoraTarget.Mlp => LoraPart.Mlp(p.Rank, p.Alpha),
            _ => throw new ArgumentOutOfRangeException(nameof(parts), p.Target, "unknown LoRA target"),
        }).ToList(),
    };

    private sealed class StepReporter(IProgress<Sam3TrainingProgress> target) : IProgress<TrainerStepReport>
    {
        public void Report(TrainerStepReport r) => target.Report(new Sam3TrainingProgress
        {
            Step = r.Step, TotalSteps = r.TotalSteps, Epoch = r.Epoch, Loss = r.CoreLoss,
            LossTerms = r.Losses.ToDictionary(p => p.Key, p => p.Value), GradientNorm = r.GradNorm,
            StepsPerSecond = r.StepsPerSecond, Eta = r.Eta,
        });
    }
}

/// <summary>What the CLI adds to a <see cref="Sam3FineTuning"/> run: its log lines, its progress bar and its run lock.</summary>
internal sealed class FineTuningHooks
{
    /// <summary>Status lines (resume point, data counts, evaluation progress).</summary>
    public TextWriter Log { get; init; } = TextWriter.Null;
    /// <summary>Called with the output folder once it exists, before anything is written there; the result is disposed at the end.</summary>
    public Func<string, IDisposable>? LockOutput { get; init; }
    /// <summary>Called before the first step with (steps already done, total steps).</summary>
    public Action<int, int>? TrainingStarted { get; init; }
    /// <summary>Called when the steps of this call are over, with whether the schedule is finished.</summary>
    public Action<bool>? TrainingEnded { get; init; }
    /// <summary>Called when the result (and the LoRA file, or null) is written, before the final evaluation.</summary>
    public Action<string, string?>? ModelWritten { get; init; }
}
