using Sam3.Torch.Modeling.Common;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Matching;

/// <summary>
/// sam3.train.matcher.BinaryHungarianMatcherV2: one-to-one matching of the Q predictions of each query row to its
/// targets by minimising <c>cost_bbox·L1 + cost_class·focal_cost + cost_giou·(-GIoU)</c> (float32, as upstream) with an
/// exact assignment (<see cref="LinearSumAssignment"/>, scipy's answer including ties). Rows without targets are skipped
/// (<c>remove_samples_with_0_gt</c>). Pair order as upstream: per row in target order when every row has at least as many
/// predictions as targets, otherwise (or with validity masks) in prediction order.
/// </summary>
internal sealed class BinaryHungarianMatcherV2
{
    /// <summary>Cost given to invalid predictions/targets; pairs at or above <see cref="ValidThreshold"/> are dropped.</summary>
    public const double InvalidCost = 1e9;
    public const double ValidThreshold = 1e8;

    public HungarianMatcherConfig Config { get; }

    public BinaryHungarianMatcherV2(HungarianMatcherConfig config)
    {
        if (config.CostClass == 0 && config.CostBbox == 0 && config.CostGiou == 0)
            throw new ArgumentException("all matcher costs are 0", nameof(config));
        Config = config;
    }

    /// <summary>
    /// The float32 cost matrix [B', Q, maxT] over the kept rows (rows with targets when remove_samples_with_0_gt), and the
    /// indices of the kept rows.
    /// </summary>
    public (Tensor Cost, long[] KeptRows, long[] NumBoxes) CostMatrix(Tensor predLogits, Tensor predBoxes, FindTargets targets,
        Tensor? outIsValid = null, Tensor? targetIsValidPadded = null)
    {
        using var _ = no_grad();
        var c = Config;
        var outScore = predLogits.squeeze(-1);
        var outBbox = predBoxes;
        long[] numBoxes = targets.NumBoxes.cpu().data<long>().ToArray();
        var tgtBbox = targets.BoxesPadded;
        long[] kept = Enumerable.Range(0, numBoxes.Length).Select(i => (long)i).ToArray();
        if (c.RemoveSamplesWith0Gt)
        {
            kept = kept.Where(i => numBoxes[i] > 0).ToArray();
            using var keepIdx = tensor(kept, device: outScore.device);
            numBoxes = kept.Select(i => numBoxes[i]).ToArray();
            tgtBbox = tgtBbox.index_select(0, keepIdx.to(tgtBbox.device));
            outScore = outScore.index_select(0, keepIdx);
            outBbox = outBbox.index_select(0, keepIdx);
            if (targetIsValidPadded is not null) targetIsValidPadded = targetIsValidPadded.index_select(0, keepIdx.to(targetIsValidPadded.device));
            if (outIsValid is not null) outIsValid = outIsValid.index_select(0, keepIdx);
        }
        tgtBbox = tgtBbox.to(outBbox.device);

        var costBbox = cdist(outBbox, tgtBbox, p: 1);
        var costGiou = -BoxOps.GeneralizedBoxIou(BoxOps.CxcywhToXyxy(outBbox), BoxOps.CxcywhToXyxy(tgtBbox));
        var outProb = outScore.sigmoid();
        Tensor costClass;
        if (!c.Focal)
            costClass = (-outProb).unsqueeze(-1).expand_as(costBbox);
        else if (c.Stable)
        {
            var rescaledGiou = (-costGiou + 1) / 2;
            var p = outProb.unsqueeze(-1).expand_as(costBbox) * rescaledGiou;
            costClass = (1 - p).pow(c.Gamma) * (-c.Alpha) * p.log() + p.pow(c.Gamma) * (1 - c.Alpha) * (1 - p).log();
        }
        else
        {
            // directly from log-sigmoid (upstream's numerically stable branch)
            var logP = nn.functional.logsigmoid(outScore);
            var log1mP = nn.functional.logsigmoid(-outScore);
            costClass = ((1 - outProb).pow(c.Gamma) * (-c.Alpha) * logP + outProb.pow(c.Gamma) * (1 - c.Alpha) * log1mP)
                .unsqueeze(-1).expand_as(costBbox);
        }
        var C = costBbox * c.CostBbox + costClass * c.CostClass + costGiou * c.CostGiou;
        if (outIsValid is not null) C = C.masked_fill(outIsValid[.., .., TensorIndex.None].logical_not(), InvalidCost);
        if (targetIsValidPadded is not null) C = C.masked_fill(targetIsValidPadded[.., TensorIndex.None, ..].logical_not(), InvalidCost);
        return (C, kept, numBoxes);
    }

    /// <summary>Matches the predictions (<c>pred_logits</c> [B,Q,1], <c>pred_boxes</c> [B,Q,4] cxcywh) to the targets.</summary>
    public MatchIndices Match(Tensor predLogits, Tensor predBoxes, FindTargets targets, Tensor? outIsValid = null, Tensor? targetIsValidPadded = null)
    {
        if (predLogits.dim() != 3 || predLogits.shape[2] != 1)
            throw new ArgumentException($"pred_logits must be [B,Q,1], got [{string.Join(",", predLogits.shape)}]", nameof(predLogits));
        var device = predLogits.device;
        long numQueries = predLogits.shape[1];
        double[] cost;
        long[] kept, numBoxes;
        long maxT;
        using (var scope = NewDisposeScope())
        {
            var (C, k, nb) = CostMatrix(predLogits, predBoxes, targets, outIsValid, targetIsValidPadded);
            kept = k; numBoxes = nb;
            maxT = C.shape[2];
            // all rows negative (remove_samples_with_0_gt): nothing to match
            cost = C.numel() == 0 ? [] : C.detach().cpu().to(ScalarType.Float64).contiguous().data<double>().ToArray();
        }
        bool doFiltering = outIsValid is not null || targetIsValidPadded is not null;
        bool returnTgtIndices = doFiltering || numBoxes.Any(n => numQueries < n);

        var batch = new List<long>();
        var src = new List<long>();
        var tgt = new List<long>();
        long offset = 0;
        for (int r = 0; r < kept.Length; r++)
        {
            int n = (int)numBoxes[r];
            var m = new double[numQueries, n];
            for (int q = 0; q < numQueries; q++)
                for (int t = 0; t < n; t++)
                    m[q, t] = cost[(r * numQueries + q) * maxT + t];
            var (rows, cols) = LinearSumAssignment.Solve(m);
            if (doFiltering)
            {
                var keep = Enumerable.Range(0, rows.Length).Where(k2 => m[rows[k2], cols[k2]] < ValidThreshold).ToArray();
                rows = keep.Select(k2 => rows[k2]).ToArray();
                cols = keep.Select(k2 => cols[k2]).ToArray();
            }
            if (returnTgtIndices)
            {
                for (int k2 = 0; k2 < rows.Length; k2++) { batch.Add(kept[r]); src.Add(rows[k2]); tgt.Add(cols[k2] + offset); }
            }
            else
            {
                // _do_matching: predictions in target order (every target is assigned here), targets in row order
                var order = Enumerable.Range(0, cols.Length).OrderBy(k2 => cols[k2]).ToArray();
                foreach (var k2 in order) { batch.Add(kept[r]); src.Add(rows[k2]); tgt.Add(cols[k2] + offset); }
            }
            offset += n;
        }
        return new MatchIndices(tensor(batch.ToArray(), device: device), tensor(src.ToArray(), device: device), tensor(tgt.ToArray(), device: device));
    }
}
