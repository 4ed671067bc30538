using System.Diagnostics;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Text;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Lora;
using Sam3.Torch.Training.Losses;
using Sam3.Torch.Training.Optim;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Loop;

/// <summary>
/// The fine-tuning loop of upstream's <c>Trainer.train_epoch</c> / <c>_run_step</c> for the SAM3 detector: epochs over a
/// seeded <see cref="TrainingDataset"/>, optimizer steps of <see cref="TrainerOptions.AccumulationSteps"/> micro-batches
/// (gradients set to none first, as upstream), the schedulers at upstream's <c>where</c> and <c>step</c>
/// (<c>exact_epoch = epoch + data_iter / iters_per_epoch</c>, <c>where = exact_epoch / max_epochs</c>,
/// <c>step = int(exact_epoch · iters_per_epoch)</c>), clipping and AdamW (<see cref="TrainingOptimizer"/>).
/// <para>
/// The position is the optimizer step count alone: the data set draws its randomness from (seed, epoch, index) and the
/// epoch order from (seed, epoch), so step <c>s</c> always sees the same micro-batches; a checkpoint
/// (<see cref="TrainerCheckpoint"/>) holds the weights, the AdamW state, the step and the torch generator state, and a
/// resumed trainer continues exactly.
/// </para>
/// </summary>
internal sealed class Sam3Trainer
{
    private readonly List<int[]>?[] _epochBatches;
    private CsvLossLog? _csv;
    private TensorBoardLog? _tensorBoard;

    /// <summary>LoRA adapters trained with (or instead of) the model's own parameters; null without LoRA.</summary>
    public LoraModel? Lora { get; }

    public Sam3ImageModel Model { get; }
    public ClipBpeTokenizer Tokenizer { get; }
    public TrainingDataset Data { get; }
    public TrainingConfig Config { get; }
    public TrainerOptions Options { get; }
    public TrainingOptimizer Optimizer { get; }
    public Sam3LossWrapper Loss { get; }

    /// <summary>Names of the trained parameters (requires_grad after the freezing hook), in model order.</summary>
    public IReadOnlyList<string> TrainedParameters { get; }

    public int MicroBatchesPerEpoch { get; }
    /// <summary>Optimizer steps per epoch (upstream's <c>iters_per_epoch</c>).</summary>
    public int StepsPerEpoch { get; }
    public int TotalSteps { get; }

    /// <summary>Optimizer steps done so far (the next step's index).</summary>
    public int Step { get; private set; }

    /// <summary>True once every step of the schedule is done.</summary>
    public bool Finished => Step >= TotalSteps;

    /// <param name="lora">Adapters attached to <paramref name="model"/> (<see cref="LoraModel.Attach"/>): their parameters are
    /// trained too, each in the optimizer group of the weight it adapts; checkpoints hold them (lora.safetensors).</param>
    public Sam3Trainer(Sam3ImageModel model, ClipBpeTokenizer tokenizer, TrainingDataset data, TrainingConfig config, TrainerOptions options,
        LoraModel? lora = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Model = model;
        Tokenizer = tokenizer;
        Data = data;
        Config = config;
        Options = options;

        TrainingMode.Apply(model, options.ModelOptions);
        if (options.Freeze is { } preset) ParameterFreezing.Apply(model, preset, options.ExtraFrozen);
        if (options.Trainable is { } trainable)
            foreach (var (name, p) in model.named_parameters()) p.requires_grad = trainable(name);
        Lora = lora;
        var loraParams = lora is null ? [] : LoraTraining.OptimizerEntries(model, lora);
        TrainedParameters = model.named_parameters().Where(x => x.parameter.requires_grad).Select(x => x.name)
            .Concat(loraParams.Select(x => x.Name)).ToList();
        if (TrainedParameters.Count == 0)
        {
            string setting = options.Trainable is not null ? nameof(TrainerOptions.Trainable)
                : options.ExtraFrozen is { Count: > 0 } ? nameof(TrainerOptions.ExtraFrozen) : nameof(TrainerOptions.Freeze);
            throw new ArgumentException($"the freezing settings (Freeze {options.Freeze?.ToString() ?? "null"}, ExtraFrozen " +
                                        $"[{string.Join(", ", options.ExtraFrozen ?? [])}]{(options.Trainable is null ? "" : ", Trainable")}) " +
                                        "leave no parameter to train", $"{nameof(options)}.{setting}");
        }

        MicroBatchesPerEpoch = data.EpochBatches(0, options.BatchSize, options.Shuffle, options.DropLast).Count;
        StepsPerEpoch = MicroBatchesPerEpoch / options.AccumulationSteps;
        if (StepsPerEpoch == 0)
            throw new ArgumentException($"{data.Count} datapoints in batches of {options.BatchSize} give {MicroBatchesPerEpoch} micro-batches, " +
                                        $"fewer than the {options.AccumulationSteps} of one optimizer step",
                $"{nameof(options)}.{(MicroBatchesPerEpoch == 0 ? nameof(TrainerOptions.BatchSize) : nameof(TrainerOptions.AccumulationSteps))}");
        TotalSteps = checked(StepsPerEpoch * options.Epochs);
        _epochBatches = new List<int[]>?[options.Epochs];

        Loss = new Sam3LossWrapper(config);
        // Groups over every parameter, as upstream builds them from the whole model: a frozen parameter never gets a
        // gradient, and AdamW / the clipper skip a parameter without one (no decay, no state), so it stays untouched.
        Optimizer = new TrainingOptimizer(model, config, extra: loraParams);
        torch.random.manual_seed(options.TorchSeed);
    }

