using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Decoder;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Heads;

/// <summary>Switches of Sam3ImageModel's grounding heads.</summary>
internal sealed record GroundingOptions
{
    /// <summary>
    /// Video detector behaviour (Sam3ImageOnVideoMultiGPU): <c>pred_logits = clamp(inverse_sigmoid(σ(logit)·σ(presence)),
    /// ±PredLogitsJointClamp)</c>. The image model leaves it off (raw dot-product logits).
    /// </summary>
    public bool SuperviseJointBoxScores { get; init; }
    /// <summary>Detach the presence probability in the joint score (training only matters).</summary>
    public bool DetachPresenceInJointScore { get; init; }
    /// <summary>Predict masks for the one-to-many queries too (<c>o2m_mask_predict</c>; the builder passes true).</summary>
    public bool O2mMaskPredict { get; init; } = true;

    public static GroundingOptions ImageModel { get; } = new();
    public static GroundingOptions VideoDetector { get; } = new() { SuperviseJointBoxScores = true };
}

/// <summary>Per-layer outputs of the earlier decoder layers (training only; <c>out["aux_outputs"]</c> upstream).</summary>
internal sealed class GroundingAuxOutput : IDisposable
{
    public Tensor? PredLogits { get; set; }
    public Tensor? PredBoxes { get; set; }
    public Tensor? PredBoxesXyxy { get; set; }
    public Tensor? PresenceLogitDec { get; set; }
    public Tensor? PredLogitsO2m { get; set; }
    public Tensor? PredBoxesO2m { get; set; }
    public Tensor? PredBoxesXyxyO2m { get; set; }

    public void Dispose()
    {
        foreach (var t in new[] { PredLogits, PredBoxes, PredBoxesXyxy, PresenceLogitDec, PredLogitsO2m, PredBoxesO2m, PredBoxesXyxyO2m }) t?.Dispose();
    }
}

/// <summary>
/// The dict that Sam3ImageModel.forward_grounding returns, typed (batch-first): <see cref="PredLogits"/> [B,Q,1],
/// <see cref="PredBoxes"/> [B,Q,4] normalised cxcywh, <see cref="PredBoxesXyxy"/> [B,Q,4], <see cref="PresenceLogitDec"/> [B,1],
/// <see cref="PredMasks"/> [B,Q,H,W] mask logits, <see cref="SemanticSeg"/> [B,1,H,W], <see cref="Queries"/> [B,Q,d] (last
/// layer), <see cref="PresenceFeats"/> [1,B,d]. The *O2m members and <see cref="AuxOutputs"/> are filled only when training.
/// </summary>
internal sealed class GroundingOutput : IDisposable
{
    public Tensor? PredLogits { get; set; }
    public Tensor? PredBoxes { get; set; }
    public Tensor? PredBoxesXyxy { get; set; }
    public Tensor? PresenceLogitDec { get; set; }
    public Tensor? Queries { get; set; }
    public Tensor? PresenceFeats { get; set; }
    public Tensor? PredMasks { get; set; }
    public Tensor? SemanticSeg { get; set; }
    /// <summary>Presence logit of the segmentation head (only with its presence head; off in SAM3).</summary>
    public Tensor? SegPresenceLogit { get; set; }
    public Tensor? PredLogitsO2m { get; set; }
    public Tensor? PredBoxesO2m { get; set; }
    public Tensor? PredBoxesXyxyO2m { get; set; }
    public Tensor? PredMasksO2m { get; set; }
    public List<GroundingAuxOutput> AuxOutputs { get; } = new();

    public void Dispose()
    {
        foreach (var t in new[] { PredLogits, PredBoxes, PredBoxesXyxy, PresenceLogitDec, Queries, PresenceFeats, PredMasks, SemanticSeg,
                     SegPresenceLogit, PredLogitsO2m, PredBoxesO2m, PredBoxesXyxyO2m, PredMasksO2m })
            t?.Dispose();
        foreach (var a in AuxOutputs) a.Dispose();
        AuxOutputs.Clear();
    }
}

