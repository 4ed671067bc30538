using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>Freeze presets and per-module freezing: frozen parameters get no gradient, the others do.</summary>
[TestFixture, Category("Fast")]
public class ParameterFreezingTests
{
    [Test]
    public void PatternsArePrefixesOrGlobs()
    {
        Assert.Multiple(() =>
        {
            Assert.That(ParameterFreezing.Matches("transformer.encoder.layers.0.linear1.weight", "transformer.encoder"), Is.True);
            Assert.That(ParameterFreezing.Matches("transformer.encoder_x.weight", "transformer.encoder"), Is.False);
            Assert.That(ParameterFreezing.Matches("transformer.encoder", "transformer.encoder"), Is.True);
            Assert.That(ParameterFreezing.Matches("transformer.decoder.layers.2.self_attn.in_proj_weight", "transformer.decoder.layers.*.self_attn.*"), Is.True);
            Assert.That(ParameterFreezing.Matches("transformer.decoder.layers.2.cross_attn.in_proj_weight", "transformer.decoder.layers.*.self_attn.*"), Is.False);
            Assert.That(ParameterFreezing.Matches("a.bias", "*bias"), Is.True);
            Assert.That(ParameterFreezing.Matches("a.b1", "a.b?"), Is.True);
        });
    }

    /// <summary>
    /// Vision encoder frozen by preset, one fusion-encoder layer by glob: after a backward those get no gradient, every other
    /// parameter that upstream's training step gives a gradient (fixture <c>params_without_grad</c> are the unused ones) has one.
    /// </summary>
    [Test, Category("Parity")]
    public void FrozenParametersGetNoGradient()
    {
        using var fx = Fixtures.Tiny(TrainingFixture.Scenario);
        using var json = TrainingFixture.Json();
        var unused = json.RootElement.GetProperty("params_without_grad").EnumerateArray().Select(e => e.GetString()!).ToHashSet();
        using var model = TrainingFixture.LoadTinyModel();
        var tokenizer = TrainingFixture.Tokenizer();
        using var batch = TrainingFixture.Batch(fx);
        TrainingMode.Apply(model, TrainingModelOptions.DeterministicRun);

        var summary = ParameterFreezing.Apply(model, FreezePreset.VisionEncoder, ["transformer.encoder.layers.1.*"]);
        var parameters = model.named_parameters().ToList();
        var frozen = parameters.Where(p => p.name.StartsWith("backbone.vision_backbone.") || p.name.StartsWith("transformer.encoder.layers.1."))
            .Select(p => p.name).ToHashSet();
        Assert.That(summary.FrozenTensors, Is.EqualTo(frozen.Count));
        Assert.That(parameters.Where(p => !p.parameter.requires_grad).Select(p => p.name), Is.EquivalentTo(frozen));

        using (var scope = NewDisposeScope())
        {
            using var outputs = Sam3TrainingForward.Forward(model, tokenizer, batch);
            TrainingFixture.Named(outputs).Select(x => x.Value.square().mean()).Aggregate((a, b) => a + b).backward();
        }
        var withGrad = parameters.Where(p => p.parameter.grad is not null).Select(p => p.name).ToHashSet();
        var expected = parameters.Select(p => p.name).Where(n => !frozen.Contains(n) && !unused.Contains(n)).ToHashSet();
        Assert.That(withGrad, Is.EquivalentTo(expected));
        foreach (var (_, p) in parameters) p.grad?.Dispose();

        // presets reset what an earlier call froze
        var none = ParameterFreezing.Apply(model, FreezePreset.None);
        Assert.That(none.FrozenTensors, Is.Zero);
        Assert.That(parameters.All(p => p.parameter.requires_grad), Is.True);
        Assert.Throws<ArgumentException>(() => ParameterFreezing.Apply(model, FreezePreset.None, ["transformer.no_such_module"]));
    }

    /// <summary>Trainable counts per preset: tiny model (on the model) and full model (from the key manifest, no weights).</summary>
    [Test]
    public void PresetCountsOfTheTinyAndFullModels()
    {
        using var model = TrainingFixture.LoadTinyModel();
        var tinyParams = model.named_parameters().Select(p => (p.name, p.parameter.numel())).ToList();

        using var doc = JsonDocument.Parse(File.ReadAllText(SharedData.Parity("full", "manifest.json")));
        var image = doc.RootElement.GetProperty("image_model");
        // the fine-tuned detector: no interactive heads / SAM2 neck; freqs_cis are buffers
        var fullParams = image.GetProperty("state_dict").EnumerateArray()
            .Select(e => (name: e.GetProperty("key").GetString()!, n: e.GetProperty("shape").EnumerateArray().Aggregate(1L, (a, x) => a * x.GetInt64())))
            .Where(p => !p.name.EndsWith(".freqs_cis") && !p.name.StartsWith("inst_interactive_predictor.")
                        && !p.name.StartsWith("backbone.vision_backbone.sam2_convs."))
            .ToList();
        var byPrefix = image.GetProperty("param_counts_by_prefix");
        long P(string prefix) => byPrefix.GetProperty(prefix).GetInt64();
        long fullTotal = P("backbone") - P("backbone.vision_backbone.sam2_convs") + P("geometry_encoder") + P("transformer")
                         + P("segmentation_head") + P("dot_prod_scoring");
        Assert.That(fullParams.Sum(p => p.n), Is.EqualTo(fullTotal));

        foreach (var preset in Enum.GetValues<FreezePreset>())
        {
            var onModel = ParameterFreezing.Apply(model, preset);
            var tiny = ParameterFreezing.Plan(tinyParams, preset);
            var full = ParameterFreezing.Plan(fullParams, preset);
            TestContext.Out.WriteLine($"{preset,-14} tiny: {tiny}; full: {full}");
            Assert.That(onModel, Is.EqualTo(tiny));
            Assert.That(full.TrainableElements + full.FrozenElements, Is.EqualTo(fullTotal));
            long expectedFrozen = preset switch
            {
                FreezePreset.None => 0,
                FreezePreset.VisionEncoder => P("backbone.vision_backbone") - P("backbone.vision_backbone.sam2_convs"),
                FreezePreset.TextEncoder => P("backbone.language_backbone"),
                FreezePreset.AllBackbones => P("backbone") - P("backbone.vision_backbone.sam2_convs"),
                FreezePreset.AllButHeads => fullTotal - P("dot_prod_scoring") - P("segmentation_head") - P("transformer.decoder.bbox_embed")
                                            - P("transformer.decoder.presence_token_head") - P("transformer.decoder.presence_token_out_norm"),
                _ => throw new InvalidOperationException(),
            };
            Assert.That(full.FrozenElements, Is.EqualTo(expectedFrozen), preset.ToString());
        }
    }
}
