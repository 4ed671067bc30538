using static TorchSharp.torch;

namespace Sam3.Torch.Training;

/// <summary>
/// The outputs of one decoder layer in training mode, keyed as upstream's output dict: o2o predictions over the first
/// Q queries and, with DAC, the one-to-many (<c>_o2m</c>) predictions over the repeated Q queries.
/// </summary>
internal sealed class FindOutputs : IDisposable
{
    /// <summary>[B, Q, 1] classification logits (<c>pred_logits</c>).</summary>
    public required Tensor PredLogits { get; init; }
    /// <summary>[B, Q, 4] normalised cxcywh (<c>pred_boxes</c>).</summary>
    public required Tensor PredBoxes { get; init; }
    /// <summary>[B, Q, 4] normalised xyxy (<c>pred_boxes_xyxy</c>).</summary>
    public required Tensor PredBoxesXyxy { get; init; }
    /// <summary>[B, 1] presence logit of the decoder (<c>presence_logit_dec</c>), null without a presence token.</summary>
    public Tensor? PresenceLogitDec { get; init; }

    public Tensor? PredLogitsO2m { get; init; }
    public Tensor? PredBoxesO2m { get; init; }
    public Tensor? PredBoxesXyxyO2m { get; init; }

    /// <summary>[B, Q, H, W] mask logits (final layer only).</summary>
    public Tensor? PredMasks { get; init; }
    public Tensor? PredMasksO2m { get; init; }
    /// <summary>[B, 1, H, W] semantic segmentation logits (final layer only).</summary>
    public Tensor? SemanticSeg { get; init; }

    public void Dispose()
    {
        PredLogits.Dispose(); PredBoxes.Dispose(); PredBoxesXyxy.Dispose(); PresenceLogitDec?.Dispose();
        PredLogitsO2m?.Dispose(); PredBoxesO2m?.Dispose(); PredBoxesXyxyO2m?.Dispose();
        PredMasks?.Dispose(); PredMasksO2m?.Dispose(); SemanticSeg?.Dispose();
    }
}

/// <summary>A training-mode forward: the final decoder layer's outputs and the aux outputs of layers 0..L-2.</summary>
internal sealed class TrainingForwardOutputs : IDisposable
{
    public required FindOutputs Final { get; init; }
    public required IReadOnlyList<FindOutputs> Aux { get; init; }

    public void Dispose()
    {
        Final.Dispose();
        foreach (var a in Aux) a.Dispose();
    }
}
