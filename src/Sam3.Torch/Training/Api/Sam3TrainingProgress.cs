namespace Sam3.Torch.Training;

/// <summary>What <see cref="Sam3FineTuning.Run"/> reports after each optimizer step.</summary>
public sealed record Sam3TrainingProgress
{
    /// <summary>Optimizer steps done, counting those of earlier (resumed) runs; 1 after the first.</summary>
    public int Step { get; init; }

    /// <summary>Optimizer steps of the whole schedule.</summary>
    public int TotalSteps { get; init; }

    /// <summary>Epoch of this step (0-based).</summary>
    public int Epoch { get; init; }

    /// <summary>The total (weighted) loss of this step, averaged over its micro-batches.</summary>
    public double Loss { get; init; }

    /// <summary>Every loss term of this step by upstream's name (<c>loss_bbox</c>, <c>loss_giou</c>, <c>loss_mask</c>, ...), averaged over its micro-batches.</summary>
    public IReadOnlyDictionary<string, double> LossTerms { get; init; } = new Dictionary<string, double>();

    /// <summary>Gradient norm before clipping (NaN without clipping).</summary>
    public double GradientNorm { get; init; }

    /// <summary>Optimizer steps per second since this call started.</summary>
    public double StepsPerSecond { get; init; }

    /// <summary>Estimated time to the end of the schedule at the current rate.</summary>
    public TimeSpan Eta { get; init; }
}
