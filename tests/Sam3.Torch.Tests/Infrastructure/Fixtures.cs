using NUnit.Framework;
using Sam3.Torch.Parity;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Infrastructure;

/// <summary>Opens tiny scenarios and asserts tensors against them with the parity bar.</summary>
internal static class Fixtures
{
    /// <summary>NCHW feature map → seq-first tokens [H·W,B,C] (Sam3ImageModel._get_img_feats).</summary>
    public static Tensor SeqFirst(Tensor nchw) => nchw.flatten(2).permute(2, 0, 1);

    /// <summary>(H, W) of an NCHW tensor.</summary>
    public static (int, int) Hw(Tensor nchw) => ((int)nchw.shape[2], (int)nchw.shape[3]);

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
