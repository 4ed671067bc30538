using NUnit.Framework;
using Sam3.Torch.Parity;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Infrastructure;

/// <summary>Opens tiny scenarios and asserts tensors against them with the parity bar.</summary>
public static class Fixtures
{
    public static ScenarioFixture Tiny(string scenario) => ScenarioFixture.Open(SharedData.Parity("tiny", scenario + ".json"));

    public static ComparisonResult AssertClose(ScenarioFixture fx, string name, Tensor actual, Tolerance? tol = null)
    {
        using var scope = NewDisposeScope();
        var info = fx.Tensors.TryGetValue(name, out var i) ? i : null;
        var r = (tol ?? Tolerance.Default).Compare(name, actual, fx.Get(name), info?.ObservedMaxAbsDiff);
        TestContext.Out.WriteLine(r.ToString());
        Assert.That(r.Passed, Is.True, r.ToString());
        return r;
    }
}
