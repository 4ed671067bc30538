using Sam3.Torch.Training.Matching;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Losses;

/// <summary>
/// loss_fns.Masks without point sampling (num_sample_points None, the fine-tuning config): the matched mask logits are
/// upsampled (bilinear, align_corners False) to the target masks' size, invalid masks dropped, then focal loss
/// (sum / (num_boxes·H·W)) and dice loss (sum / num_boxes). Final output only by default (compute_aux False).
/// </summary>
internal sealed class MasksLoss : FindLoss
{
    private readonly MasksLossConfig _cfg;
    public MasksLoss(MasksLossConfig cfg) { _cfg = cfg; }

    public override IReadOnlyList<(string Key, double Weight)> WeightDict => [("loss_mask", _cfg.LossMask), ("loss_dice", _cfg.LossDice)];
    public override bool ComputeAux => _cfg.ComputeAux;
    public override bool AppliesTo(PredictionSet o2m) => o2m.PredMasks is not null;

    public override LossValues GetLoss(PredictionSet outputs, FindTargets targets, MatchIndices indices, Tensor numBoxes)
    {
        var srcAll = outputs.PredMasks ?? throw new ArgumentException("the Masks loss needs pred_masks", nameof(outputs));
        var v = new LossValues();
        var device = srcAll.device;
        if (targets.Segments is null)
        {
            v["loss_mask"] = tensor(0f, device: device);
            v["loss_dice"] = tensor(0f, device: device);
            return v;
        }
        var isValid = targets.IsValidSegment ?? throw new ArgumentException("segments without is_valid_segment", nameof(targets));
        var targetMasks = targets.Segments.to(device).index_select(0, indices.TgtIdx).to(srcAll.dtype);
        var keep = isValid.to(device).index_select(0, indices.TgtIdx);
        var srcMasks = srcAll.index(TensorIndex.Tensor(indices.BatchIdx), TensorIndex.Tensor(indices.SrcIdx));
        srcMasks = srcMasks.index(TensorIndex.Tensor(keep));
        targetMasks = targetMasks.index(TensorIndex.Tensor(keep));

        if (targetMasks.shape[0] == 0 && srcMasks.shape[0] == 0)
        {
            srcMasks = srcMasks.flatten(1);
            targetMasks = targetMasks.reshape(srcMasks.shape);
        }
        else
        {
            if (srcMasks.dim() == 3) srcMasks = srcMasks[.., TensorIndex.None];
            if (srcMasks.dtype == ScalarType.BFloat16) srcMasks = srcMasks.to(ScalarType.Float32);
            srcMasks = nn.functional.interpolate(srcMasks, size: [targetMasks.shape[^2], targetMasks.shape[^1]],
                mode: InterpolationMode.Bilinear, align_corners: false);
            srcMasks = srcMasks[.., 0].flatten(1);
            targetMasks = targetMasks.flatten(1);
        }
        v["loss_mask"] = SigmoidFocalLoss.Reduced(srcMasks, targetMasks, numBoxes, _cfg.FocalAlpha, _cfg.FocalGamma);
        v["loss_dice"] = SigmoidFocalLoss.DicePerRow(srcMasks, targetMasks).sum() / numBoxes;
        return v;
    }
}
