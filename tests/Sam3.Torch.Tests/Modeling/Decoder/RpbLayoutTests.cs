using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Decoder;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Decoder;

/// <summary>
/// The head-major boxRPB construction (issue 15: one write of the [heads,1+Q,H·W] bias) against upstream's formula
/// written out here: the query-major sum <c>dy.unsqueeze(3) + dx.unsqueeze(2)</c> permuted to head-major, with the layer's
/// zero presence row prepended.
/// </summary>
[TestFixture, Category("Fast")]
public class RpbLayoutTests
{
    [Test]
    public void HeadMajorBiasWithPresenceRowEqualsUpstreamFormulaBitForBit()
    {
        torch.manual_seed(3);
        using var dec = new TransformerDecoder(Sam3Config.Tiny);
        dec.eval();
        dec.UseRpbKernel = false; // the LibTorch construction; the fused kernel is checked in BoxRpbKernelTests
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        const long h = 5, w = 7, q = 6, bs = 2;
        var boxes = rand(q, bs, 4) * 0.6 + 0.2; // cxcywh
        var got = dec.GetRpbMatrix(boxes, h, w, presenceRow: true);
        long heads = dec.num_heads;
        Assert.That(got.shape, Is.EqualTo(new[] { bs, heads, 1 + q, h * w }));
        Assert.That(got.is_contiguous(), Is.True, "the bias is handed to SDPA as is: no copy");

        // upstream _get_rpb_matrix ("log" mode), then the layer's torch.cat([zeros_like(mask[:, :1]), mask], 1)
        var xyxy = BoxOps.CxcywhToXyxy(boxes).transpose(0, 1).reshape(-1, 1, 4);
        var ch = arange(0, h, dtype: ScalarType.Float32) / h;
        var cw = arange(0, w, dtype: ScalarType.Float32) / w;
        var dy = (ch.view(1, -1, 1) - xyxy[.., .., TensorIndex.Slice(1, 4, 2)]).view(bs, q, -1, 2);
        var dx = (cw.view(1, -1, 1) - xyxy[.., .., TensorIndex.Slice(0, 3, 2)]).view(bs, q, -1, 2);
        static Tensor Log(Tensor d)
        {
            var s = d * 8.0;
            return sign(s) * log2(s.abs() + 1.0) / Math.Log2(8.0);
        }
        var ex = dec.boxRPB_embed_x!.forward(Log(dx));
        var ey = dec.boxRPB_embed_y!.forward(Log(dy));
        var upstream = (ey.unsqueeze(3) + ex.unsqueeze(2)).flatten(2, 3).permute(0, 3, 1, 2).flatten(0, 1);
        var expected = cat([zeros_like(upstream[.., TensorIndex.Slice(0, 1)]), upstream], 1);
        Assert.That(got.flatten(0, 1).eq(expected).all().item<bool>(), Is.True, "every element is the same fp32 sum dy + dx");
        Assert.That(got[.., .., 0].abs().max().item<float>(), Is.EqualTo(0f), "presence row");
        Assert.That(dec.GetRpbMatrix(boxes, h, w).eq(got[.., .., TensorIndex.Slice(1, null)]).all().item<bool>(), Is.True,
            "without the presence row: the same queries");
    }
}
