using static TorchSharp.torch;

namespace Sam3.Torch.Training.Losses;

/// <summary>
/// The predictions one loss call sees: either the one-to-one outputs of a decoder layer or its one-to-many (DAC)
/// outputs, i.e. upstream's <c>{k[:-4]: v for k in out if k.endswith("_o2m")}</c> (no presence logit there).
/// </summary>
internal sealed record PredictionSet(Tensor PredLogits, Tensor PredBoxes, Tensor PredBoxesXyxy, Tensor? PresenceLogitDec, Tensor? PredMasks)
{
    public static PredictionSet O2o(FindOutputs o) => new(o.PredLogits, o.PredBoxes, o.PredBoxesXyxy, o.PresenceLogitDec, o.PredMasks);

    /// <summary>The one-to-many predictions, or null when the outputs have none.</summary>
    public static PredictionSet? O2m(FindOutputs o) =>
        o.PredLogitsO2m is null ? null
            : new(o.PredLogitsO2m, o.PredBoxesO2m ?? throw new ArgumentException("pred_logits_o2m without pred_boxes_o2m"),
                o.PredBoxesXyxyO2m ?? throw new ArgumentException("pred_logits_o2m without pred_boxes_xyxy_o2m"), null, o.PredMasksO2m);
}
