using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Modeling.Tracker;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Detector;

/// <summary>
/// Holder of the tracker's SAM heads inside the image model (sam1_task_predictor.SAM3InteractiveImagePredictor): its only
/// weights are <c>model.*</c> (the tracker), so keys read <c>inst_interactive_predictor.model.*</c> as upstream.
/// </summary>
internal sealed class SAM3InteractiveImagePredictor : nn.Module
{
    public readonly Sam3TrackerBase model;

    public SAM3InteractiveImagePredictor(Sam3Config cfg) : base(nameof(SAM3InteractiveImagePredictor))
    {
        model = new Sam3TrackerBase(cfg);
        RegisterComponents();
    }
}

/// <summary>
/// The SAM3 image detector (sam3_image.Sam3ImageModel): backbone, geometry encoder, fusion encoder + DETR decoder
/// (<c>transformer</c>), dot-product scoring, segmentation head, and optionally the SAM1-style interactive heads
/// (<c>inst_interactive_predictor</c>, which also adds the SAM2 neck <c>sam2_convs</c> to the backbone).
/// </summary>
internal sealed class Sam3ImageModel : nn.Module
{
    public readonly SAM3VLBackbone backbone;
    public readonly SequenceGeometryEncoder geometry_encoder;
    public readonly TransformerWrapper transformer;
    public readonly UniversalSegmentationHead segmentation_head;
    public readonly DotProductScoring dot_prod_scoring;
    public readonly SAM3InteractiveImagePredictor? inst_interactive_predictor;

    public Sam3Config Config { get; }
    public GroundingHead Grounding { get; }
    public int num_feature_levels { get; }

    /// <param name="cfg">Hyperparameters.</param>
    /// <param name="enableInstInteractivity">Build the SAM1-style interactive heads and the SAM2 neck (the released
    /// checkpoint has both; upstream's image builder defaults to false, its video model and our default to true).</param>
    /// <param name="options">Image model (raw dot-product logits) or video detector (joint logits with presence).</param>
    public Sam3ImageModel(Sam3Config cfg, bool enableInstInteractivity = true, GroundingOptions? options = null) : base(nameof(Sam3ImageModel))
    {
        Config = enableInstInteractivity == cfg.Neck.AddSam2Neck ? cfg : cfg with { Neck = cfg.Neck with { AddSam2Neck = enableInstInteractivity } };
        backbone = new SAM3VLBackbone(Config);
        geometry_encoder = new SequenceGeometryEncoder(Config);
        transformer = new TransformerWrapper(Config);
        segmentation_head = new UniversalSegmentationHead(Config);
        dot_prod_scoring = new DotProductScoring(Config);
        if (enableInstInteractivity) inst_interactive_predictor = new SAM3InteractiveImagePredictor(Config);
        num_feature_levels = Config.Encoder.NumFeatureLevels;
        RegisterComponents();
        // A model outlives any dispose scope it happens to be built in: its weights must not be freed with the scope.
        foreach (var t in parameters()) t.DetachFromDisposeScope();
        foreach (var t in buffers()) t.DetachFromDisposeScope();
        Grounding = new GroundingHead(transformer.decoder, dot_prod_scoring, segmentation_head, Config.HardcodedInClasses, options ?? GroundingOptions.ImageModel);
    }

    /// <summary>The tracker's SAM heads when the interactive heads were built, else null.</summary>
    public Sam3TrackerBase? Tracker => inst_interactive_predictor?.model;

