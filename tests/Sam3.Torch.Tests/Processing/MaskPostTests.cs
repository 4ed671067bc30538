using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Parity;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Processing;

[TestFixture, Category("Fast")]
public class MaskPostTests
{
    private static bool[] Grid(params string[] rows) => rows.SelectMany(r => r.Select(ch => ch == '1')).ToArray();

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    private static float[] Logits(params string[] rows) => rows.SelectMany(r => r.Select(ch => ch == '#' ? 1f : -1f)).ToArray();

    [Test]
    public void DiagonalNeighboursAreConnected()
    {
        var cc = MaskPost.ConnectedComponents(Grid(
            "1000",
            "0101",
            "0001",
            "1100"), 4, 4);
        Assert.That(cc.Count, Is.EqualTo(3)); // 4-connectivity would give 4
        Assert.That(cc.Labels[0], Is.EqualTo(cc.Labels[5]));
        Assert.That(cc.Labels[7], Is.EqualTo(cc.Labels[11]));
        Assert.That(cc.Labels[12], Is.EqualTo(cc.Labels[13]));
        Assert.That(new[] { cc.Areas[0], cc.Areas[5], cc.Areas[7], cc.Areas[12] }, Is.All.EqualTo(2));
        Assert.That(cc.Areas[1], Is.EqualTo(0));
        Assert.That(cc.Labels[1], Is.EqualTo(0));
    }

    [Test]
    public void LabelsMergeAcrossUShapesAndAntiDiagonals()
    {
        var u = MaskPost.ConnectedComponents(Grid(
            "101",
            "101",
            "111"), 3, 3);
        Assert.That(u.Count, Is.EqualTo(1));
        Assert.That(u.Areas.Where(a => a > 0), Is.All.EqualTo(7));
        var anti = MaskPost.ConnectedComponents(Grid(
            "001",
            "010",
            "100"), 3, 3);
        Assert.That(anti.Count, Is.EqualTo(1));
        Assert.That(anti.Areas[2], Is.EqualTo(3));
        // a spiral: the last pixel joins labels created far apart
        var spiral = MaskPost.ConnectedComponents(Grid(
            "11111",
            "00001",
            "11101",
            "10001",
            "11111"), 5, 5);
        Assert.That(spiral.Count, Is.EqualTo(1));
        Assert.That(spiral.Areas.Max(), Is.EqualTo(17));
    }