/// <summary>
/// Inputs of the grounding heads = what Sam3ImageModel has after the fusion encoder. Seq-first: <see cref="Memory"/> and
/// <see cref="PosEmbed"/> [HW,B,d] (one feature level of <see cref="FeatH"/>×<see cref="FeatW"/>), <see cref="PaddingMask"/>
/// [HW,B] or null, <see cref="ValidRatios"/> [B,levels,2] or null (= ones), <see cref="Prompt"/> [S,B,d] with
/// <see cref="PromptMask"/> [B,S] (True = padding), <see cref="BackboneFpn"/> the backbone_fpn levels (finest first, NCHW,
/// batch = images), <see cref="ImageIds"/> [B] int64 image index of each prompt.
/// </summary>
internal sealed record GroundingInputs(
    Tensor Memory, Tensor PosEmbed, long FeatH, long FeatW, Tensor Prompt, Tensor PromptMask,
    IList<Tensor>? BackboneFpn = null, Tensor? ImageIds = null, Tensor? PaddingMask = null, Tensor? ValidRatios = null);

/// <summary>
/// The grounding head math of Sam3ImageModel (sam3_image.py <c>_run_decoder</c>, <c>_update_scores_and_boxes</c>,
/// <c>_run_segmentation_heads</c>): runs the decoder on the encoder memory, scores every layer's queries with
/// <see cref="DotProductScoring"/>, turns reference boxes + box-head deltas into cxcywh/xyxy boxes, and runs the
/// segmentation head. Not a module: it uses the modules Sam3ImageModel owns (transformer.decoder, dot_prod_scoring,
/// segmentation_head). DAC and the o2m/aux outputs follow <c>decoder.training</c> (Sam3ImageModel.training upstream).
/// </summary>
internal sealed class GroundingHead
{
    public TransformerDecoder Decoder { get; }
    public DotProductScoring Scoring { get; }
    public UniversalSegmentationHead? SegmentationHead { get; }
    public GroundingOptions Options { get; }
    private readonly double inverseSigmoidEps;
    private readonly double jointClamp;

    public GroundingHead(TransformerDecoder decoder, DotProductScoring scoring, UniversalSegmentationHead? segmentationHead,
        HardcodedConfig hc, GroundingOptions? options = null)
    {
        Decoder = decoder;
        Scoring = scoring;
        SegmentationHead = segmentationHead;
        Options = options ?? GroundingOptions.ImageModel;
        inverseSigmoidEps = hc.InverseSigmoidEps;
        jointClamp = hc.PredLogitsJointClamp;
    }

    private bool Training => Decoder.training;
    /// <summary>apply_dac = decoder.dac and training.</summary>
    public bool ApplyDac => Decoder.dac && Training;

    /// <summary>
    /// forward_grounding after the encoder: decoder, scores and boxes, segmentation head (when present and
    /// <see cref="GroundingInputs.BackboneFpn"/> is given). <paramref name="probe"/> receives intermediates named like the
    /// fixtures ("dec.rpb", "dec.layer{i}.{0,1}", "dec.out.{0..3}", "score.dot_prod", "seg.cross_attend_prompt", ...).
    /// </summary>
    public GroundingOutput Forward(GroundingInputs inputs, Action<string, Tensor>? probe = null)
    {
        var output = new GroundingOutput();
        try
        {
            using var scope = NewDisposeScope();
            var hs = RunDecoder(output, inputs, probe);
            if (SegmentationHead is not null && inputs.BackboneFpn is not null)
                RunSegmentationHeads(output, inputs.BackboneFpn, inputs.ImageIds, inputs.Memory, inputs.Prompt, inputs.PromptMask, hs, probe);
            return output;
        }
        catch
        {
            output.Dispose();
            throw;
        }
    }