    /// <summary>
    /// _get_img_feats: the last <c>num_feature_levels</c> levels of the selected images, flattened seq-first [HW,B,d],
    /// with their position encodings and (H,W) sizes.
    /// </summary>
    public (List<Tensor> feats, List<Tensor> pos, List<(int H, int W)> sizes) GetImageFeatures(BackboneOutput backboneOut, Tensor imgIds)
    {
        var feats = new List<Tensor>();
        var pos = new List<Tensor>();
        var sizes = new List<(int, int)>();
        int n = backboneOut.BackboneFpn.Length;
        for (int i = n - num_feature_levels; i < n; i++)
        {
            var f = backboneOut.BackboneFpn[i];
            var p = backboneOut.VisionPosEnc[i];
            feats.Add(f.index_select(0, imgIds).flatten(2).permute(2, 0, 1));
            pos.Add(p.index_select(0, imgIds).flatten(2).permute(2, 0, 1));
            sizes.Add(((int)p.shape[^2], (int)p.shape[^1]));
        }
        return (feats, pos, sizes);
    }

    /// <summary>
    /// forward_grounding at inference: prompt = cat(text features of <paramref name="textIds"/>, geometry encoder output),
    /// fusion encoder over the image tokens of <paramref name="imgIds"/>, decoder, scores/boxes, segmentation head.
    /// </summary>
    /// <param name="backboneOut">Image features of a batch of images.</param>
    /// <param name="languageFeatures">Text features [L,T,d] seq-first.</param>
    /// <param name="languageMask">Text padding mask [T,L] (True = padding).</param>
    /// <param name="textIds">int64 [B]: which text prompt each query batch entry uses.</param>
    /// <param name="imgIds">int64 [B]: which image each entry uses.</param>
    /// <param name="geometricPrompt">Boxes/points per entry (B entries), or <see cref="Prompt.Empty"/>.</param>
    /// <param name="probe">Receives intermediates named as the parity fixtures ("geo.out.0", "enc.layer0", "dec.rpb", ...).</param>
    public GroundingOutput ForwardGrounding(BackboneOutput backboneOut, Tensor languageFeatures, Tensor languageMask,
        Tensor textIds, Tensor imgIds, Prompt geometricPrompt, Action<string, Tensor>? probe = null)
    {
        using var scope = NewDisposeScope();
        var txtFeats = languageFeatures.index_select(1, textIds);
        var txtMask = languageMask.index_select(0, textIds);
        var (feats, pos, sizes) = GetImageFeatures(backboneOut, imgIds);
        var (geoFeats, geoMask) = geometry_encoder.forward(geometricPrompt, feats, sizes, pos);
        probe?.Invoke("geo.out.0", geoFeats);
        probe?.Invoke("geo.out.1", geoMask);
        var prompt = torch.cat([txtFeats, geoFeats], 0);
        var promptMask = torch.cat([txtMask, geoMask], 1);

        var layerOutputs = probe is null ? null : new List<Tensor>();
        var enc = transformer.encoder.forward(feats, sizes, pos, prompt, promptMask, layerOutputs: layerOutputs);
        if (probe is not null)
        {
            for (int i = 0; i < layerOutputs!.Count; i++) probe($"enc.layer{i}", layerOutputs[i]);
            probe("enc.out.memory", enc.Memory);
            probe("enc.out.pos_embed", enc.PosEmbed);
            probe("enc.out.memory_text", enc.MemoryText);
        }
        var (h, w) = sizes[^1];
        var inputs = new GroundingInputs(enc.Memory, enc.PosEmbed, h, w, prompt, promptMask,
            BackboneFpn: backboneOut.BackboneFpn, ImageIds: imgIds, PaddingMask: enc.PaddingMask, ValidRatios: enc.ValidRatios);
        var output = Grounding.Forward(inputs, probe);
        if (probe is not null)
        {
            if (output.PredLogits is not null) probe("grounding.out.pred_logits", output.PredLogits);
            if (output.PredBoxes is not null) probe("grounding.out.pred_boxes", output.PredBoxes);
            if (output.PredBoxesXyxy is not null) probe("grounding.out.pred_boxes_xyxy", output.PredBoxesXyxy);
            if (output.PresenceLogitDec is not null) probe("grounding.out.presence_logit_dec", output.PresenceLogitDec);
            if (output.PredMasks is not null) probe("grounding.out.pred_masks", output.PredMasks);
        }
        return output;
    }
}
