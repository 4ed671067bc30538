using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling;

[TestFixture, Category("Fast")]
public class CommonTests
{
    [Test]
    public void PositionEmbeddingSineMatchesNeckFixture()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var pe = new PositionEmbeddingSine(Sam3Config.Tiny.PositionEncoding with { NumPosFeats = Sam3Config.Tiny.Neck.DModel });
        using var scope = NewDisposeScope();
        for (int i = 0; i < 4; i++)
        {
            var reference = fx.Get($"neck.sam3_pos.{i}");
            var pos = pe.forward(torch.zeros(reference.shape));
            Fixtures.AssertClose(fx, $"neck.sam3_pos.{i}", pos);
        }
    }

    [Test]
    public void MultiheadAttentionEqualsSoftmaxAttentionMath()
    {
        using var scope = NewDisposeScope();
        torch.manual_seed(7);
        int e = 16, h = 4, hd = e / h; long l = 5, s = 7, b = 2;
        using var mha = new MultiheadAttention(e, h);
        mha.eval();
        var q = torch.randn(l, b, e); var k = torch.randn(s, b, e); var v = torch.randn(s, b, e);
        var pad = torch.zeros(b, s, dtype: ScalarType.Bool); pad[1, 5] = true; pad[1, 6] = true;
        var bias = torch.randn(b * h, l, s);
        using var _ = torch.no_grad();
        var got = mha.forward(q, k, v, pad, bias);

        var w = mha.in_proj_weight.chunk(3, 0); var bi = mha.in_proj_bias.chunk(3, 0);
        var expected = torch.zeros(l, b, e);
        for (int bb = 0; bb < b; bb++)
        {
            var heads = new List<Tensor>();
            for (int hh = 0; hh < h; hh++)
            {
                var rows = TensorIndex.Slice(hh * hd, (hh + 1) * hd);
                var qh = nn.functional.linear(q[.., bb], w[0][rows], bi[0][rows]);
                var kh = nn.functional.linear(k[.., bb], w[1][rows], bi[1][rows]);
                var vh = nn.functional.linear(v[.., bb], w[2][rows], bi[2][rows]);
                var logits = qh.matmul(kh.T) / Math.Sqrt(hd) + bias[bb * h + hh];
                logits = logits.masked_fill(pad[bb].unsqueeze(0), double.NegativeInfinity);
                heads.Add(logits.softmax(-1).matmul(vh));
            }
            expected[.., bb] = mha.out_proj.forward(torch.cat(heads, 1));
        }
        var maxErr = (got - expected).abs().max().item<float>();
        Assert.That(maxErr, Is.LessThan(1e-5f));
    }

    [Test]
    public void InverseSigmoidInvertsSigmoidAndClamps()
    {
        using var scope = NewDisposeScope();
        var x = torch.tensor(new[] { 0.2f, 0.5f, 0.9f, 0f, 1.5f });
        var y = BoxOps.InverseSigmoid(x, 1e-3);
        Assert.That(y[0].item<float>(), Is.EqualTo(MathF.Log(0.2f / 0.8f)).Within(1e-6));
        Assert.That(y[1].item<float>(), Is.EqualTo(0f).Within(1e-7));
        Assert.That(y[3].item<float>(), Is.EqualTo(MathF.Log(1e-3f / 1f)).Within(1e-5));
        Assert.That(y[4].item<float>(), Is.EqualTo(MathF.Log(1f / 1e-3f)).Within(1e-4));
    }

    [Test]
    public void BoxConversionsRoundTrip()
    {
        using var scope = NewDisposeScope();
        var cxcywh = torch.tensor(new[] { 0.5f, 0.4f, 0.2f, 0.6f }).view(1, 4);
        var xyxy = BoxOps.CxcywhToXyxy(cxcywh);
        Assert.That(xyxy.data<float>().ToArray(), Is.EqualTo(new[] { 0.4f, 0.1f, 0.6f, 0.7f }).Within(1e-6));
        Assert.That((BoxOps.XyxyToCxcywh(xyxy) - cxcywh).abs().max().item<float>(), Is.LessThan(1e-6f));
        var xywh = BoxOps.XyxyToXywh(xyxy);
        Assert.That(xywh.data<float>().ToArray(), Is.EqualTo(new[] { 0.4f, 0.1f, 0.2f, 0.6f }).Within(1e-6));
        Assert.That((BoxOps.XywhToCxcywh(xywh) - cxcywh).abs().max().item<float>(), Is.LessThan(1e-6f));
        var giou = BoxOps.GeneralizedBoxIou(xyxy, torch.tensor(new[] { 0.6f, 0.1f, 0.8f, 0.7f }).view(1, 4));
        Assert.That(giou.item<float>(), Is.EqualTo(0f).Within(1e-6)); // touching boxes: IoU 0, hull = union
    }
}
