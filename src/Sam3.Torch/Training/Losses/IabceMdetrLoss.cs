using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Training.Matching;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Losses;

/// <summary>
/// loss_fns.IABCEMdetr (image-level classification of the queries): BCE with soft IoU-aware positive targets
/// <c>clamp(p^alpha·IoU^(1-alpha), 0.01)</c> weighted by pos_weight, negatives weighted by <c>p^gamma</c>, rows of
/// queries without a visible target zeroed (with presence), mean over B·Q (or sum / (pad_n_queries·B) when Q is smaller);
/// the presence loss is focal(alpha 0.5, gamma 0) of <c>presence_logit_dec</c> against "has a target", summed / B.
/// Also the logged metrics ce_f1 (binary F1 at 0.5) and presence_dec_acc. Video-grounding options are not ported.
/// </summary>
internal sealed class IabceMdetrLoss : FindLoss
{
    private readonly IabceLossConfig _cfg;
    public IabceMdetrLoss(IabceLossConfig cfg)
    {
        if (cfg.PadScalePos != 1.0 && cfg.PadNQueries is null)
            throw new ArgumentException("pad_scale_pos needs pad_n_queries", nameof(cfg));
        _cfg = cfg;
    }

    public override IReadOnlyList<(string Key, double Weight)> WeightDict => [("loss_ce", _cfg.LossCe), ("presence_loss", _cfg.PresenceLoss)];
    public override bool ComputeAux => _cfg.ComputeAux;

    public override LossValues GetLoss(PredictionSet outputs, FindTargets targets, MatchIndices indices, Tensor numBoxes)
    {
        var c = _cfg;
        if (outputs.PredLogits.dim() <= 2 || outputs.PredLogits.shape[^1] != 1)
            throw new ArgumentException($"pred_logits must be [B,Q,1], got [{string.Join(",", outputs.PredLogits.shape)}]", nameof(outputs));
        var srcLogits = outputs.PredLogits.squeeze(-1);
        var prob = srcLogits.sigmoid();
        var device = srcLogits.device;
        var b = TensorIndex.Tensor(indices.BatchIdx);
        var s = TensorIndex.Tensor(indices.SrcIdx);

        Tensor targetClasses, positiveTargetClasses;
        using (no_grad())
        {
            targetClasses = zeros(srcLogits.shape, ScalarType.Float32, device: device);
            targetClasses.index_put_(tensor(1f, device: device), b, s);
            var srcBoxesXyxy = outputs.PredBoxesXyxy.index(b, s);
            var targetBoxes = targets.BoxesXyxy.to(device).index_select(0, indices.TgtIdx);
            var iou = BoxOps.DiagBoxIou(srcBoxesXyxy, targetBoxes);
            var t = prob.index(b, s).pow(c.Alpha) * iou.pow(1 - c.Alpha);
            t = t.clamp(min: 0.01).detach();
            positiveTargetClasses = targetClasses.clone();
            positiveTargetClasses.index_put_(t, b, s);
        }

        Tensor lossBce = c.PosFocal
            ? SigmoidFocalLoss.Elementwise(srcLogits.contiguous(), positiveTargetClasses, 0.5, c.Gamma)
            : nn.functional.binary_cross_entropy_with_logits(srcLogits, positiveTargetClasses, reduction: nn.Reduction.None);
        lossBce = lossBce * targetClasses * c.PosWeight;
        long q = lossBce.shape[1];
        if (c.PadNQueries is int pad0 && q < pad0) lossBce = lossBce * c.PadScalePos;
        lossBce = lossBce + nn.functional.binary_cross_entropy_with_logits(srcLogits, targetClasses, reduction: nn.Reduction.None)
            * (1 - targetClasses) * prob.pow(c.Gamma);

        var presenceLoss = tensor(0f, device: device);
        var presenceDecAcc = tensor(0f, device: device);
        if (c.UsePresence)
        {
            var ids = targets.ObjectIdsPadded.to(device);
            var boxes = targets.BoxesPadded.to(device);
            var visible = ids.ge(0).logical_and(boxes[TensorIndex.Ellipsis, 2].gt(0)).logical_and(boxes[TensorIndex.Ellipsis, 3].gt(0));
            var keepLoss = visible.sum(-1)[TensorIndex.Ellipsis, TensorIndex.None].ne(0).to(ScalarType.Float32);
            lossBce = lossBce * keepLoss;
            if (outputs.PresenceLogitDec is not null)
            {
                var presenceLogits = outputs.PresenceLogitDec.view_as(keepLoss);
                long bs = presenceLogits.shape[0];
                presenceLoss = SigmoidFocalLoss.Elementwise(presenceLogits, keepLoss, c.PresenceAlpha, c.PresenceGamma).sum()
                    / (bs * presenceLogits.shape[1]);
                using (no_grad())
                {
                    var pred = presenceLogits.sigmoid().gt(0.5).to(ScalarType.Float32);
                    presenceDecAcc = pred.eq(keepLoss).to(ScalarType.Float32).mean();
                }
            }
        }

        if (c.WeakLoss)
        {
            var isEx = targets.IsExhaustive.to(device);
            if (isEx.dim() != 1 || isEx.shape[0] != lossBce.shape[0])
                throw new ArgumentException("is_exhaustive must be [B]", nameof(targets));
            var lossMask = isEx.logical_not().view(-1, 1).expand_as(lossBce).logical_and(targetClasses.lt(0.5)).logical_not();
            lossBce = (lossBce * lossMask.to(ScalarType.Float32)).sum() / (lossMask.sum() + 1e-6);
        }
        else if (c.PadNQueries is not int pad || q >= pad)
            lossBce = lossBce.mean();
        else
            lossBce = lossBce.sum() / (pad * lossBce.shape[0]);

        Tensor f1;
        using (no_grad()) f1 = BinaryF1(srcLogits.sigmoid().flatten(), targetClasses.flatten());

        var v = new LossValues();
        v["loss_ce"] = lossBce;
        v["ce_f1"] = f1;
        v["presence_loss"] = presenceLoss;
        v["presence_dec_acc"] = presenceDecAcc;
        return v;
    }

    /// <summary>torchmetrics binary f1_score at threshold 0.5: 2TP / (2TP + FP + FN), 0 when undefined.</summary>
    public static Tensor BinaryF1(Tensor probs, Tensor targets)
    {
        var p = probs.gt(0.5);
        var t = targets.to(ScalarType.Int64).to(ScalarType.Bool);
        double tp = p.logical_and(t).sum().item<long>();
        double fp = p.logical_and(t.logical_not()).sum().item<long>();
        double fn = p.logical_not().logical_and(t).sum().item<long>();
        double den = 2 * tp + fp + fn;
        return tensor((float)(den > 0 ? 2 * tp / den : 0.0), device: probs.device);
    }
}
