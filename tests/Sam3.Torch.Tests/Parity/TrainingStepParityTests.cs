using NUnit.Framework;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Parity;

/// <summary>
/// Scenario h (one step of the official fine-tuning trainer) end to end through the same runner as
/// <c>sam3 parity --scenario h</c>: COCO folder → reader → train transforms → collate → training forward → matchers →
/// losses → backward → clipping → AdamW, every recorded tensor compared under README-h's bars.
/// </summary>
[TestFixture, Category("Parity"), Category("Fast")]
public class TrainingStepParityTests
{
    [Test]
    public void ScenarioHPasses()
    {
        using var runner = new ParityRunner(SharedData.Parity());
        var names = runner.Select(["h"]);
        Assert.That(names, Is.EqualTo(new[] { "h_training_step" }));
        var report = runner.Run(names[0]);
        foreach (var kind in new[] { "data.", "fwd.", "match.", "loss.", "grad", "optim.", "updated" })
        {
            var of = report.Comparisons.Where(c => c.Name.StartsWith(kind, StringComparison.Ordinal)).ToList();
            if (of.Count == 0) continue;
            var worst = of.MaxBy(c => c.MaxAbsError)!;
            TestContext.Out.WriteLine($"{kind,-9} {of.Count,4} tensors, worst {worst.Name}: max abs {worst.MaxAbsError:G3}, max rel {worst.MaxRelError:G3}");
        }
        foreach (var c in report.Comparisons.Where(c => !c.Passed)) TestContext.Out.WriteLine(c.ToString());
        foreach (var n in report.NotCompared) TestContext.Out.WriteLine($"not compared: {n}");
        Assert.That(report.Passed, Is.True, report.Failure);
        Assert.That(report.NotCompared, Is.Empty, "every recorded tensor is produced");
        // 330 gradients (the token embedding's as rows), 18 matching index tensors, 45 loss entries + the core loss
        Assert.That(report.Comparisons.Count(c => c.Name.StartsWith("grad", StringComparison.Ordinal)), Is.EqualTo(331));
        Assert.That(report.Comparisons.Count(c => c.Name.StartsWith("match.", StringComparison.Ordinal)), Is.EqualTo(18));
        Assert.That(report.Comparisons.Count(c => c.Name.StartsWith("loss.", StringComparison.Ordinal)), Is.EqualTo(46));
    }
}
