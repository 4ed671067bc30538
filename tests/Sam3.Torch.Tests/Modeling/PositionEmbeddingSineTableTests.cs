using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling;

/// <summary>
/// The separable sine table (<see cref="PositionEmbeddingSine.Table"/>) equals, bit for bit, the dense construction of
/// upstream's <c>PositionEmbeddingSine.forward</c> (written out below op by op: row/column embeddings expanded to H×W,
/// divided by dim_t, sin of the even and cos of the odd channels, stacked, concatenated, moved channel-first).
/// </summary>
[TestFixture, Category("Fast")]
public class PositionEmbeddingSineTableTests
{
    private static Tensor DenseUpstream(long h, long w, int numPosFeats, double temperature, bool normalize, double scale)
    {
        using var scope = NewDisposeScope();
        var yEmbed = torch.arange(1, h + 1, dtype: ScalarType.Float32).view(-1, 1).expand(h, w);
        var xEmbed = torch.arange(1, w + 1, dtype: ScalarType.Float32).view(1, -1).expand(h, w);
        if (normalize)
        {
            yEmbed = yEmbed / ((float)h + 1e-6) * scale;
            xEmbed = xEmbed / ((float)w + 1e-6) * scale;
        }
        var dimT = torch.arange(numPosFeats, dtype: ScalarType.Float32);
        dimT = torch.pow(temperature, 2 * torch.floor_divide(dimT, 2) / numPosFeats);
        Tensor Interleave(Tensor pos) => torch.stack([pos[TensorIndex.Ellipsis, TensorIndex.Slice(0, null, 2)].sin(),
            pos[TensorIndex.Ellipsis, TensorIndex.Slice(1, null, 2)].cos()], dim: -1).flatten(-2);
        var px = Interleave(xEmbed[.., .., TensorIndex.None] / dimT);
        var py = Interleave(yEmbed[.., .., TensorIndex.None] / dimT);
        return torch.cat([py, px], 2).permute(2, 0, 1).contiguous().MoveToOuterDisposeScope();
    }

    private static void AssertBitIdentical(PositionEmbeddingSine pe, long h, long w)
    {
        using var scope = NewDisposeScope();
        var expected = DenseUpstream(h, w, pe.num_pos_feats, pe.temperature, pe.normalize, pe.scale);
        var got = pe.forward(torch.zeros(2, 1, h, w));
        Assert.That(got.shape, Is.EqualTo(new long[] { 2, 2 * pe.num_pos_feats, h, w }));
        Assert.That(got.is_contiguous(), Is.True);
        for (int b = 0; b < 2; b++)
        {
            // exact: every value equal (no tolerance) and the same sign bits (so -0 and +0 would differ); no NaN in either
            var diff = got[b].ne(expected).sum().item<long>();
            Assert.That(diff, Is.EqualTo(0), $"{h}x{w}, batch item {b}: {diff} elements differ from the dense construction");
            Assert.That(got[b].signbit().eq(expected.signbit()).all().item<bool>(), Is.True, $"{h}x{w}: sign bits differ");
            Assert.That(got[b].isnan().any().item<bool>(), Is.False);
        }
    }

    [Test]
    public void FullSizeNeckLevelsAreBitIdenticalToTheDenseConstruction()
    {
        var cfg = Sam3Config.Full;
        using var pe = new PositionEmbeddingSine(cfg.PositionEncoding);
        int grid = cfg.Vit.TokensPerSide;
        foreach (double s in cfg.Neck.ScaleFactors) AssertBitIdentical(pe, (long)(grid * s), (long)(grid * s));
    }

    [Test]
    public void TinyNeckLevelsAndOddShapesAreBitIdentical()
    {
        var cfg = Sam3Config.Tiny;
        using var pe = new PositionEmbeddingSine(cfg.PositionEncoding with { NumPosFeats = cfg.Neck.DModel });
        int grid = cfg.Vit.TokensPerSide;
        foreach (double s in cfg.Neck.ScaleFactors) AssertBitIdentical(pe, (long)(grid * s), (long)(grid * s));
        AssertBitIdentical(pe, 5, 7);
        AssertBitIdentical(pe, 1, 33);
    }

    [Test]
    public void UnnormalisedAndOtherTemperatureAreBitIdentical()
    {
        using var plain = new PositionEmbeddingSine(64, temperature: 20, normalize: false);
        AssertBitIdentical(plain, 9, 4);
        using var tracker = new PositionEmbeddingSine(64, normalize: true);
        AssertBitIdentical(tracker, 64, 64);
    }
}