    /// <summary>
    /// Runs optimizer steps until the schedule ends, <paramref name="maxSteps"/> steps were done in this call, or
    /// <paramref name="cancellation"/> is signalled (checked between steps: the current step always completes).
    /// Returns the number of steps done.
    /// </summary>
    public int Run(IProgress<TrainerStepReport>? progress = null, CancellationToken cancellation = default, int? maxSteps = null)
    {
        if (maxSteps is < 0) throw new ArgumentOutOfRangeException(nameof(maxSteps), maxSteps, "must not be negative");
        AttachCsv();
        var clock = Stopwatch.StartNew();
        int done = 0;
        while (!Finished && (maxSteps is null || done < maxSteps) && !cancellation.IsCancellationRequested)
        {
            var report = RunStep(done + 1, clock);
            done++;
            _csv?.Append(report);
            _tensorBoard?.Append(report, Optimizer.Groups);
            progress?.Report(report);
        }
        return done;
    }

    private TrainerStepReport RunStep(int stepsThisRun, Stopwatch clock)
    {
        int epoch = Step / StepsPerEpoch, dataIter = Step % StepsPerEpoch;
        var batches = _epochBatches[epoch] ??= Data.EpochBatches(epoch, Options.BatchSize, Options.Shuffle, Options.DropLast).ToList();
        int n = Options.AccumulationSteps;
        double scale = Options.ScaleAccumulatedLoss ? 1.0 / n : 1.0;

        Model.zero_grad(); // upstream: optim.zero_grad(set_to_none=True) at the start of every step
        ZeroLoraGrad();
        var sums = new List<KeyValuePair<string, double>>();
        double coreSum = 0;
        for (int k = 0; k < n; k++)
        {
            using var scope = NewDisposeScope();
            using var batch = Data.GetBatch(batches[dataIter * n + k], epoch);
            using var outputs = Sam3TrainingForward.Forward(Model, Tokenizer, batch);
            var loss = Loss.Compute(outputs, batch.Targets);
            double core = loss.CoreLoss.item<float>();
            if (!double.IsFinite(core))
                throw new Sam3Exception($"the loss is {core} at step {Step} (epoch {epoch}, micro-batch {k}); training stopped");
            (n > 1 && scale != 1.0 ? loss.CoreLoss * scale : loss.CoreLoss).backward();
            coreSum += core;
            int i = 0;
            foreach (var (key, value) in loss.Values.Items)
            {
                if (value.numel() != 1) continue;
                double v = value.item<float>();
                if (k == 0) sums.Add(new(key, v));
                else if (i < sums.Count && sums[i].Key == key) sums[i] = new(key, sums[i].Value + v);
                else throw new Sam3Exception($"loss term '{key}' of micro-batch {k} is not in the first micro-batch's terms");
                i++;
            }
        }

        // upstream: exact_epoch = epoch + data_iter / iters_per_epoch; where = exact_epoch / max_epochs;
        // step_schedulers(where, step=int(exact_epoch * iters_per_epoch)) — the float round trip reproduced as written
        double exactEpoch = epoch + (double)dataIter / StepsPerEpoch;
        double where = exactEpoch / Options.Epochs;
        int schedulerStep = (int)(exactEpoch * StepsPerEpoch);
        double gradNorm = double.NaN;
        using (var scope = NewDisposeScope())
        {
            var clip = Optimizer.Step(schedulerStep, where);
            if (clip is { } c) gradNorm = c.TotalNorm.item<float>();
        }
        Model.zero_grad(); // frees the gradients between steps (the next step starts from none anyway)
        ZeroLoraGrad();
        Step++;

        double elapsed = clock.Elapsed.TotalSeconds;
        return new TrainerStepReport(Step, TotalSteps, epoch, where, coreSum / n,
            sums.Select(p => new KeyValuePair<string, double>(p.Key, p.Value / n)).ToList(), gradNorm,
            elapsed > 0 ? stepsThisRun / elapsed : 0);
    }

    /// <summary>Writes a checkpoint of the current state to <paramref name="directory"/> (atomically, see <see cref="TrainerCheckpoint"/>).</summary>
    public void SaveCheckpoint(string directory) => TrainerCheckpoint.Save(this, directory);

    /// <summary>
    /// Restores the weights, the AdamW state, the step and the torch generator state from a checkpoint written by
    /// <see cref="SaveCheckpoint"/> with the same data set size, batch settings and epochs.
    /// </summary>
    /// <remarks>The CSV log (when set) loses the rows of steps after the checkpoint's (those of a killed run that the
    /// resumed run does again) and any partly written last line; the TensorBoard log gets a new events file that starts
    /// with a restart marker at the next step (<see cref="TensorBoardLog"/>), so TensorBoard drops the killed run's
    /// events of those steps.</remarks>
    public void Resume(string directory)
    {
        TrainerCheckpoint.Restore(this, directory);
        if (Options.CsvLogPath is { } csv) CsvLossLog.TruncateAfter(csv, Step);
    }

    private void ZeroLoraGrad()
    {
        if (Lora is null) return;
        foreach (var (_, p) in Lora.Parameters())
            if (p.grad is { } g) { p.grad = null; g.Dispose(); }
    }

    internal void SetStep(int step)
    {
        if (step < 0 || step > TotalSteps) throw new Sam3CheckpointException($"checkpoint step {step} is outside this schedule's 0..{TotalSteps}");
        Step = step;
    }

    private void AttachCsv()
    {
        _csv ??= Options.CsvLogPath is { } p ? new CsvLossLog(p) : null;
        // the session's START event at the first step it logs: TensorBoard drops what a killed session logged from there on
        _tensorBoard ??= Options.TensorBoardDirectory is { } d ? new TensorBoardLog(d, sessionStartStep: Step + 1) : null;
    }
}
