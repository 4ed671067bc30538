namespace Sam3.Torch.Training.Loop;

/// <summary>
/// The loop settings of <see cref="Sam3Trainer"/> (upstream's <c>trainer.max_epochs</c>, the loader's batch size and
/// shuffle, <c>gradient_accumulation_steps</c>), the freezing hook and the log file. The losses, optimizer groups and
/// schedule come from the <see cref="TrainingConfig"/> given to the trainer.
/// </summary>
internal sealed record TrainerOptions
{
    /// <summary>Epochs of the schedule (<c>max_epochs</c>): <c>where</c> runs from 0 to 1 over all of them.</summary>
    public int Epochs { get; init; } = 1;

    /// <summary>Images per micro-batch (the loader's <c>batch_size</c>).</summary>
    public int BatchSize { get; init; } = 1;

    /// <summary>Micro-batches per optimizer step (<c>gradient_accumulation_steps</c>).</summary>
    public int AccumulationSteps { get; init; } = 1;

    /// <summary>
    /// Scale each micro-batch loss by 1/<see cref="AccumulationSteps"/> so the accumulated gradient is the mean over the
    /// micro-batches (default). Upstream's <c>Trainer._run_step</c> does not scale (its gradients are the sum); set false to
    /// reproduce that. With N = 1 both are identical.
    /// </summary>
    public bool ScaleAccumulatedLoss { get; init; } = true;

    /// <summary>Shuffle the datapoints every epoch (seeded by the data set's seed and the epoch).</summary>
    public bool Shuffle { get; init; } = true;

    /// <summary>Drop the last incomplete batch of an epoch (upstream's train loader: <c>drop_last=True</c>).</summary>
    public bool DropLast { get; init; } = true;

    /// <summary>Freeze preset applied when the trainer is built; null leaves <c>requires_grad</c> as the caller set it (e.g. after attaching LoRA).</summary>
    public FreezePreset? Freeze { get; init; } = FreezePreset.None;

    /// <summary>Further frozen parameter patterns (<see cref="ParameterFreezing.Matches"/> syntax).</summary>
    public IReadOnlyList<string>? ExtraFrozen { get; init; }

    /// <summary>Optional final say per parameter name (true = trainable), applied after the preset.</summary>
    public Func<string, bool>? Trainable { get; init; }

    /// <summary>Dropout / drop-path settings of the training-mode model (<see cref="TrainingModelOptions.DeterministicRun"/> turns them off).</summary>
    public TrainingModelOptions ModelOptions { get; init; } = TrainingModelOptions.Default;

    /// <summary>Seed of the global torch generator (dropout / drop-path) at the start of a fresh run.</summary>
    public long TorchSeed { get; init; } = 0;

    /// <summary>A CSV file that gets one row of loss terms per optimizer step (created with a header; appended on resume).</summary>
    public string? CsvLogPath { get; init; }

    /// <summary>
    /// A folder for TensorBoard event files (<see cref="TensorBoardLog"/>): every loss term, the gradient norm and each
    /// group's learning rate as scalars per optimizer step; a resumed run marks its restart so TensorBoard shows the steps
    /// it redoes once. Null = none.
    /// </summary>
    public string? TensorBoardDirectory { get; init; }

    /// <summary>
    /// The checkpoint the model was loaded from: every tensor of it the model does not hold (tracker.*, the SAM2 neck) is copied
    /// unchanged into each written model file, so the result keeps the released layout and loads with the tracker and
    /// in the official code. Null = the written files hold the detector alone.
    /// </summary>
    public string? SourceCheckpoint { get; init; }

    private static string Param(string property) => "options." + property;

    public void Validate()
    {
        // ParamName as the trainer's parameter sees it: options.Epochs, ...
        if (Epochs <= 0) throw new ArgumentOutOfRangeException(Param(nameof(Epochs)), Epochs, $"Epochs must be positive, got {Epochs}");
        if (BatchSize <= 0) throw new ArgumentOutOfRangeException(Param(nameof(BatchSize)), BatchSize, $"BatchSize must be positive, got {BatchSize}");
        if (AccumulationSteps <= 0)
            throw new ArgumentOutOfRangeException(Param(nameof(AccumulationSteps)), AccumulationSteps, $"AccumulationSteps must be positive, got {AccumulationSteps}");
    }
}

/// <summary>What <see cref="Sam3Trainer"/> reports after each optimizer step.</summary>
/// <param name="Step">Optimizer steps done (1 after the first).</param>
/// <param name="TotalSteps">Optimizer steps of the whole schedule.</param>
/// <param name="Epoch">Epoch of the step (0-based).</param>
/// <param name="Where">Schedule progress the step used (<c>step / total_steps</c>, before the step).</param>
/// <param name="CoreLoss">The total loss, averaged over the micro-batches.</param>
/// <param name="Losses">Every loss term (scalar entries of the loss wrapper), averaged over the micro-batches.</param>
/// <param name="GradNorm">Gradient norm before clipping (NaN without clipping).</param>
/// <param name="StepsPerSecond">Optimizer steps per second since this run (or resume) started.</param>
internal sealed record TrainerStepReport(int Step, int TotalSteps, int Epoch, double Where, double CoreLoss,
    IReadOnlyList<KeyValuePair<string, double>> Losses, double GradNorm, double StepsPerSecond)
{
    /// <summary>Estimated time left at the current rate.</summary>
    public TimeSpan Eta => StepsPerSecond > 0 ? TimeSpan.FromSeconds((TotalSteps - Step) / StepsPerSecond) : TimeSpan.Zero;
}
