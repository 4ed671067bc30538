using NUnit.Framework;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Losses;
using Sam3.Torch.Training.Matching;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// Sam3LossWrapper against tiny/h_training_step: from the recorded outputs, targets and o2o matchings, every recorded
/// loss entry (45 keys: weighted terms and metrics) and the core loss within rtol 1e-5 + atol 1e-5; and the loss is
/// differentiable with respect to every output that feeds it.
/// </summary>
[TestFixture, Category("Fast"), Category("Parity")]
public class LossParityTests
{
    internal static TrainingConfig FixtureConfig(ScenarioFixture fx)
    {
        // the tiny model has Q = 16 queries; the fixture sets pad_n_queries = Q (README-h "Deviations") to take the
        // full model's branch (mean over B·Q)
        int pad = fx.Parameters.GetProperty("loss").GetProperty("iabce").GetProperty("pad_n_queries_used").GetInt32();
        var d = TrainingConfig.Default;
        return d with { Loss = d.Loss with { Iabce = d.Loss.Iabce with { PadNQueries = pad } } };
    }

    private static List<MatchIndices> RecordedO2o(ScenarioFixture fx, int aux)
    {
        var list = new List<MatchIndices> { TrainingFixtureTensors.Match(fx, "o2o", "main") };
        for (int i = 0; i < aux; i++) list.Add(TrainingFixtureTensors.Match(fx, "o2o", $"aux_{i}"));
        return list;
    }

    [Test]
    public void EveryLossEntryAndTheCoreLossMatch()
    {
        using var scope = NewDisposeScope();
        using var fx = Fixtures.Tiny("h_training_step");
        using var targets = TrainingFixtureTensors.Targets(fx);
        using var outs = TrainingFixtureTensors.Outputs(fx);
        var wrapper = new Sam3LossWrapper(FixtureConfig(fx));
        var result = wrapper.Compute(outs, targets, RecordedO2o(fx, outs.Aux.Count));

        var expectedKeys = fx.Tensors.Keys.Where(k => k.StartsWith("loss.") && k != "loss.core_loss").Select(k => k["loss.".Length..]).ToList();
        Assert.That(expectedKeys, Has.Count.EqualTo(45));
        Assert.That(result.Values.Keys.ToList(), Is.EqualTo(expectedKeys), "loss entries (names and order)");
        var tol = new Tolerance(Atol: 1e-5, Rtol: 1e-5, NoiseFactor: 1.0);
        double worst = 0;
        var failures = new List<string>();
        foreach (var key in expectedKeys.Append("core_loss"))
        {
            var ours = key == "core_loss" ? result.CoreLoss : result.Values[key];
            var r = tol.Compare("loss." + key, ours, fx.Get("loss." + key));
            TestContext.Out.WriteLine($"{r}  ours={ours.item<float>():R}");
            worst = Math.Max(worst, r.MaxAbsError);
            if (!r.Passed) failures.Add(r.ToString());
        }
        TestContext.Out.WriteLine($"worst |Δ| over the loss entries: {worst:G3}");
        Assert.That(failures, Is.Empty);
    }

    [Test]
    public void MatchersInsideTheWrapperGiveTheSameLoss()
    {
        using var scope = NewDisposeScope();
        using var fx = Fixtures.Tiny("h_training_step");
        using var targets = TrainingFixtureTensors.Targets(fx);
        using var outs = TrainingFixtureTensors.Outputs(fx);
        var result = new Sam3LossWrapper(FixtureConfig(fx)).Compute(outs, targets);
        var r = new Tolerance(Atol: 1e-5, Rtol: 1e-5, NoiseFactor: 1.0).Compare("loss.core_loss", result.CoreLoss, fx.Get("loss.core_loss"));
        TestContext.Out.WriteLine(r.ToString());
        Assert.That(r.Passed, Is.True, r.ToString());
    }

    [Test]
    public void CoreLossBackpropagatesToEveryOutputThatFeedsIt()
    {
        using var scope = NewDisposeScope();
        using var fx = Fixtures.Tiny("h_training_step");
        using var targets = TrainingFixtureTensors.Targets(fx);
        using var outs = TrainingFixtureTensors.Outputs(fx, requiresGrad: true);
        var result = new Sam3LossWrapper(FixtureConfig(fx)).Compute(outs, targets);
        result.CoreLoss.backward();
        var leaves = new List<(string, Tensor)>
        {
            ("pred_logits", outs.Final.PredLogits), ("pred_boxes", outs.Final.PredBoxes), ("pred_boxes_xyxy", outs.Final.PredBoxesXyxy),
            ("presence_logit_dec", outs.Final.PresenceLogitDec!), ("pred_logits_o2m", outs.Final.PredLogitsO2m!),
            ("pred_masks", outs.Final.PredMasks!), ("pred_masks_o2m", outs.Final.PredMasksO2m!), ("semantic_seg", outs.Final.SemanticSeg!),
            ("aux0.pred_logits", outs.Aux[0].PredLogits), ("aux0.pred_boxes", outs.Aux[0].PredBoxes), ("aux1.presence_logit_dec", outs.Aux[1].PresenceLogitDec!),
        };
        foreach (var (name, t) in leaves)
        {
            var g = t.grad;
            Assert.That(g, Is.Not.Null, name);
            Assert.That(g!.isfinite().all().item<bool>(), Is.True, $"{name}: non-finite gradient");
            Assert.That(g.abs().max().item<float>(), Is.GreaterThan(0f), $"{name}: zero gradient");
        }
    }
}

