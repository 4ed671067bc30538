using NUnit.Framework;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Parity;

/// <summary>
/// Scenario g (the batched DataPoint API: transform, collate, one forward, PostProcessImage twice) at fp32 parity
/// through the same runner as <c>sam3 parity --scenario g</c>, driven by the scenario JSON.
/// </summary>
[TestFixture, Category("Parity"), Category("Fast")]
public class BatchedApiParityTests
{
    [Test]
    public void ScenarioGPasses()
    {
        using var runner = new ParityRunner(SharedData.Parity());
        var names = runner.Select(["g"]);
        Assert.That(names, Is.EqualTo(new[] { "g_batched_api" }));
        var report = runner.Run(names[0]);
        foreach (var c in report.Comparisons) TestContext.Out.WriteLine(c.ToString());
        foreach (var d in report.Detections) TestContext.Out.WriteLine($"detections {d.Where}: reference {d.Reference}, ours {d.Ours}");
        foreach (var n in report.NotCompared) TestContext.Out.WriteLine($"not compared: {n}");
        Assert.That(report.Passed, Is.True, report.Failure);
        Assert.That(report.NotCompared, Is.Empty);
        // every post-processed result of both runs (4 ids × 2 runs × scores/labels/boxes/masks) was compared
        Assert.That(report.Comparisons.Count(c => c.Name.StartsWith("post.") && c.Name != "post.query_scores"), Is.EqualTo(32));
        Assert.That(report.Detections, Has.Count.EqualTo(8));
    }
}