    [Test]
    public void LabelsAreRasterOrderedAndCountsAreExact()
    {
        var rnd = new Random(5);
        int h = 37, w = 53;
        var m = Enumerable.Range(0, h * w).Select(_ => rnd.NextDouble() < 0.45).ToArray();
        var cc = MaskPost.ConnectedComponents(m, h, w);
        // flood fill (BFS, 8-neighbourhood) as an independent reference
        var seen = new int[h * w];
        int next = 0;
        for (int i = 0; i < h * w; i++)
        {
            if (!m[i] || seen[i] != 0) continue;
            next++;
            var q = new Queue<int>();
            q.Enqueue(i); seen[i] = next;
            var members = new List<int>();
            while (q.Count > 0)
            {
                int p = q.Dequeue(); members.Add(p);
                int py = p / w, px = p % w;
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++)
                    {
                        int y = py + dy, x = px + dx;
                        if (y < 0 || y >= h || x < 0 || x >= w) continue;
                        int j = y * w + x;
                        if (m[j] && seen[j] == 0) { seen[j] = next; q.Enqueue(j); }
                    }
            }
            foreach (var p in members)
            {
                Assert.That(cc.Labels[p], Is.EqualTo(next));
                Assert.That(cc.Areas[p], Is.EqualTo(members.Count));
            }
        }
        Assert.That(cc.Count, Is.EqualTo(next));
    }

    [Test]
    public void Sam1HoleFillingSetsSmallBackgroundComponentsToThresholdPlusOffset()
    {
        using var scope = NewDisposeScope();
        var logits = torch.tensor(Logits(
            "######",
            "#..###",
            "######",
            "###...",
            ".#####",
            "######"), [1, 1, 6, 6]);
        // holes of area <= 2: the interior pair and the border pixel; the border run of 3 stays
        var filled = MaskPost.FillHolesAndSprinkles(logits, maxHoleArea: 2, maxSprinkleArea: 0, threshold: 0, offset: 10);
        var expected = logits.clone();
        expected[0, 0, 1, 1] = 10; expected[0, 0, 1, 2] = 10; expected[0, 0, 4, 0] = 10;
        Assert.That(Same(filled, expected), Is.True);
        // area threshold is inclusive and a threshold other than 0 moves both the mask and the fill value
        var f3 = MaskPost.FillHolesAndSprinkles(logits, 3, 0, threshold: 0, offset: 10);
        Assert.That(f3[0, 0, 3, 3].item<float>(), Is.EqualTo(10f));
        var shifted = MaskPost.FillHolesAndSprinkles(logits, 2, 0, threshold: 1.0, offset: 10); // everything <= 1 is background
        Assert.That(Same(shifted, logits), Is.True, "the whole image is one large background component");
    }

    [Test]
    public void Sam1SprinklePassSeesTheUnfilledLogits()
    {
        using var scope = NewDisposeScope();
        // a 2-pixel hole in a 14-pixel object, sprinkle limit 20: both passes use the input logits
        var logits = torch.tensor(Logits(
            "####",
            "#.##",
            "#.##",
            "####"), [1, 1, 4, 4]);
        var r = MaskPost.FillHolesAndSprinkles(logits, maxHoleArea: 2, maxSprinkleArea: 20, threshold: 0, offset: 10);
        // the object (14 px <= 20) becomes −10 and the hole +10; had the sprinkle pass seen the filled hole, the object
        // would have been 16 px including the hole, which would then have become −10 as well
        Assert.That(r[0, 0, 1, 1].item<float>(), Is.EqualTo(10f));
        Assert.That(r[0, 0, 0, 0].item<float>(), Is.EqualTo(-10f));
    }

    [Test]
    public void VideoFillHolesThenRemovesSprinklesBelowHalfTheForeground()
    {
        using var scope = NewDisposeScope();
        var logits = torch.tensor(Logits(
            "######..",
            "#.####..",
            "######..",
            "........",
            "......#.",
            "........"), [1, 1, 6, 8]);
        var r = MaskPost.FillHolesInMaskScores(logits, maxArea: 4, value: 0.1);
        Assert.That(r[0, 0, 1, 1].item<float>(), Is.EqualTo(0.1f), "1-px hole filled");
        Assert.That(r[0, 0, 4, 6].item<float>(), Is.EqualTo(-0.1f), "1-px island removed (area 1 <= min(4, 19/2))");
        Assert.That(r[0, 0, 0, 0].item<float>(), Is.EqualTo(1f), "large object kept");
        Assert.That(r[0, 0, 3, 3].item<float>(), Is.EqualTo(-1f), "large background kept");
        // a lone small object is protected by the half-area rule
        var lone = torch.tensor(Logits("....", ".##.", "...."), [1, 1, 3, 4]);
        Assert.That(MaskPost.FillHolesInMaskScores(lone, 16, 0.1)[0, 0, 1, 1].item<float>(), Is.EqualTo(1f));
        Assert.That(Same(MaskPost.FillHolesInMaskScores(lone, 0, 0.1), lone), Is.True);
    }

    [TestCase("call1")]
    [TestCase("call2")]
    [TestCase("call3")]
    [TestCase("call4")]
    public void Sam1PostprocessingReproducesPredictInstMasks(string tag)
    {
        using var fx = Fixtures.Tiny("d_predict_inst");
        using var scope = NewDisposeScope();
        var hc = Sam3Config.Tiny.HardcodedInClasses;
        int origH = fx.Parameters.GetProperty("original_hw")[0].GetInt32(), origW = fx.Parameters.GetProperty("original_hw")[1].GetInt32();
        var low = fx.Get($"{tag}.low_res_masks"); // clamped ±32 logits (|x| < 3 here, so the clamp changed nothing)
        bool batched = low.dim() == 4;
        var low4 = batched ? low : low.unsqueeze(0);
        var logits = MaskPost.PostprocessSam1Masks(low4, origH, origW, hc);
        var masks = logits.gt(hc.Sam1MaskThreshold);
        Fixtures.AssertClose(fx, $"{tag}.masks", batched ? masks : masks.squeeze(0));

        // the hole filling matters for this call: without it the masks differ beyond the bool budget (or not at all for call1)
        var plain = nn.functional.interpolate(low4, [origH, origW], mode: InterpolationMode.Bilinear, align_corners: false).gt(0);
        var r = Tolerance.Default.Compare(tag, batched ? plain : plain.squeeze(0), fx.Get($"{tag}.masks"));
        TestContext.Out.WriteLine($"{tag}: without hole filling {r.Mismatches} of {r.Count} pixels differ");
    }

    [Test]
    public void HoleFillingIsExercisedByScenarioD()
    {
        using var fx = Fixtures.Tiny("d_predict_inst");
        using var scope = NewDisposeScope();
        long changed = 0;
        foreach (var tag in new[] { "call1", "call2", "call3", "call4" })
        {
            var low = fx.Get($"{tag}.low_res_masks");
            var filled = MaskPost.FillHolesAndSprinkles(low, 256, 0, 0, 10);
            changed += filled.ne(low).sum().item<long>();
        }
        Assert.That(changed, Is.GreaterThan(0), "no recorded low-res mask has a hole to fill: the parity test would not test filling");
    }
}
