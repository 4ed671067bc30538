using NUnit.Framework;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Losses;
using Sam3.Torch.Training.Matching;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>Matcher ties and all-negative batches on hand-made inputs (expected values from the definitions).</summary>
[TestFixture, Category("Fast")]
public class TrainingEdgeCaseTests
{
    private static FindTargets Targets(long[] numBoxes, float[,] boxes, int s = 8)
    {
        int n = boxes.GetLength(0);
        int b = numBoxes.Length;
        long maxN = Math.Max(1, numBoxes.DefaultIfEmpty(0).Max());
        var packed = n == 0 ? zeros(0, 4) : tensor(boxes);
        var padded = zeros(b, maxN, 4);
        var ids = full(b, maxN, -1L, ScalarType.Int64);
        long k = 0;
        for (int i = 0; i < b; i++)
            for (int j = 0; j < numBoxes[i]; j++, k++)
            {
                padded[i, j] = packed[k];
                ids[i, j] = j;
            }
        var xyxy = n == 0 ? zeros(0, 4) : Sam3.Torch.Modeling.Common.BoxOps.CxcywhToXyxy(packed);
        return new FindTargets
        {
            NumBoxes = tensor(numBoxes), Boxes = packed, BoxesXyxy = xyxy, BoxesPadded = padded,
            ObjectIds = n == 0 ? zeros(0, ScalarType.Int64) : arange(n, ScalarType.Int64), ObjectIdsPadded = ids,
            IsExhaustive = ones(b, ScalarType.Bool),
            Segments = zeros(n, s, s, ScalarType.Bool), IsValidSegment = ones(n, ScalarType.Bool),
        };
    }

    [Test]
    public void ExactTieBetweenIdenticalPredictionsGoesToTheLowestQuery()
    {
        // one target, queries 3 and 7 predict it identically (same logit and box), every other query is worse: the
        // cost row has an exact tie; scipy (transposed 1xQ problem, columns scanned Q-1..0, ties prefer the later free
        // column) assigns the lower query index.
        using var scope = NewDisposeScope();
        using var t = Targets([1], new float[,] { { 0.5f, 0.5f, 0.2f, 0.2f } });
        var logits = full(1, 10, 1, -5f);
        var boxes = tensor(new float[] { 0.2f, 0.2f, 0.1f, 0.1f }).expand(1, 10, 4).clone();
        foreach (int q in new[] { 3, 7 })
        {
            logits[0, q, 0] = 2f;
            boxes[0, q] = tensor(new float[] { 0.5f, 0.5f, 0.2f, 0.2f });
        }
        var m = new BinaryHungarianMatcherV2(new HungarianMatcherConfig()).Match(logits, boxes, t);
        Assert.That(m.SrcIdx.data<long>().ToArray(), Is.EqualTo(new long[] { 3 }));
        Assert.That(m.TgtIdx.data<long>().ToArray(), Is.EqualTo(new long[] { 0 }));
        // the one-to-many matcher takes both (C above the 1 - 4/10 quantile and the threshold)
        var o2m = new BinaryOneToManyMatcher(new OneToManyMatcherConfig()).Match(logits, boxes, t);
        Assert.That(o2m.SrcIdx.data<long>().ToArray(), Is.EqualTo(new long[] { 3, 7 }));
    }

    [Test]
    public void AllNegativeBatchGivesAFiniteDifferentiableLoss()
    {
        // only negatives: no matches, boxes/masks terms 0, CE zeroed by keep_loss, the presence loss alone drives training
        using var scope = NewDisposeScope();
        using var t = Targets([0, 0], new float[0, 4]);
        var g = new TorchSharp.torch.Generator(11);
        Tensor R(params long[] shape) => randn(shape, generator: g).requires_grad_(true);
        var final = new FindOutputs
        {
            PredLogits = R(2, 6, 1), PredBoxes = rand([2, 6, 4], generator: g).requires_grad_(true),
            PredBoxesXyxy = rand([2, 6, 4], generator: g).requires_grad_(true), PresenceLogitDec = R(2, 1),
            PredLogitsO2m = R(2, 6, 1), PredBoxesO2m = rand([2, 6, 4], generator: g), PredBoxesXyxyO2m = rand([2, 6, 4], generator: g),
            PredMasks = R(2, 6, 4, 4), PredMasksO2m = R(2, 6, 4, 4), SemanticSeg = R(2, 1, 4, 4),
        };
        using var outs = new TrainingForwardOutputs { Final = final, Aux = [] };
        var cfg = TrainingConfig.Default with { Loss = TrainingConfig.Default.Loss with { Iabce = TrainingConfig.Default.Loss.Iabce with { PadNQueries = null } } };
        var r = new Sam3LossWrapper(cfg).Compute(outs, t);
        Assert.That(r.Matches[0].O2o.Count, Is.EqualTo(0));
        Assert.That(r.Values["loss_bbox"].item<float>(), Is.EqualTo(0f));
        Assert.That(r.Values["loss_ce"].item<float>(), Is.EqualTo(0f), "CE rows of queries without targets are zeroed");
        // presence: focal(alpha 0.5, gamma 0) vs 0 = 0.5·softplus(x), summed / B
        var x = final.PresenceLogitDec!.detach().flatten();
        double expected = (0.5 * nn.functional.softplus(x)).sum().item<float>() / 2;
        Assert.That(r.Values["presence_loss"].item<float>(), Is.EqualTo(expected).Within(1e-6));
        Assert.That(r.Values["loss_semantic_seg"].item<float>(), Is.EqualTo(0f), "no query with a non-empty semantic target");
        Assert.That(r.Values["miou_semantic_seg"].item<float>(), Is.EqualTo(1f), "segment_miou is 1 without valid targets");
        Assert.That(r.CoreLoss.isfinite().item<bool>(), Is.True);
        r.CoreLoss.backward();
        Assert.That(final.PresenceLogitDec!.grad!.abs().sum().item<float>(), Is.GreaterThan(0f));
        Assert.That(final.PredLogits.grad!.abs().sum().item<float>(), Is.EqualTo(0f));
    }
}