/// <summary>Loss formulas against mathematics: finite differences and closed forms on tiny inputs.</summary>
[TestFixture, Category("Fast")]
public class LossMathTests
{
    [Test]
    public void FocalAndDiceGradientsMatchFiniteDifferences()
    {
        using var scope = NewDisposeScope();
        var g = new TorchSharp.torch.Generator(7);
        var x = (randn([3, 5], dtype: ScalarType.Float64, generator: g) * 2).requires_grad_(true);
        var y = rand([3, 5], dtype: ScalarType.Float64, generator: g).gt(0.5).to(ScalarType.Float64);
        Func<Tensor, Tensor> f = z => SigmoidFocalLoss.Elementwise(z, y, 0.25, 2.0).sum() + SigmoidFocalLoss.DicePerRow(z, y).sum();
        f(x).backward();
        var analytic = x.grad!.clone();
        const double h = 1e-6;
        using var _ = no_grad();
        var xd = x.detach().clone();
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 5; j++)
            {
                var xp = xd.clone(); xp[i, j] = xp[i, j] + h;
                var xm = xd.clone(); xm[i, j] = xm[i, j] - h;
                double fd = (f(xp).item<double>() - f(xm).item<double>()) / (2 * h);
                Assert.That(analytic[i, j].item<double>(), Is.EqualTo(fd).Within(1e-6), $"d/dx[{i},{j}]");
            }
    }

    [Test]
    public void FocalLossClosedForm()
    {
        // x = 0: p = 1/2, bce = log 2, (1-p_t)^2 = 1/4; y = 1 -> alpha·log2/4, y = 0 -> (1-alpha)·log2/4
        using var scope = NewDisposeScope();
        var l = SigmoidFocalLoss.Elementwise(zeros(2, dtype: ScalarType.Float64), tensor(new double[] { 1, 0 }), 0.25, 2.0);
        Assert.That(l[0].item<double>(), Is.EqualTo(0.25 * Math.Log(2) / 4).Within(1e-12));
        Assert.That(l[1].item<double>(), Is.EqualTo(0.75 * Math.Log(2) / 4).Within(1e-12));
        // dice of a perfect very confident prediction -> 0; of an all-negative target with p = 1/2 over 4 px -> 1 - 1/3
        var d = SigmoidFocalLoss.DicePerRow(tensor(new double[,] { { 50, 50 }, { 0, 0 } }), tensor(new double[,] { { 1, 1 }, { 0, 0 } }));
        Assert.That(d[0].item<double>(), Is.EqualTo(0).Within(1e-12));
        Assert.That(d[1].item<double>(), Is.EqualTo(1 - 1.0 / 2).Within(1e-12));
    }

    [Test]
    public void DiagonalGiouClosedForm()
    {
        using var scope = NewDisposeScope();
        // identical boxes: 1; disjoint unit boxes [0,1]² and [2,3]x[0,1]: IoU 0, hull 3, union 2 -> -1/3
        var a = tensor(new float[,] { { 0, 0, 1, 1 }, { 0, 0, 1, 1 } });
        var b = tensor(new float[,] { { 0, 0, 1, 1 }, { 2, 0, 3, 1 } });
        var giou = Sam3.Torch.Modeling.Common.BoxOps.DiagGeneralizedBoxIou(a, b);
        Assert.That(giou[0].item<float>(), Is.EqualTo(1f).Within(1e-7));
        Assert.That(giou[1].item<float>(), Is.EqualTo(-1f / 3).Within(1e-7));
        // half-overlapping: [0,2]x[0,1] and [1,3]x[0,1]: inter 1, union 3 -> IoU 1/3
        var iou = Sam3.Torch.Modeling.Common.BoxOps.DiagBoxIou(tensor(new float[,] { { 0, 0, 2, 1 } }), tensor(new float[,] { { 1, 0, 3, 1 } }));
        Assert.That(iou[0].item<float>(), Is.EqualTo(1f / 3).Within(1e-7));
    }
}
