using Sam3.Torch.Training.Matching;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Losses;

/// <summary>
/// loss_fns.LossWithWeights: a loss over matched predictions whose weighted entries (<see cref="WeightDict"/>, in order,
/// zero weights skipped) sum to its core loss. On aux outputs it only runs with <see cref="ComputeAux"/>.
/// </summary>
internal abstract class FindLoss
{
    public abstract IReadOnlyList<(string Key, double Weight)> WeightDict { get; }
    public abstract bool ComputeAux { get; }
    /// <summary>Also computed on the one-to-many predictions when present (Masks: only with o2m masks).</summary>
    public virtual bool AppliesTo(PredictionSet o2m) => true;

    public abstract LossValues GetLoss(PredictionSet outputs, FindTargets targets, MatchIndices indices, Tensor numBoxes);

    /// <summary>forward: the entries and their weighted sum; null entries when skipped on an aux output (core 0).</summary>
    public (LossValues? Values, Tensor? Core) Forward(PredictionSet outputs, FindTargets targets, MatchIndices indices, Tensor numBoxes, bool isAux)
    {
        if (isAux && !ComputeAux) return (null, null);
        var values = GetLoss(outputs, targets, indices, numBoxes);
        return (values, Reduce(values));
    }

    public Tensor Reduce(LossValues values)
    {
        Tensor? total = null;
        foreach (var (key, weight) in WeightDict)
        {
            if (!values.Contains(key)) throw new InvalidOperationException($"{GetType().Name} does not compute {key}");
            if (weight == 0) continue;
            var term = values[key] * weight;
            total = total is null ? term : total + term;
        }
        return total ?? tensor(0f);
    }
}
