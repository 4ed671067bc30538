using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Sam;
using Sam3.Torch.Modeling.Tracker;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Sam;

/// <summary>
/// Scenario d (SAM1-style predict_inst): the tracker's prompt encoder and mask decoder fed with the recorded SAM2-neck
/// features (level 2 + no_mem_embed as image embedding, levels 0/1 already through conv_s0/conv_s1) and the prompts of
/// the scenario parameters, compared with every recorded prompt-encoder / mask-decoder tensor.
/// </summary>
[TestFixture, Category("Fast")]
public class PredictInstParityTests
{
    private static Sam3TrackerBase LoadTracker()
    {
        var tracker = new Sam3TrackerBase(Sam3Config.Tiny);
        TinyWeights.LoadInto(tracker, "tracker.");
        tracker.eval();
        return tracker;
    }

    private sealed record Call(string Tag, float[][]? Points, int[]? Labels, float[][]? Boxes, bool Multimask, bool UsesMaskInput);

    private static List<Call> ReadCalls(ScenarioFixture fx)
    {
        static float[][]? Arr(JsonElement kw, string name) =>
            kw.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Array
                ? v.EnumerateArray().Select(r => r.EnumerateArray().Select(x => x.GetSingle()).ToArray()).ToArray() : null;
        var calls = new List<Call>();
        foreach (var c in fx.Parameters.GetProperty("calls").EnumerateArray())
        {
            var kw = c.GetProperty("kwargs");
            int[]? labels = kw.TryGetProperty("point_labels", out var l) && l.ValueKind == JsonValueKind.Array ? l.EnumerateArray().Select(x => x.GetInt32()).ToArray() : null;
            calls.Add(new Call(c.GetProperty("tag").GetString()!, Arr(kw, "point_coords"), labels, Arr(kw, "box"),
                               kw.GetProperty("multimask_output").GetBoolean(), kw.TryGetProperty("mask_input", out _)));
        }
        return calls;
    }

    /// <summary>
    /// SAM2Transforms.transform_coords with normalize_coords=True: x/W·S, y/H·S (S = model resolution). Boxes become
    /// 2 points with labels 2, 3 placed before the user points; a batch of boxes gives one prompt set per box.
    /// </summary>
    private static (Tensor coords, Tensor labels) Prompts(Call call, int origH, int origW, int res)
    {
        Tensor Transform(float[][] pts) => torch.tensor(pts.SelectMany(p => new[] { p[0] / origW * res, p[1] / origH * res }).ToArray()).reshape(-1, 2);
        Tensor? coords = null, labels = null;
        if (call.Points is not null)
        {
            coords = Transform(call.Points).unsqueeze(0);
            labels = torch.tensor(call.Labels!).unsqueeze(0);
        }
        if (call.Boxes is not null)
        {
            var box = Transform(call.Boxes.SelectMany(b => new[] { new[] { b[0], b[1] }, new[] { b[2], b[3] } }).ToArray()).reshape(-1, 2, 2);
            var boxLabels = torch.tensor(new[] { 2, 3 }).unsqueeze(0).repeat(box.shape[0], 1);
            coords = coords is null ? box : torch.cat([box, coords], 1);
            labels = labels is null ? boxLabels : torch.cat([boxLabels, labels], 1);
        }
        return (coords!, labels!);
    }

    private ScenarioFixture _fx = null!;
    private Sam3TrackerBase _tracker = null!;

    [OneTimeSetUp]
    public void Load()
    {
        _fx = Fixtures.Tiny("d_predict_inst");
        _tracker = LoadTracker();
    }

    [OneTimeTearDown]
    public void Unload()
    {
        _tracker?.Dispose();
        _fx?.Dispose();
    }

    [Test]
    public void ScenarioHasTheFourCalls()
        => Assert.That(ReadCalls(_fx).Select(x => x.Tag), Is.EqualTo(new[] { "call1", "call2", "call3", "call4" }));

