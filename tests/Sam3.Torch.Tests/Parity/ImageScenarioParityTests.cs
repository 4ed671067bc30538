using NUnit.Framework;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Parity;

/// <summary>
/// End-to-end fp32 parity through the public API, driven by the scenario JSON files (the same runner as
/// <c>sam3 parity</c>). The fixture directory is SAM3_SHARED/parity (default ../shared/parity).
/// </summary>
[TestFixture, Category("Parity")]
public class ImageScenarioParityTests
{
    private ParityRunner? _runner;

    [OneTimeSetUp]
    public void Open() => _runner = new ParityRunner(SharedData.Parity());

    [OneTimeTearDown]
    public void Close() => _runner?.Dispose();

    [TestCase("a")]
    [TestCase("b")]
    [TestCase("c")]
    [TestCase("d")]
    public void ScenarioPasses(string prefix)
    {
        foreach (var name in _runner!.Select([prefix]))
        {
            var report = _runner.Run(name);
            foreach (var c in report.Comparisons) TestContext.Out.WriteLine(c.ToString());
            foreach (var d in report.Detections) TestContext.Out.WriteLine($"detections {d.Where}: reference {d.Reference}, ours {d.Ours}");
            foreach (var n in report.NotCompared) TestContext.Out.WriteLine($"not compared: {n}");
            Assert.That(report.Passed, Is.True, $"{name}: {report.Failure}");
            Assert.That(report.Comparisons, Is.Not.Empty);
        }
    }
}
