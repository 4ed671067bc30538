using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Tracker;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Tracker;

/// <summary>
/// The tracker's <c>_forward_sam_heads</c> / <c>_use_mask_as_output</c>. With point prompts and no boxes the tracker calls
/// the prompt encoder and mask decoder exactly as predict_inst does (padding point, repeat_image=False), so scenario d's
/// recorded decoder outputs are its reference on an initial conditioning frame (features + no_mem_embed).
/// </summary>
[TestFixture, Category("Fast")]
public class SamHeadsTests
{
    private ScenarioFixture _fx = null!;
    private Sam3TrackerBase _tracker = null!;
    private static readonly Sam3Config Cfg = Sam3Config.Tiny;

    [OneTimeSetUp]
    public void Load()
    {
        _fx = Fixtures.Tiny("d_predict_inst");
        _tracker = new Sam3TrackerBase(Cfg);
        TinyWeights.LoadInto(_tracker, "tracker.");
        _tracker.eval();
    }

    [OneTimeTearDown]
    public void Unload()
    {
        _tracker?.Dispose();
        _fx?.Dispose();
    }

    private Tensor ImageEmbed() => _fx.Get("state.sam2_backbone_fpn.2") + _tracker.no_mem_embed.reshape(1, Cfg.Tracker.HiddenDim, 1, 1);
    private (Tensor, Tensor) HighRes() => (_fx.Get("state.sam2_backbone_fpn.0"), _fx.Get("state.sam2_backbone_fpn.1"));

    /// <summary>Scenario d's pixel prompts mapped to the model frame (x/1280·S, y/720·S).</summary>
    private static Tensor ToModel(float[,] pts)
    {
        int s = Cfg.Tracker.ImageSize;
        var flat = new float[pts.Length];
        for (int i = 0; i < pts.GetLength(0); i++) { flat[2 * i] = pts[i, 0] / 1280f * s; flat[2 * i + 1] = pts[i, 1] / 720f * s; }
        return torch.tensor(flat).reshape(1, -1, 2);
    }

    [Test]
    public void OnePointMultimaskMatchesCall1AndPicksTheBestMask()
    {
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        Assert.That(_tracker.UseMultimask(isInitCondFrame: true, numPoints: 1), Is.True);
        using var o = _tracker.ForwardSamHeads(ImageEmbed(), ToModel(new float[,] { { 560, 400 } }), torch.tensor(new[] { 1 }).reshape(1, 1),
                                               highResFeatures: HighRes(), multimaskOutput: true);
        Fixtures.AssertClose(_fx, "call1.sam.mask_decoder.0", o.LowResMultimasks); // object present (score 2.02 > 0)
        Fixtures.AssertClose(_fx, "call1.sam.mask_decoder.1", o.Ious);
        Fixtures.AssertClose(_fx, "call1.sam.mask_decoder.3", o.ObjectScoreLogits);
        long best = _fx.Get("call1.sam.mask_decoder.1").argmax(-1).item<long>();
        Assert.That((o.LowResMasks[0, 0] - _fx.Get("call1.sam.mask_decoder.0")[0, best]).abs().max().item<float>(), Is.LessThan(1e-4f));
        var up = nn.functional.interpolate(o.LowResMultimasks, [Cfg.Tracker.ImageSize, Cfg.Tracker.ImageSize], mode: InterpolationMode.Bilinear, align_corners: false);
        Assert.That((o.HighResMultimasks - up).abs().max().item<float>(), Is.EqualTo(0f));
        Assert.That((o.HighResMasks[0, 0] - up[0, best]).abs().max().item<float>(), Is.EqualTo(0f));
        // object pointer = obj_ptr_proj(token of the best mask); the recorded tokens are the 3 multimask tokens
        var token = _fx.Get("call1.sam.mask_decoder.2")[0, best];
        Assert.That((o.ObjPtr[0] - _tracker.obj_ptr_proj.forward(token)).abs().max().item<float>(), Is.LessThan(1e-4f));
    }

    [Test]
    public void BoxAsTwoPointsWithPreviousMaskMatchesCall3AndCall2()
    {
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        Assert.That(_tracker.UseMultimask(isInitCondFrame: true, numPoints: 2), Is.False, "a box counts as two points");
        using var box = _tracker.ForwardSamHeads(ImageEmbed(), ToModel(new float[,] { { 640, 150 }, { 1000, 600 } }),
                                                 torch.tensor(new[] { 2, 3 }).reshape(1, 2), highResFeatures: HighRes());
        Fixtures.AssertClose(_fx, "call3.sam.mask_decoder.0", box.LowResMultimasks);
        Fixtures.AssertClose(_fx, "call3.sam.mask_decoder.1", box.Ious);
        Assert.That((box.LowResMasks - box.LowResMultimasks).abs().max().item<float>(), Is.EqualTo(0f), "single mask: best = the only mask");

        // mask input already at 4N×4N is used as is (call2: 2 points + call1's best low-res logits)
        long best = _fx.Get("call1.iou_predictions").argmax().item<long>();
        var maskIn = _fx.Get("call1.low_res_masks")[best].reshape(1, 1, Cfg.Tracker.LowResMaskSize, Cfg.Tracker.LowResMaskSize);
        using var two = _tracker.ForwardSamHeads(ImageEmbed(), ToModel(new float[,] { { 560, 400 }, { 800, 250 } }),
                                                 torch.tensor(new[] { 1, 1 }).reshape(1, 2), maskIn, HighRes());
        Fixtures.AssertClose(_fx, "call2.sam.mask_decoder.0", two.LowResMultimasks);
        Fixtures.AssertClose(_fx, "call2.sam.mask_decoder.1", two.Ious);
    }

