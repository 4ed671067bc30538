using NUnit.Framework;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Matching;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// The matchers against tiny/h_training_step: from the recorded forward outputs and targets, every recorded matching
/// (o2o Hungarian on the final and aux outputs; o2m: one-to-many on the final output, Hungarian on the aux o2m outputs as
/// use_o2m_matcher_on_o2m_aux=False) must be reproduced exactly.
/// </summary>
[TestFixture, Category("Fast"), Category("Parity")]
public class MatcherParityTests
{
    private static void AssertSame(ScenarioFixture fx, string kind, string stage, MatchIndices ours)
    {
        foreach (var (part, t) in new[] { ("batch_idx", ours.BatchIdx), ("src_idx", ours.SrcIdx), ("tgt_idx", ours.TgtIdx) })
        {
            var expected = fx.Get($"match.{kind}.{stage}.{part}");
            TestContext.Out.WriteLine($"match.{kind}.{stage}.{part}: ours [{string.Join(",", t.data<long>().ToArray())}] ref [{string.Join(",", expected.data<long>().ToArray())}]");
            Assert.That(t.data<long>().ToArray(), Is.EqualTo(expected.data<long>().ToArray()), $"match.{kind}.{stage}.{part}");
        }
    }

    [Test]
    public void EveryRecordedMatchingIsReproduced()
    {
        using var scope = NewDisposeScope();
        using var fx = Fixtures.Tiny("h_training_step");
        using var targets = TrainingFixtureTensors.Targets(fx);
        using var outs = TrainingFixtureTensors.Outputs(fx);
        var cfg = TrainingConfig.Default;
        var hungarian = new BinaryHungarianMatcherV2(cfg.Matcher);
        var o2m = new BinaryOneToManyMatcher(cfg.O2mMatcher);
        var stages = new List<(string, FindOutputs, bool)> { ("main", outs.Final, false) };
        for (int i = 0; i < outs.Aux.Count; i++) stages.Add(($"aux_{i}", outs.Aux[i], true));
        Assert.That(outs.Aux, Has.Count.EqualTo(2));
        foreach (var (stage, o, isAux) in stages)
        {
            AssertSame(fx, "o2o", stage, hungarian.Match(o.PredLogits, o.PredBoxes, targets));
            var m = isAux && !cfg.Loss.UseO2mMatcherOnO2mAux
                ? hungarian.Match(o.PredLogitsO2m!, o.PredBoxesO2m!, targets)
                : o2m.Match(o.PredLogitsO2m!, o.PredBoxesO2m!, targets);
            AssertSame(fx, "o2m", stage, m);
        }
    }
}
