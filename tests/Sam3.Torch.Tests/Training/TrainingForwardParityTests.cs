using NUnit.Framework;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// The training-mode forward (DAC, aux outputs, o2m masks) against one step of the official trainer on the tiny model
/// (<c>tiny/h_training_step</c>, dropout/drop-path 0), and the gradient flow of its outputs back to the parameters.
/// </summary>
[TestFixture, Category("Parity"), Category("Fast")]
public class TrainingForwardParityTests
{
    // README-h: forward values rtol 1e-5 + atol 1e-5 (raised to 4× the reference's own two-run noise where that is larger).
    private static readonly Tolerance ForwardTolerance = new(Atol: 1e-5, Rtol: 1e-5);

    [Test]
    public void ForwardMatchesTheOfficialTrainer()
    {
        using var fx = Fixtures.Tiny(TrainingFixture.Scenario);
        using var model = TrainingFixture.LoadTinyModel();
        var tokenizer = TrainingFixture.Tokenizer();
        using var batch = TrainingFixture.Batch(fx);
        var settings = TrainingMode.Apply(model, TrainingModelOptions.DeterministicRun);
        Assert.That(settings.All(s => s.Probability == 0), Is.True);

        var recorded = new Dictionary<string, Tensor>();
        using var scope = NewDisposeScope();
        using var outputs = Sam3TrainingForward.Forward(model, tokenizer, batch, (name, t) =>
        {
            if (!name.Contains('.') || name.StartsWith("text.") || name.StartsWith("decoder.") || name is "vision_features" or "encoder_hidden_states")
                recorded[name] = t.detach().clone().DetachFromDisposeScope();
        });

        var results = new List<ComparisonResult>();
        void Check(string name, Tensor actual)
        {
            var info = fx.Tensors.TryGetValue(name, out var i) ? i : null;
            results.Add(ForwardTolerance.Compare(name, actual, fx.Get(name), info?.ObservedMaxAbsDiff));
        }
        Check("data.text_token_ids", recorded["text.token_ids"]);
        foreach (var name in new[] { "text.language_mask", "text.language_features", "vision_features", "encoder_hidden_states",
                     "decoder.hs", "decoder.ref_boxes", "decoder.presence_logits" })
            Check("fwd." + name, recorded[name]);
        var ours = TrainingFixture.Named(outputs).ToDictionary(x => x.Name, x => x.Value);
        var expected = fx.Tensors.Keys.Where(k => k.StartsWith("fwd.out.")).ToList();
        Assert.That(ours.Keys.OrderBy(k => k), Is.EqualTo(expected.OrderBy(k => k)), "output keys (final, o2m, masks, aux 0..L-2)");
        foreach (var name in expected) Check(name, ours[name]);

        foreach (var r in results) TestContext.Out.WriteLine(r);
        Assert.That(results.Where(r => !r.Passed).Select(r => r.ToString()), Is.Empty);
        Assert.That(outputs.Aux, Has.Count.EqualTo(model.Config.Decoder.NumLayers - 1));
        foreach (var t in recorded.Values) t.Dispose();
    }