    [TestCase("call1")]
    [TestCase("call2")]
    [TestCase("call3")]
    [TestCase("call4")]
    public void PromptEncoderAndMaskDecoderMatchCall(string tag)
    {
        var fx = _fx;
        var tracker = _tracker;
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var cfg = Sam3Config.Tiny;
        int origH = fx.Parameters.GetProperty("original_hw")[0].GetInt32(), origW = fx.Parameters.GetProperty("original_hw")[1].GetInt32();
        int c = cfg.Tracker.HiddenDim;
        // predict_inst: image embedding = SAM2-neck level 2 + no_mem_embed; levels 0/1 were projected by conv_s0/conv_s1 in set_image
        var imageEmbed = fx.Get("state.sam2_backbone_fpn.2") + tracker.no_mem_embed.reshape(1, c, 1, 1);
        var highRes = (fx.Get("state.sam2_backbone_fpn.0"), fx.Get("state.sam2_backbone_fpn.1"));
        var imagePe = tracker.sam_prompt_encoder.GetDensePe();

        var call = ReadCalls(fx).Single(x => x.Tag == tag);
        var (coords, labels) = Prompts(call, origH, origW, cfg.Tracker.ImageSize);
        Tensor? maskInput = null;
        if (call.UsesMaskInput)
        {
            // call2: mask_input = call1.low_res_masks[argmax(call1.iou_predictions)]
            long best = fx.Get("call1.iou_predictions").argmax().item<long>();
            maskInput = fx.Get("call1.low_res_masks")[best].reshape(1, 1, cfg.Tracker.LowResMaskSize, cfg.Tracker.LowResMaskSize);
        }
        // predict(): boxes are merged into the points, so the prompt encoder always gets boxes=None (and appends a padding point)
        var (sparse, dense) = tracker.sam_prompt_encoder.forward(coords, labels, null, maskInput);
        Fixtures.AssertClose(fx, $"{tag}.sam.prompt_encoder.0", sparse);
        Fixtures.AssertClose(fx, $"{tag}.sam.prompt_encoder.1", dense);

        bool batched = coords.shape[0] > 1;
        using var dec = tracker.sam_mask_decoder.forward(imageEmbed, imagePe, sparse, dense, call.Multimask, batched, highRes);
        Fixtures.AssertClose(fx, $"{tag}.sam.mask_decoder.0", dec.Masks);
        Fixtures.AssertClose(fx, $"{tag}.sam.mask_decoder.1", dec.IouPred);
        Fixtures.AssertClose(fx, $"{tag}.sam.mask_decoder.2", dec.SamTokensOut);
        Fixtures.AssertClose(fx, $"{tag}.sam.mask_decoder.3", dec.ObjectScoreLogits);

        // predictor outputs: iou_predictions = squeeze(0), low_res_masks = clamp(±32).squeeze(0)
        double clamp = cfg.HardcodedInClasses.Sam1LowResLogitClamp;
        var lowRes = dec.Masks.clamp(-clamp, clamp);
        Fixtures.AssertClose(fx, $"{tag}.low_res_masks", batched ? lowRes : lowRes.squeeze(0));
        Fixtures.AssertClose(fx, $"{tag}.iou_predictions", batched ? dec.IouPred : dec.IouPred.squeeze(0));
    }

    [Test]
    public void DenseImagePeIsTheRandomFourierGrid()
    {
        // mathematics: pe(i,j) = [sin(2π v), cos(2π v)], v = (2·((j+0.5)/W, (i+0.5)/H) − 1) · G
        using var pe = new PositionEmbeddingRandom(4);
        using var scope = NewDisposeScope();
        var g = pe.positional_encoding_gaussian_matrix;
        var dense = pe.forward(3, 5);
        Assert.That(dense.shape, Is.EqualTo(new long[] { 8, 3, 5 }));
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 5; j++)
            {
                double x = 2 * (j + 0.5) / 5 - 1, y = 2 * (i + 0.5) / 3 - 1;
                for (int f = 0; f < 4; f++)
                {
                    double v = 2 * Math.PI * (x * g[0, f].item<float>() + y * g[1, f].item<float>());
                    Assert.That(dense[f, i, j].item<float>(), Is.EqualTo(Math.Sin(v)).Within(1e-5));
                    Assert.That(dense[f + 4, i, j].item<float>(), Is.EqualTo(Math.Cos(v)).Within(1e-5));
                }
            }
    }

    [Test]
    public void BoxPromptsEqualCornerPointsWithLabels2And3()
    {
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var pe = _tracker.sam_prompt_encoder;
        var boxes = torch.tensor(new float[] { 10, 20, 200, 300, 0, 0, 335, 335 }).reshape(2, 4);
        var corners = boxes.reshape(2, 2, 2);
        var labels = torch.tensor(new[] { 2, 3, 2, 3 }).reshape(2, 2);
        var viaBoxes = pe.EmbedBoxes(boxes);
        var viaPoints = pe.EmbedPoints(corners, labels, pad: false);
        Assert.That((viaBoxes - viaPoints).abs().max().item<float>(), Is.LessThan(1e-6f));
        // with boxes present the points get no padding point: [points (1), box corners (2)]
        var (sparse, dense) = pe.forward(torch.zeros(2, 1, 2), torch.ones(2, 1, dtype: ScalarType.Int32), boxes, null);
        Assert.That(sparse.shape, Is.EqualTo(new long[] { 2, 3, pe.embed_dim }));
        Assert.That((sparse[.., 1..] - viaBoxes).abs().max().item<float>(), Is.LessThan(1e-6f));
        Assert.That(dense.shape, Is.EqualTo(new long[] { 2, pe.embed_dim, pe.image_embedding_size.H, pe.image_embedding_size.W }));
        // label −1 replaces the encoding by not_a_point_embed; label 0/1 add point_embeddings[0/1]
        var pad = pe.EmbedPoints(torch.tensor(new float[] { 5, 7 }).reshape(1, 1, 2), torch.tensor(new[] { -1 }).reshape(1, 1), pad: false);
        Assert.That((pad[0, 0] - pe.not_a_point_embed.weight![0]).abs().max().item<float>(), Is.EqualTo(0f));
        Assert.Throws<Sam3PromptException>(() => pe.forward(torch.zeros(1, 2, 3), torch.ones(1, 2), null, null));
        Assert.Throws<Sam3PromptException>(() => pe.forward(null, null, null, torch.zeros(1, 1, 10, 10)));
    }
}
