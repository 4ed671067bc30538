using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Encoder;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Modeling.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Encoder;

/// <summary>Repeated forwards of the text, geometry and fusion encoders leave no live tensors behind.</summary>
[TestFixture, Category("Fast")]
public class LifetimeTests
{
    private static long Live() => DisposeScopeManager.Statistics.ThreadTotalLiveCount;

    [Test]
    public void RepeatedForwardsDoNotLeakTensors()
    {
        var cfg = Sam3Config.Tiny;
        using var text = new VETextEncoder(cfg);
        using var geo = new SequenceGeometryEncoder(cfg);
        using var enc = new TransformerEncoderFusion(cfg);
        text.eval(); geo.eval(); enc.eval();
        using var _ = torch.no_grad();
        int d = cfg.Encoder.DModel, h = 6, w = 5;
        void Once()
        {
            using var scope = NewDisposeScope();
            var ids = torch.tensor(new long[] { 49406, 2533, 49407, 0 }).view(1, 4);
            var t = text.forward(ids);
            var img = torch.randn(h * w, 1, d);
            var pos = torch.randn(h * w, 1, d);
            var prompt = Prompt.Empty(1);
            prompt.AppendBoxes(torch.tensor(new[] { 0.5f, 0.5f, 0.4f, 0.3f }).view(1, 1, 4), torch.tensor(new[] { true }).view(1, 1));
            prompt.AppendPoints(torch.tensor(new[] { 0.2f, 0.7f }).view(1, 1, 2), torch.ones(1, 1, dtype: ScalarType.Int64));
            var (g, gm) = geo.forward(prompt, [img], [(h, w)], [pos]);
            var layers = new List<Tensor>();
            enc.forward([img], [(h, w)], [pos], torch.cat([t.LanguageFeatures, g], 0), torch.cat([t.LanguageMask, gm], 1), layerOutputs: layers);
        }
        Once(); // lazy caches (causal mask, ...) are created here
        long before = Live();
        for (int i = 0; i < 5; i++) Once();
        Assert.That(Live(), Is.EqualTo(before));
        using (var probe = torch.zeros(1)) Assert.That(Live(), Is.EqualTo(before + 1), "the live-tensor counter works");
    }
}
