namespace Sam3.Torch.Training;

/// <summary>What a <see cref="Sam3FineTuning.Run"/> call ended with.</summary>
public sealed record Sam3FineTuningResult
{
    /// <summary>
    /// True when the schedule ran to its end and the result was written; false when the call stopped early (cancelled,
    /// or <see cref="Sam3FineTuningOptions.MaxSteps"/> reached): the state is then in <see cref="CheckpointDirectory"/>
    /// and a call with the same options continues from it.
    /// </summary>
    public bool Completed { get; init; }

    /// <summary>Optimizer steps done so far (earlier runs of this output folder included).</summary>
    public int Step { get; init; }

    /// <summary>Optimizer steps of the whole schedule.</summary>
    public int TotalSteps { get; init; }

    /// <summary>The training checkpoint (<c>OUT/checkpoint</c>); null when the call stopped before its first step was saved.</summary>
    public string? CheckpointDirectory { get; init; }

    /// <summary>The fine-tuned model (<c>OUT/model.safetensors</c>, released key layout, LoRA merged); loads with <see cref="Sam3Model.Load"/>. Null unless <see cref="Completed"/>.</summary>
    public string? ModelPath { get; init; }

    /// <summary>The LoRA adapters alone (<c>OUT/lora.safetensors</c>; see <see cref="Sam3LoraAdapters"/>). Null without LoRA or unless <see cref="Completed"/>.</summary>
    public string? LoraPath { get; init; }

    /// <summary>Mean total loss of every epoch with logged steps, in order (from <c>losses.csv</c>, so earlier runs of this output folder count).</summary>
    public IReadOnlyList<double> EpochLosses { get; init; } = [];

    /// <summary>The split of the before/after evaluation; null when none ran.</summary>
    public string? EvaluationSplit { get; init; }

    /// <summary>The zero-shot model (the source checkpoint) on <see cref="EvaluationSplit"/>; null without evaluation.</summary>
    public Sam3EvaluationResult? Baseline { get; init; }

    /// <summary>The fine-tuned model on <see cref="EvaluationSplit"/>; null without evaluation or unless <see cref="Completed"/>.</summary>
    public Sam3EvaluationResult? FineTuned { get; init; }

    /// <summary>True when box AP, mask AP, box cgF1 or mask cgF1 of <see cref="FineTuned"/> fell below <see cref="Baseline"/>'s.</summary>
    public bool IsWorseThanBaseline { get; init; }

    /// <summary>The before/after table <c>sam3 finetune</c> prints (null without both evaluations).</summary>
    internal string? SummaryTable { get; init; }
}
