using static TorchSharp.torch;

namespace Sam3.Torch.Training.Losses;

/// <summary>
/// loss_fns.SemanticSegCriterion: per query, the semantic logits against the union of its instance masks (focal or BCE,
/// plus dice); with a presence head the per-query losses are averaged over queries with a non-empty target only, and the
/// optional presence BCE on the head's presence logit. Also the metrics presence_acc and miou_semantic_seg.
/// </summary>
internal sealed class SemanticSegCriterion
{
    private readonly SemanticSegLossConfig _cfg;
    public SemanticSegCriterion(SemanticSegLossConfig cfg) { _cfg = cfg; }

    public IReadOnlyList<(string Key, double Weight)> WeightDict =>
        [("loss_semantic_seg", _cfg.LossSemanticSeg), ("loss_semantic_presence", _cfg.LossSemanticPresence), ("loss_semantic_dice", _cfg.LossSemanticDice)];

    /// <summary>instance_masks_to_semantic_masks: [B,H,W] union of each query's instance masks ([B,1,1] zeros if none at all, as upstream).</summary>
    public static Tensor InstanceMasksToSemanticMasks(Tensor instanceMasks, Tensor numInstances)
    {
        long[] n = numInstances.cpu().data<long>().ToArray();
        if (n.Sum() == 0) return zeros([n.Length, 1, 1], ScalarType.Bool, device: instanceMasks.device);
        var parts = new List<Tensor>();
        long start = 0;
        foreach (var k in n)
        {
            var m = instanceMasks.narrow(0, start, k);
            parts.Add(k == 0 ? zeros([instanceMasks.shape[1], instanceMasks.shape[2]], ScalarType.Bool, device: instanceMasks.device) : m.any(0));
            start += k;
        }
        return stack(parts, 0);
    }

    /// <summary>segment_miou: mean IoU of binary masks over targets that are non-empty (1 when none is).</summary>
    public static Tensor SegmentMiou(Tensor source, Tensor target)
    {
        var validTargets = target.sum([1, 2]).gt(0).sum();
        if (validTargets.item<long>() == 0) return tensor(1f, device: source.device);
        var s = source.to(ScalarType.Bool);
        var t = target.to(ScalarType.Bool);
        var inter = s.logical_and(t).sum([1, 2]);
        var union = s.logical_or(t).sum([1, 2]);
        var iou = inter / (union + 1e-8);
        return iou.sum() / validTargets;
    }

    /// <param name="semanticSeg">[B,1,h,w] semantic logits.</param>
    /// <param name="presenceLogit">the semantic head's presence logit (needed only with presence_loss).</param>
    public (LossValues Values, Tensor Core) Forward(Tensor semanticSeg, Tensor? presenceLogit, FindTargets targets)
    {
        var c = _cfg;
        var device = semanticSeg.device;
        var outputs = semanticSeg;
        Tensor semanticTargets;
        using (no_grad())
        {
            if (targets.SemanticSegments is not null && targets.SemanticSegments.shape[0] > 0)
            {
                semanticTargets = targets.SemanticSegments.to(device);
                if (c.Downsample)
                    semanticTargets = nn.functional.interpolate(semanticTargets.to(ScalarType.Float32).unsqueeze(1), size: [outputs.shape[^2], outputs.shape[^1]],
                        mode: InterpolationMode.Bilinear, align_corners: false).squeeze(1).to(ScalarType.Bool);
            }
            else
            {
                var masks = targets.Segments ?? throw new ArgumentException("the semantic segmentation loss needs target masks", nameof(targets));
                masks = masks.to(device);
                var segments = c.Downsample
                    ? nn.functional.interpolate(masks.to(ScalarType.Float32).unsqueeze(1), size: [outputs.shape[^2], outputs.shape[^1]],
                        mode: InterpolationMode.Bilinear, align_corners: false).squeeze(1).to(ScalarType.Bool)
                    : masks.to(ScalarType.Bool);
                semanticTargets = InstanceMasksToSemanticMasks(segments, targets.NumBoxes);
            }
        }
        if (!c.Downsample)
            outputs = nn.functional.interpolate(outputs.to(ScalarType.Float32), size: [semanticTargets.shape[^2], semanticTargets.shape[^1]],
                mode: InterpolationMode.Bilinear, align_corners: false);

        long n = semanticTargets.shape[0];
        Tensor loss;
        if (c.Focal)
        {
            var x = outputs.squeeze(1).flatten(-2);
            var y = semanticTargets.to(ScalarType.Float32).flatten(-2);
            loss = c.PresenceHead
                ? SigmoidFocalLoss.Elementwise(x, y, c.FocalAlpha, c.FocalGamma).mean([1])
                : SigmoidFocalLoss.Reduced(x, y, tensor((float)n, device: device), c.FocalAlpha, c.FocalGamma);
        }
        else
        {
            var bce = nn.functional.binary_cross_entropy_with_logits(outputs.squeeze(1), semanticTargets.to(ScalarType.Float32),
                reduction: c.PresenceHead ? nn.Reduction.None : nn.Reduction.Mean);
            loss = c.PresenceHead ? bce.flatten(1).mean([1]) : bce;
        }
        var diceRows = SigmoidFocalLoss.DicePerRow(outputs.squeeze(1).flatten(1), semanticTargets.flatten(1));
        var lossDice = c.PresenceHead ? diceRows : diceRows.sum() / n;

        Tensor miou;
        using (no_grad()) miou = SegmentMiou(outputs.sigmoid().squeeze(1).gt(0.5), semanticTargets);

        var v = new LossValues();
        if (c.PresenceHead)
        {
            var presenceTarget = semanticTargets.flatten(1).any(-1);
            Tensor lossPresence, presenceAcc;
            if (c.PresenceLoss)
            {
                var pl = presenceLogit ?? throw new ArgumentException("presence_loss needs the semantic head's presence logit", nameof(presenceLogit));
                lossPresence = nn.functional.binary_cross_entropy_with_logits(pl.flatten(), presenceTarget.to(ScalarType.Float32));
                using (no_grad()) presenceAcc = pl.flatten().sigmoid().gt(0.5).eq(presenceTarget).to(ScalarType.Float32).mean();
            }
            else
            {
                lossPresence = tensor(0f, device: device);
                presenceAcc = tensor(0f, device: device);
            }
            v["loss_semantic_presence"] = lossPresence;
            v["presence_acc"] = presenceAcc;
            if (presenceTarget.numel() != loss.shape[0]) throw new InvalidOperationException("semantic presence target does not match the batch");
            var mask = presenceTarget.to(ScalarType.Float32);
            double nbValid = presenceTarget.sum().item<long>();
            loss = (loss * mask).sum() / (nbValid + 1e-6);
            lossDice = (lossDice * mask).sum() / (nbValid + 1e-6);
        }
        v["loss_semantic_seg"] = loss;
        v["loss_semantic_dice"] = lossDice;
        v["miou_semantic_seg"] = miou;

        Tensor? core = null;
        foreach (var (key, w) in WeightDict)
        {
            if (!v.Contains(key)) throw new InvalidOperationException($"SemanticSegCriterion does not compute {key}");
            if (w == 0) continue;
            var term = v[key] * w;
            core = core is null ? term : core + term;
        }
        return (v, core ?? tensor(0f, device: device));
    }
}