    [Test]
    public void AbsentObjectGetsNoObjScoreMasksAndNoObjPointer()
    {
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var head = (Sam3.Torch.Modeling.Common.Mlp)_tracker.sam_mask_decoder.pred_obj_score_head!;
        var bias = head.layers[2].bias!;
        var saved = bias.clone();
        try
        {
            bias.sub_(100); // force object_score_logits <= 0
            using var o = _tracker.ForwardSamHeads(ImageEmbed(), ToModel(new float[,] { { 560, 400 } }), torch.tensor(new[] { 1 }).reshape(1, 1),
                                                   highResFeatures: HighRes(), multimaskOutput: true);
            Assert.That(o.ObjectScoreLogits.item<float>(), Is.LessThanOrEqualTo(0f));
            Assert.That(o.LowResMultimasks.eq(Cfg.HardcodedInClasses.NoObjScore).all().item<bool>(), Is.True);
            Assert.That((o.ObjPtr - _tracker.no_obj_ptr).abs().max().item<float>(), Is.EqualTo(0f));
        }
        finally { bias.copy_(saved); }
    }

    [Test]
    public void MaskAsOutputGivesPlusMinusTenLogitsAndMaskDrivenObjectScores()
    {
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        int s = _tracker.input_mask_size; // 4·(4N) = 384 in tiny
        var mask = torch.zeros(2, 1, s, s);
        mask[0, 0, TensorIndex.Slice(100, 200), TensorIndex.Slice(50, 300)] = 1; // object 2 empty
        var feats = torch.cat([ImageEmbed(), ImageEmbed()], 0);
        var (s0, s1) = HighRes();
        using var o = _tracker.UseMaskAsOutput(feats, (torch.cat([s0, s0]), torch.cat([s1, s1])), mask);
        Assert.That((o.HighResMasks - (mask * 20 - 10)).abs().max().item<float>(), Is.EqualTo(0f));
        long low = s / Cfg.Tracker.BackboneStride * 4;
        Assert.That(o.LowResMasks.shape, Is.EqualTo(new long[] { 2, 1, low, low }));
        var expectedLow = nn.functional.interpolate(mask * 20 - 10, [low, low], mode: InterpolationMode.Bilinear, align_corners: false, antialias: true);
        Assert.That((o.LowResMasks - expectedLow).abs().max().item<float>(), Is.EqualTo(0f));
        Assert.That(o.ObjectScoreLogits.flatten().data<float>().ToArray(), Is.EqualTo(new[] { 10f, -10f }));
        Assert.That(o.Ious.eq(1).all().item<bool>(), Is.True);
        Assert.That((o.ObjPtr[1] - _tracker.no_obj_ptr[0]).abs().max().item<float>(), Is.EqualTo(0f));
        // the present object's pointer comes from the SAM heads run on mask_downsample(mask)
        using var sam = _tracker.ForwardSamHeads(feats, maskInputs: _tracker.mask_downsample.forward(mask), highResFeatures: (torch.cat([s0, s0]), torch.cat([s1, s1])));
        Assert.That((o.ObjPtr[0] - sam.ObjPtr[0]).abs().max().item<float>(), Is.EqualTo(0f));
    }

    [Test]
    public void RepeatedTrackerStepsLeaveNoLiveTensors()
    {
        using var _ = torch.no_grad();
        using var feats = ImageEmbed();
        var (s0, s1) = HighRes();
        using var pts = ToModel(new float[,] { { 560, 400 } });
        using var labels = torch.tensor(new[] { 1 }).reshape(1, 1);
        int n = Cfg.Tracker.ImageEmbeddingSize;
        using var cur = feats.flatten(2).permute(2, 0, 1).contiguous();
        using var pos = torch.randn(n * n, 1, Cfg.Tracker.HiddenDim);
        var live = new List<long>();
        for (int i = 0; i < 4; i++)
        {
            using (var o = _tracker.ForwardSamHeads(feats, pts, labels, null, (s0, s1), multimaskOutput: true))
            using (var mem = _tracker.EncodeNewMemory(feats, o.HighResMasks, o.ObjectScoreLogits, isMaskFromPts: true))
            using (var fused = _tracker.PrepareMemoryConditionedFeatures(cur, pos, n, n, [new MemoryFrame(mem.VisionFeatures, mem.VisionPosEnc, 0)],
                                                                          [new ObjectPointer(1, o.ObjPtr)], 16))
            { }
            live.Add(DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        s0.Dispose(); s1.Dispose();
        TestContext.Out.WriteLine($"live tensors after each step: {string.Join(", ", live)}");
        Assert.That(live[3], Is.EqualTo(live[1]), "live tensor count grows across tracker steps");
    }
}
