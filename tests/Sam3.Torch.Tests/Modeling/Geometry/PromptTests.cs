using NUnit.Framework;
using Sam3.Torch.Modeling.Geometry;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Geometry;

[TestFixture, Category("Fast")]
public class PromptTests
{
    [Test]
    public void ConcatPaddedSequencesKeepsValidEntriesContiguous()
    {
        using var scope = NewDisposeScope();
        // batch 0: seq1 = [1, 2], seq2 = [10]; batch 1: seq1 = [3, pad], seq2 = [20]
        var seq1 = torch.tensor(new float[] { 1, 3, 2, -1 }).view(2, 2, 1);
        var mask1 = torch.tensor(new[] { false, false, false, true }).view(2, 2);
        var seq2 = torch.tensor(new float[] { 10, 20 }).view(1, 2, 1);
        var mask2 = torch.zeros(2, 1, dtype: ScalarType.Bool);
        var (seq, mask, index) = Prompt.ConcatPaddedSequencesWithIndex(seq1, mask1, seq2, mask2);
        Assert.That(seq.shape, Is.EqualTo(new long[] { 3, 2, 1 }));
        // positions: batch 0 -> 1, 2, 10 ; batch 1 -> 3, 20, (zero padding)
        Assert.That(seq.squeeze(-1).data<float>().ToArray(), Is.EqualTo(new float[] { 1, 3, 2, 20, 10, 0 }));
        Assert.That(mask.data<bool>().ToArray(), Is.EqualTo(new[] { false, false, false, false, false, true }));
        Assert.That(index.data<long>().ToArray(), Is.EqualTo(new long[] { 2, 1 }));
    }

    [Test]
    public void AppendBoxesAccumulatesAndDefaultsAreUpstreams()
    {
        using var scope = NewDisposeScope();
        var p = Prompt.Empty(1);
        Assert.That(p.NumBoxes, Is.EqualTo(0));
        Assert.That(p.NumPoints, Is.EqualTo(0));
        Assert.That(p.PointEmbeddings.shape, Is.EqualTo(new long[] { 0, 1, 2 }));
        p.AppendBoxes(torch.tensor(new[] { 0.5f, 0.5f, 0.2f, 0.2f }).view(1, 1, 4), torch.tensor(new[] { true }).view(1, 1));
        p.AppendBoxes(torch.tensor(new[] { 0.3f, 0.4f, 0.1f, 0.1f }).view(1, 1, 4), torch.tensor(new[] { false }).view(1, 1));
        Assert.That(p.BoxEmbeddings.shape, Is.EqualTo(new long[] { 2, 1, 4 }));
        Assert.That(p.BoxLabels.to(ScalarType.Int64).flatten().data<long>().ToArray(), Is.EqualTo(new long[] { 1, 0 }));
        Assert.That(p.BoxMask.any().item<bool>(), Is.False);
        Assert.That(p.BoxEmbeddings[1, 0, 1].item<float>(), Is.EqualTo(0.4f));

        var pts = new Prompt(pointEmbeddings: torch.zeros(3, 2, 2));
        Assert.That(pts.PointLabels.eq(1).all().item<bool>(), Is.True, "labels default to positive");
        Assert.That(pts.BoxEmbeddings.shape, Is.EqualTo(new long[] { 0, 2, 4 }));
    }

    [Test]
    public void CloneIsIndependent()
    {
        using var scope = NewDisposeScope();
        var p = Prompt.Empty(1);
        p.AppendBoxes(torch.tensor(new[] { 0.5f, 0.5f, 0.2f, 0.2f }).view(1, 1, 4), torch.tensor(new[] { true }).view(1, 1));
        var c = p.Clone();
        c.AppendPoints(torch.zeros(2, 1, 2), torch.ones(2, 1, dtype: ScalarType.Int64));
        Assert.That(p.NumPoints, Is.EqualTo(0));
        Assert.That(c.NumPoints, Is.EqualTo(2));
        Assert.That(c.NumBoxes, Is.EqualTo(1));
    }

    [Test]
    public void InvalidPromptsAreTypedErrors()
    {
        using var scope = NewDisposeScope();
        Assert.Throws<Sam3PromptException>(() => new Prompt());
        Assert.Throws<Sam3PromptException>(() => new Prompt(boxEmbeddings: torch.zeros(1, 1, 3)));
        Assert.Throws<Sam3PromptException>(() => new Prompt(boxEmbeddings: torch.zeros(2, 1, 4), boxMask: torch.zeros(1, 3, dtype: ScalarType.Bool)));
        Assert.Throws<Sam3PromptException>(() => new Prompt(boxEmbeddings: torch.zeros(1, 2, 4), pointEmbeddings: torch.zeros(1, 3, 2)));
        var p = Prompt.Empty(1);
        Assert.Throws<Sam3PromptException>(() => p.AppendBoxes(torch.zeros(1, 2, 4), torch.ones(1, 2)));
        // a left-padded mask is rejected (upstream asserts right padding)
        Assert.Throws<Sam3PromptException>(() => Prompt.ConcatPaddedSequences(torch.zeros(2, 1, 1), torch.tensor(new[] { true, false }).view(1, 2),
                                                                               torch.zeros(1, 1, 1), torch.zeros(1, 1, dtype: ScalarType.Bool)));
    }
}
