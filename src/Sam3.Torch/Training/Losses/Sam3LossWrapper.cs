using Sam3.Torch.Training.Matching;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Losses;

/// <summary>The loss of one training step: every entry (upstream's loss dict, metrics included) and the back-propagated core loss.</summary>
internal sealed class TrainingLoss
{
    public required LossValues Values { get; init; }
    public required Tensor CoreLoss { get; init; }
    /// <summary>The matchings used, per output (main, aux_0, ...): one-to-one and one-to-many (null without o2m outputs).</summary>
    public required IReadOnlyList<(string Stage, MatchIndices O2o, MatchIndices? O2m)> Matches { get; init; }
}

/// <summary>
/// sam3_loss.Sam3LossWrapper for one find stage: for the final output and every aux output, the find losses (Boxes,
/// IABCEMdetr, Masks) on the one-to-one matching and, with DAC outputs, on the one-to-many matching (× o2m_weight, every
/// entry including metrics, as upstream); entries named <c>key[_aux_i][_o2m]</c>. Normalised by the number of targets
/// (global/local: clamp ≥ 1); then the semantic segmentation loss; core loss × sqrt(B) with scale_by_find_batch_size.
/// World size 1 (the global all-reduce is the identity).
/// </summary>
internal sealed class Sam3LossWrapper
{
    public TrainingConfig Config { get; }
    public BinaryHungarianMatcherV2 Matcher { get; }
    public BinaryOneToManyMatcher O2mMatcher { get; }
    public IReadOnlyList<FindLoss> LossFnsFind { get; }
    public SemanticSegCriterion? LossFnSemanticSeg { get; }

    public Sam3LossWrapper(TrainingConfig config)
    {
        Config = config;
        Matcher = new BinaryHungarianMatcherV2(config.Matcher);
        O2mMatcher = new BinaryOneToManyMatcher(config.O2mMatcher);
        var fns = new List<FindLoss> { new BoxesLoss(config.Loss.Boxes), new IabceMdetrLoss(config.Loss.Iabce) };
        if (config.Loss.Masks is not null) fns.Add(new MasksLoss(config.Loss.Masks));
        LossFnsFind = fns;
        if (config.Loss.SemanticSeg is not null) LossFnSemanticSeg = new SemanticSegCriterion(config.Loss.SemanticSeg);
    }

    /// <summary>_get_num_boxes: the loss normaliser (0-d float32 tensor).</summary>
    public Tensor NumBoxes(FindTargets targets)
    {
        Tensor n;
        if (Config.Loss.NormalizeByValidObjectNum)
            n = targets.Boxes.view(-1, 4)[.., TensorIndex.Slice(2, null)].gt(0).all(-1).sum().to(ScalarType.Float32);
        else
            n = targets.NumBoxes.sum().to(ScalarType.Float32);
        return Config.Loss.Normalization switch
        {
            LossNormalization.Global => (n / 1).clamp(min: 1), // world size 1
            LossNormalization.Local => n.clamp(min: 1),
            _ => tensor(1f),
        };
    }

    /// <summary>
    /// The losses of a training forward. <paramref name="o2oIndices"/>: the one-to-one matchings computed by the model
    /// (main, aux_0, ...); null = computed here with the same matcher.
    /// </summary>
    public TrainingLoss Compute(TrainingForwardOutputs outputs, FindTargets targets, IReadOnlyList<MatchIndices>? o2oIndices = null,
        Tensor? semanticPresenceLogit = null)
    {
        var device = outputs.Final.PredLogits.device;
        var numBoxes = NumBoxes(targets).to(device);
        var stages = new List<(FindOutputs Out, string Suffix, bool IsAux)> { (outputs.Final, "", false) };
        for (int i = 0; i < outputs.Aux.Count; i++) stages.Add((outputs.Aux[i], $"_aux_{i}", true));
        if (o2oIndices is not null && o2oIndices.Count != stages.Count)
            throw new ArgumentException($"{o2oIndices.Count} o2o matchings for {stages.Count} outputs", nameof(o2oIndices));

        var losses = new LossValues();
        var matches = new List<(string, MatchIndices, MatchIndices?)>();
        Tensor? total = null;
        void Accumulate(Tensor t) => total = total is null ? t : total + t;

        for (int si = 0; si < stages.Count; si++)
        {
            var (o, suffix, isAux) = stages[si];
            var o2o = PredictionSet.O2o(o);
            var indices = o2oIndices?[si] ?? Matcher.Match(o.PredLogits, o.PredBoxes, targets);
            var o2m = PredictionSet.O2m(o);
            MatchIndices? o2mIndices = null;
            if (o2m is not null)
                o2mIndices = Config.Loss.UseO2mMatcherOnO2mAux || !isAux
                    ? O2mMatcher.Match(o2m.PredLogits, o2m.PredBoxes, targets)
                    : Matcher.Match(o2m.PredLogits, o2m.PredBoxes, targets);
            matches.Add((si == 0 ? "main" : $"aux_{si - 1}", indices, o2mIndices));

            foreach (var fn in LossFnsFind)
            {
                var (values, core) = fn.Forward(o2o, targets, indices, numBoxes, isAux);
                if (core is not null) Accumulate(core);
                if (values is not null) losses.AddAll(values, suffix);
                if (o2m is not null && fn.AppliesTo(o2m))
                {
                    var (v2, core2) = fn.Forward(o2m, targets, o2mIndices!, numBoxes, isAux);
                    if (v2 is null || core2 is null) continue;
                    var scaled = new LossValues();
                    foreach (var (k, v) in v2.Items) scaled[k] = v * Config.Loss.O2mWeight;
                    Accumulate(core2 * Config.Loss.O2mWeight);
                    losses.AddAll(scaled, suffix + "_o2m");
                }
            }
        }
        var coreLoss = total ?? tensor(0f, device: device);

        if (LossFnSemanticSeg is not null)
        {
            var seg = outputs.Final.SemanticSeg ?? throw new ArgumentException("the semantic segmentation loss needs semantic_seg outputs", nameof(outputs));
            var (sv, sc) = LossFnSemanticSeg.Forward(seg, semanticPresenceLogit, targets);
            coreLoss = coreLoss + sc;
            foreach (var k in sv.Keys)
                if (losses.Contains(k)) throw new InvalidOperationException($"semantic loss entry '{k}' overlaps a find loss entry");
            losses.AddAll(sv);
        }
        if (Config.Loss.ScaleByFindBatchSize)
            coreLoss = coreLoss * Math.Sqrt(targets.NumBoxes.shape[0]);
        return new TrainingLoss { Values = losses, CoreLoss = coreLoss, Matches = matches };
    }
}
