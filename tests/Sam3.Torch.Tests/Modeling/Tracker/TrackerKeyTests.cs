using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Sam;
using Sam3.Torch.Modeling.Tracker;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Tracker;

[TestFixture, Category("Fast")]
public class TrackerKeyTests
{
    [Test]
    public void TinyTrackerKeysAndShapesEqualCheckpointLayout()
    {
        using var tracker = new Sam3TrackerBase(Sam3Config.Tiny);
        TrackerManifest.AssertMatches(tracker, TrackerManifest.Tiny("tracker."), "tiny tracker");
        // tiny/config.json param_counts_by_prefix["tracker"] (parameters only; the Gaussian PE matrix is a buffer)
        Assert.That(TrackerManifest.ParameterCount(tracker), Is.EqualTo(591018));
    }

    [Test]
    public void FullTrackerKeysAndShapesEqualReleasedCheckpointOnMeta()
    {
        using var tracker = TrackerManifest.OnMeta(() => new Sam3TrackerBase(Sam3Config.Full));
        Assert.That(tracker.no_mem_embed.device_type, Is.EqualTo(DeviceType.META));
        TrackerManifest.AssertMatches(tracker, TrackerManifest.Full("tracker."), "full tracker");
        // shared/parity/README.md: inst_interactive_predictor (= tracker) 11,743,362 parameters
        Assert.That(TrackerManifest.ParameterCount(tracker), Is.EqualTo(11_743_362));
    }

    [Test]
    public void SubmoduleKeysEqualTheirPrefixes()
    {
        var cfg = Sam3Config.Tiny;
        using (var pe = new PromptEncoder(cfg)) TrackerManifest.AssertMatches(pe, TrackerManifest.Tiny("tracker.sam_prompt_encoder."), "prompt encoder");
        using (var md = new MaskDecoder(cfg)) TrackerManifest.AssertMatches(md, TrackerManifest.Tiny("tracker.sam_mask_decoder."), "mask decoder");
        using (var me = new SimpleMaskEncoder(cfg)) TrackerManifest.AssertMatches(me, TrackerManifest.Tiny("tracker.maskmem_backbone."), "memory encoder");
        using (var ma = new TransformerEncoderCrossAttention(cfg)) TrackerManifest.AssertMatches(ma, TrackerManifest.Tiny("tracker.transformer.encoder."), "memory attention");
    }

    [Test]
    public void GaussianMatrixIsAPersistentBuffer()
    {
        using var pe = new PromptEncoder(Sam3Config.Tiny);
        Assert.That(pe.state_dict().ContainsKey("pe_layer.positional_encoding_gaussian_matrix"), Is.True);
        Assert.That(pe.parameters().Count(), Is.EqualTo(pe.state_dict().Count - 1), "the Gaussian matrix must be a buffer, not a parameter");
    }
}