    [Test]
    public void GradientsReachExactlyTheParametersUpstreamTrains()
    {
        using var fx = Fixtures.Tiny(TrainingFixture.Scenario);
        using var json = TrainingFixture.Json();
        using var model = TrainingFixture.LoadTinyModel();
        var tokenizer = TrainingFixture.Tokenizer();
        using var batch = TrainingFixture.Batch(fx);
        TrainingMode.Apply(model, TrainingModelOptions.DeterministicRun);

        var withoutGrad = json.RootElement.GetProperty("params_without_grad").EnumerateArray().Select(e => e.GetString()!).ToHashSet();
        var allZero = json.RootElement.GetProperty("params_with_all_zero_grad").EnumerateArray().Select(e => e.GetString()!).ToHashSet();
        var withGrad = fx.Tensors.Keys.Where(k => k.StartsWith("grad.")).Select(k => k["grad.".Length..])
            .Concat(fx.Tensors.Keys.Where(k => k.StartsWith("grad_rows.")).Select(k => k["grad_rows.".Length..])).ToHashSet();

        var parameters = model.named_parameters().ToList();
        Assert.That(parameters.Select(p => p.name).ToHashSet(), Is.EquivalentTo(withGrad.Union(withoutGrad)), "parameter names");

        using (var scope = NewDisposeScope())
        {
            using var outputs = Sam3TrainingForward.Forward(model, tokenizer, batch);
            // a scalar that depends on every output (squares: no output's gradient cancels by symmetry)
            var loss = TrainingFixture.Named(outputs).Select(x => x.Value.square().mean()).Aggregate((a, b) => a + b);
            loss.backward();
        }

        var gotGrad = parameters.Where(p => p.parameter.grad is not null).Select(p => p.name).ToHashSet();
        var zeroGrad = parameters.Where(p => p.parameter.grad is { } g && g.abs().max().item<float>() == 0).Select(p => p.name).ToHashSet();
        TestContext.Out.WriteLine($"{gotGrad.Count} of {parameters.Count} parameters have a gradient; all-zero: {string.Join(", ", zeroGrad)}");
        Assert.Multiple(() =>
        {
            Assert.That(gotGrad, Is.EquivalentTo(withGrad), "parameters with a gradient");
            Assert.That(gotGrad, Has.Count.EqualTo(331)); // 330 grad.* + the token embedding (grad_rows)
            // the text-only prompt leaves the geometry encoder's point/box projections at exactly zero, as upstream
            Assert.That(zeroGrad, Is.EquivalentTo(allZero), "parameters whose gradient is all zero");
        });
        foreach (var (_, p) in parameters) p.grad?.Dispose();
    }
    /// <summary>
    /// Queries with input boxes (upstream's RandomizeInputBbox / box-prompted training): the geometry encoder's box path
    /// (direct projection, RoIAlign pooling over two images, sine encoding) and <c>img_pre_norm</c> get non-zero gradients.
    /// </summary>
    [Test]
    public void BoxPromptsTrainTheGeometryEncoder()
    {
        using var fx = Fixtures.Tiny(TrainingFixture.Scenario);
        using var model = TrainingFixture.LoadTinyModel();
        var tokenizer = TrainingFixture.Tokenizer();
        using var plain = TrainingFixture.Batch(fx);
        // one box per query (the first target box, or a fixed box for the negative query), the second one padded for query 2
        using var boxes = torch.tensor(new float[] { 0.3f, 0.6f, 0.1f, 0.5f, 0.5f, 0.5f, 0.2f, 0.2f, 0.3f, 0.7f, 0.14f, 0.19f,
                                                     0f, 0f, 0f, 0f, 0f, 0f, 0f, 0f, 0.8f, 0.6f, 0.13f, 0.19f }).view(2, 3, 4);
        using var batch = new TrainingBatch
        {
            ImgBatch = plain.ImgBatch.alias(), FindTextBatch = plain.FindTextBatch, FindImgIds = plain.FindImgIds.alias(),
            FindTextIds = plain.FindTextIds.alias(), Targets = plain.Targets, // disposed twice: idempotent
            InputBoxes = boxes.alias(),
            InputBoxesMask = torch.tensor(new[] { false, true, false, true, false, false }).view(3, 2),
            InputBoxesLabel = torch.tensor(new long[] { 1, 0, 1, 0, 0, 1 }).view(2, 3),
        };
        TrainingMode.Apply(model, TrainingModelOptions.DeterministicRun);
        using (var scope = NewDisposeScope())
        {
            using var outputs = Sam3TrainingForward.Forward(model, tokenizer, batch);
            TrainingFixture.Named(outputs).Select(x => x.Value.square().mean()).Aggregate((a, b) => a + b).backward();
        }
        var grads = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad);
        foreach (var name in new[] { "geometry_encoder.boxes_direct_project.weight", "geometry_encoder.boxes_pool_project.weight",
                     "geometry_encoder.boxes_pos_enc_project.weight", "geometry_encoder.img_pre_norm.weight", "geometry_encoder.label_embed.weight" })
        {
            Assert.That(grads[name], Is.Not.Null, name);
            Assert.That(grads[name]!.abs().max().item<float>(), Is.GreaterThan(0), name);
        }
        // no point prompts: their projections still get an all-zero gradient, as with text-only queries
        Assert.That(grads["geometry_encoder.points_direct_project.weight"]!.abs().max().item<float>(), Is.EqualTo(0));
        foreach (var g in grads.Values) g?.Dispose();
    }
}