    /// <summary>
    /// _run_decoder: tgt = query_embed repeated over the batch, decoder (DAC when training), transposed to batch-first, then
    /// <see cref="UpdateScoresAndBoxes"/>. Fills <paramref name="output"/>; returns hs [L,B,Q,d] in the caller's dispose scope.
    /// </summary>
    public Tensor RunDecoder(GroundingOutput output, GroundingInputs inputs, Action<string, Tensor>? probe = null)
    {
        using var scope = NewDisposeScope();
        long bs = inputs.Memory.shape[1];
        var tgt = Decoder.query_embed.weight!.unsqueeze(1).repeat(1, bs, 1);
        using var dec = Decoder.forward(tgt, inputs.Memory, inputs.PosEmbed, inputs.FeatH, inputs.FeatW,
            memoryText: inputs.Prompt, textAttentionMask: inputs.PromptMask, memoryKeyPaddingMask: inputs.PaddingMask,
            validRatios: inputs.ValidRatios, applyDac: ApplyDac,
            probe: probe is null ? null : (n, t) => probe("dec." + n, t));
        if (probe is not null)
        {
            probe("dec.out.0", dec.Hs);
            probe("dec.out.1", dec.ReferenceBoxes);
            if (dec.PresenceLogits is not null) probe("dec.out.2", dec.PresenceLogits);
            if (dec.PresenceFeats is not null) probe("dec.out.3", dec.PresenceFeats);
        }
        var hs = dec.Hs.transpose(1, 2);
        var refBoxes = dec.ReferenceBoxes.transpose(1, 2);
        var presence = dec.PresenceLogits?.transpose(1, 2); // [L,1,B] -> [L,B,1]
        output.PresenceFeats = dec.PresenceFeats?.clone().DetachFromDisposeScope();
        UpdateScoresAndBoxes(output, hs, refBoxes, inputs.Prompt, inputs.PromptMask, presence, probe);
        return hs.contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// _update_scores_and_boxes. <paramref name="hs"/> [L,B,Q,d] and <paramref name="referenceBoxes"/> [L,B,Q,4] batch-first,
    /// <paramref name="decPresenceOut"/> [L,B,1]. Boxes: <c>sigmoid(inverse_sigmoid(ref) + bbox_embed(hs))</c> for every layer;
    /// logits: DotProductScoring (joint with presence for the video detector). The last layer's o2o values go to
    /// <paramref name="output"/>; when training, the o2m half and the earlier layers (AuxOutputs) too. The tensors stored in
    /// <paramref name="output"/> are owned by it (not by any dispose scope).
    /// </summary>
    public void UpdateScoresAndBoxes(GroundingOutput output, Tensor hs, Tensor referenceBoxes, Tensor prompt, Tensor promptMask,
        Tensor? decPresenceOut, Action<string, Tensor>? probe = null)
    {
        if (hs.dim() != 4) throw new Sam3Exception($"hs must be [L,B,Q,d], got [{string.Join(",", hs.shape)}]");
        using var scope = NewDisposeScope();
        bool training = Training;
        long q = hs.shape[2];
        long numO2o = ApplyDac ? q / 2 : q;
        long numO2m = q - numO2o;
        var o2o = TensorIndex.Slice(0, numO2o);
        var o2m = TensorIndex.Slice(numO2o, null);

        output.Queries = Keep(hs[-1][.., o2o]);
        var outputsClass = Scoring.forward(hs, prompt, promptMask); // L,B,Q,1
        probe?.Invoke("score.dot_prod", outputsClass);
        var offsets = Decoder.bbox_embed.forward(hs);
        var coord = (BoxOps.InverseSigmoid(referenceBoxes, inverseSigmoidEps) + offsets).sigmoid();
        var xyxy = BoxOps.CxcywhToXyxy(coord);

        int layers = (int)hs.shape[0];
        if (decPresenceOut is not null)
        {
            output.PresenceLogitDec = Keep(decPresenceOut[-1]);
            if (training) Aux(output, layers, (a, l) => a.PresenceLogitDec = Keep(decPresenceOut[l]));
        }
        if (Options.SuperviseJointBoxScores)
        {
            if (decPresenceOut is null) throw new Sam3Exception("supervise_joint_box_scores needs the decoder presence logits");
            var prob = decPresenceOut.sigmoid();
            if (Options.DetachPresenceInJointScore) prob = prob.detach();
            outputsClass = BoxOps.InverseSigmoid(outputsClass.sigmoid() * prob.unsqueeze(2), inverseSigmoidEps)
                .clamp(-jointClamp, jointClamp);
        }

        output.PredLogits = Keep(outputsClass[-1][.., o2o]);
        output.PredBoxes = Keep(coord[-1][.., o2o]);
        output.PredBoxesXyxy = Keep(xyxy[-1][.., o2o]);
        if (training)
        {
            Aux(output, layers, (a, l) =>
            {
                a.PredLogits = Keep(outputsClass[l][.., o2o]);
                a.PredBoxes = Keep(coord[l][.., o2o]);
                a.PredBoxesXyxy = Keep(xyxy[l][.., o2o]);
            });
            if (numO2m > 0)
            {
                output.PredLogitsO2m = Keep(outputsClass[-1][.., o2m]);
                output.PredBoxesO2m = Keep(coord[-1][.., o2m]);
                output.PredBoxesXyxyO2m = Keep(xyxy[-1][.., o2m]);
                Aux(output, layers, (a, l) =>
                {
                    a.PredLogitsO2m = Keep(outputsClass[l][.., o2m]);
                    a.PredBoxesO2m = Keep(coord[l][.., o2m]);
                    a.PredBoxesXyxyO2m = Keep(xyxy[l][.., o2m]);
                });
            }
        }
    }

    /// <summary>
    /// _run_segmentation_heads: the head on all queries (o2m included when <see cref="GroundingOptions.O2mMaskPredict"/>),
    /// masks split into o2o (<c>PredMasks</c>) and, when training with DAC, o2m (<c>PredMasksO2m</c>).
    /// </summary>
    public void RunSegmentationHeads(GroundingOutput output, IList<Tensor> backboneFpn, Tensor? imageIds, Tensor encoderHiddenStates,
        Tensor prompt, Tensor promptMask, Tensor hs, Action<string, Tensor>? probe = null)
    {
        if (SegmentationHead is null) return;
        using var scope = NewDisposeScope();
        long q = hs.shape[2];
        long numO2o = ApplyDac ? q / 2 : q;
        long numO2m = q - numO2o;
        var objQueries = Options.O2mMaskPredict ? hs : hs[.., .., TensorIndex.Slice(0, numO2o)];
        using var seg = SegmentationHead.forward(backboneFpn, objQueries, imageIds, encoderHiddenStates, prompt, promptMask,
            probe is null ? null : (n, t) => probe("seg." + n, t));
        if (probe is not null)
        {
            probe("seg.out.pred_masks", seg.PredMasks);
            probe("seg.out.semantic_seg", seg.SemanticSeg);
        }
        // per-query outputs are split on the query dim (upstream slices dim 1, the same for the [B,Q,H,W] masks SAM3 uses)
        var masks = seg.PredMasks;
        output.PredMasks = Keep(masks.narrow(-3, 0, numO2o));
        if (Options.O2mMaskPredict && numO2m > 0) output.PredMasksO2m = Keep(masks.narrow(-3, numO2o, numO2m));
        output.SemanticSeg = Keep(seg.SemanticSeg);
        if (seg.PresenceLogit is not null) output.SegPresenceLogit = Keep(seg.PresenceLogit);
    }

    private static void Aux(GroundingOutput output, int layers, Action<GroundingAuxOutput, int> fill)
    {
        while (output.AuxOutputs.Count < layers - 1) output.AuxOutputs.Add(new GroundingAuxOutput());
        for (int l = 0; l < layers - 1; l++) fill(output.AuxOutputs[l], l);
    }

    // Owned by the output object: an independent contiguous tensor outside every dispose scope.
    private static Tensor Keep(Tensor t) => t.contiguous().clone().DetachFromDisposeScope();
}
