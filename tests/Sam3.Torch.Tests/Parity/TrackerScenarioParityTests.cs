using NUnit.Framework;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Parity;

/// <summary>
/// fp32 parity of the SAM2-style tracker (scenarios e_tracker_video and e2_tracker_interactive) through the same
/// data-driven runner as <c>sam3 parity</c>: every recorded tensor (masks within 0.1% of pixels), plus the object ids,
/// processing orders, memory-attention compositions, refusals and returned ids recorded in the scenario JSON.
/// </summary>
[TestFixture, Category("Parity")]
public class TrackerScenarioParityTests
{
    private ParityRunner? _runner;

    [OneTimeSetUp]
    public void Open() => _runner = new ParityRunner(SharedData.Parity());

    [OneTimeTearDown]
    public void Close() => _runner?.Dispose();

    [TestCase("e_")]
    [TestCase("e2")]
    public void ScenarioPasses(string prefix)
    {
        foreach (var name in _runner!.Select([prefix]))
        {
            var report = _runner.Run(name);
            foreach (var c in report.Comparisons) TestContext.Out.WriteLine(c.ToString());
            foreach (var d in report.Detections) TestContext.Out.WriteLine($"check {d.Where}: reference {d.Reference}, ours {d.Ours}");
            foreach (var n in report.NotCompared) TestContext.Out.WriteLine($"not compared: {n}");
            TestContext.Out.WriteLine($"{name}: {report.Seconds:F1} s");
            Assert.That(report.Passed, Is.True, $"{name}: {report.Failure}");
            Assert.That(report.Comparisons, Is.Not.Empty);
        }
    }
}
