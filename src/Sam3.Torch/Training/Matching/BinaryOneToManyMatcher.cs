using Sam3.Torch.Modeling.Common;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Matching;

/// <summary>
/// sam3.train.matcher.BinaryOneToManyMatcher (DAC-DETR's one-to-many assignment): with
/// <c>C = alpha·sigmoid(logit) + (1-alpha)·IoU</c> [B,Q,T], prediction q matches target t of its row when
/// <c>C &gt; quantile_q(C, 1 - topk/Q)</c> (torch.quantile, linear interpolation, q as float32 like upstream's Python
/// float), <c>C &gt; threshold</c> and t is not padding. Several predictions may match one target. Pairs come in
/// (row, prediction, target) order (torch.nonzero), target indices packed over rows.
/// </summary>
internal sealed class BinaryOneToManyMatcher
{
    public const double InvalidScore = -1e9;

    public OneToManyMatcherConfig Config { get; }

    public BinaryOneToManyMatcher(OneToManyMatcherConfig config)
    {
        if (config.Topk <= 0) throw new ArgumentOutOfRangeException(nameof(config), config.Topk, "topk must be positive");
        Config = config;
    }

    public MatchIndices Match(Tensor predLogits, Tensor predBoxes, FindTargets targets, Tensor? outIsValid = null, Tensor? targetIsValidPadded = null)
    {
        if (predLogits.dim() != 3 || predLogits.shape[2] != 1)
            throw new ArgumentException($"pred_logits must be [B,Q,1], got [{string.Join(",", predLogits.shape)}]", nameof(predLogits));
        var device = predLogits.device;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        long bs = predLogits.shape[0], numQueries = predLogits.shape[1];
        var outProb = predLogits.sigmoid().squeeze(-1);
        var numBoxes = targets.NumBoxes.to(device);
        var tgtBbox = targets.BoxesPadded.to(device);
        if (tgtBbox.shape[0] != bs)
            throw new ArgumentException($"boxes_padded has {tgtBbox.shape[0]} rows, predictions {bs}", nameof(targets));
        long numTargets = tgtBbox.shape[1];
        if (numTargets == 0)
        {
            var e = empty(0, ScalarType.Int64, device: device);
            return new MatchIndices(e.alias(), e.alias(), e.alias()).MoveToOuterDisposeScope();
        }
        var (iou, _) = BoxOps.BoxIou(BoxOps.CxcywhToXyxy(predBoxes), BoxOps.CxcywhToXyxy(tgtBbox));
        var C = outProb.unsqueeze(-1) * Config.Alpha + iou * (1 - Config.Alpha);
        if (outIsValid is not null) C = C.masked_fill(outIsValid[.., .., TensorIndex.None].logical_not(), InvalidScore);
        if (targetIsValidPadded is not null) C = C.masked_fill(targetIsValidPadded[.., TensorIndex.None, ..].logical_not(), InvalidScore);

        // upstream passes q as a Python float; torch wraps it as a scalar tensor of the input's dtype (float32)
        var q = tensor((float)(1.0 - Config.Topk / (double)numQueries), device: device).to(C.dtype);
        var matches = C.gt(C.quantile(q, dim: 1, keepdim: true));
        matches = matches.logical_and(C.gt(Config.Threshold));
        if (outIsValid is not null) matches = matches.logical_and(outIsValid[.., .., TensorIndex.None]);
        if (targetIsValidPadded is not null) matches = matches.logical_and(targetIsValidPadded[.., TensorIndex.None, ..]);
        var notPadding = arange(numTargets, device: device)[TensorIndex.None].lt(numBoxes[.., TensorIndex.None]).unsqueeze(1);
        matches = matches.logical_and(notPadding);

        var nz = matches.nonzero();
        var b = nz[.., 0].contiguous();
        var s = nz[.., 1].contiguous();
        var t = nz[.., 2].contiguous();
        var cum = cat([zeros(1, numBoxes.dtype, device: device), numBoxes.cumsum(-1)[TensorIndex.Slice(null, -1)]]);
        t = t + cum.index_select(0, b);
        return new MatchIndices(b, s, t).MoveToOuterDisposeScope();
    }
}
