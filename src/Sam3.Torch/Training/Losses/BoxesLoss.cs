using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Training.Matching;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Losses;

/// <summary>loss_fns.Boxes: L1 of matched cxcywh boxes and 1 - GIoU of their xyxy boxes, each summed / num_boxes.</summary>
internal sealed class BoxesLoss : FindLoss
{
    private readonly BoxesLossConfig _cfg;
    public BoxesLoss(BoxesLossConfig cfg) { _cfg = cfg; }

    public override IReadOnlyList<(string Key, double Weight)> WeightDict => [("loss_bbox", _cfg.LossBbox), ("loss_giou", _cfg.LossGiou)];
    public override bool ComputeAux => _cfg.ComputeAux;

    public override LossValues GetLoss(PredictionSet outputs, FindTargets targets, MatchIndices indices, Tensor numBoxes)
    {
        var b = TensorIndex.Tensor(indices.BatchIdx);
        var s = TensorIndex.Tensor(indices.SrcIdx);
        var t = indices.TgtIdx;
        var srcBoxes = outputs.PredBoxes.index(b, s);
        var srcBoxesXyxy = outputs.PredBoxesXyxy.index(b, s);
        var targetBoxes = targets.Boxes.to(srcBoxes.device).index_select(0, t);
        var targetBoxesXyxy = targets.BoxesXyxy.to(srcBoxes.device).index_select(0, t);
        var l1 = nn.functional.l1_loss(srcBoxes, targetBoxes, reduction: nn.Reduction.None);
        var giou = 1 - BoxOps.DiagGeneralizedBoxIou(srcBoxesXyxy, targetBoxesXyxy);
        var v = new LossValues();
        v["loss_bbox"] = l1.sum() / numBoxes;
        v["loss_giou"] = giou.sum() / numBoxes;
        return v;
    }
}
