using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Decoder;
using TorchSharp;
using TorchSharp.Modules;
using MultiheadAttention = Sam3.Torch.Modeling.Common.MultiheadAttention;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Heads;

/// <summary>
/// Output of <see cref="UniversalSegmentationHead"/>: <see cref="PredMasks"/> [B,Q,H,W] mask logits (or [L,B,Q,H,W] with aux
/// masks), <see cref="SemanticSeg"/> [B,1,H,W], <see cref="PresenceLogit"/> [B,1] (only with a presence head).
/// </summary>
internal sealed record SegmentationHeadOutput(Tensor PredMasks, Tensor SemanticSeg, Tensor? PresenceLogit) : IDisposable
{
    public void Dispose()
    {
        PredMasks.Dispose();
        SemanticSeg.Dispose();
        PresenceLogit?.Dispose();
    }
}

/// <summary>
/// Semantic + instance segmentation head of the detector (maskformer_segmentation.py UniversalSegmentationHead, with
/// <c>use_encoder_inputs=True</c>): the encoder memory attends to the prompt (pre-LN, residual), replaces the coarsest FPN
/// level, goes through the <see cref="PixelDecoder"/>; <c>instance_seg_head</c> (1×1) gives per-pixel embeddings that the
/// <see cref="MaskPredictor"/> dots with the last layer's queries; <c>semantic_seg_head</c> (1×1) gives one semantic logit.
/// Keys: <c>pixel_decoder.*, mask_predictor.mask_embed.*, [presence_head.2.*], cross_attend_prompt.*, cross_attn_norm.*,
/// semantic_seg_head.*, instance_seg_head.*</c>.
/// </summary>
internal sealed class UniversalSegmentationHead : nn.Module
{
    // Field order = the reference's registration order.
    public readonly PixelDecoder pixel_decoder;
    public readonly MaskPredictor mask_predictor;
    /// <summary>LinearPresenceHead (Identity, Identity, Linear(d,1)), only with <c>presence_head=True</c> (off in SAM3).</summary>
    public readonly Sequential? presence_head;
    public readonly MultiheadAttention cross_attend_prompt;
    public readonly LayerNorm cross_attn_norm;
    public readonly Conv2d semantic_seg_head;
    public readonly Conv2d instance_seg_head;

    public int d_model { get; }
    public bool aux_masks { get; }

    /// <summary>Output names that are per query (Sam3ImageModel splits them into o2o/o2m halves).</summary>
    public static readonly IReadOnlyList<string> InstanceKeys = ["pred_masks"];

    public UniversalSegmentationHead(Sam3Config cfg) : this(cfg.SegmentationHead, cfg.HardcodedInClasses) { }

    public UniversalSegmentationHead(SegmentationHeadConfig s, HardcodedConfig hc) : base(nameof(UniversalSegmentationHead))
    {
        d_model = s.HiddenDim;
        aux_masks = s.AuxMasks;
        pixel_decoder = new PixelDecoder(s, hc);
        var (inDim, hidden, outDim, depth) = MlpSpec.Parse(hc.MaskEmbed, new Dictionary<string, int> { ["d"] = s.HiddenDim });
        if (inDim != s.HiddenDim || hidden != s.HiddenDim)
            throw new Sam3ConfigException($"mask_embed spec '{hc.MaskEmbed}' must take hidden_dim inputs");
        mask_predictor = new MaskPredictor(inDim, outDim, depth);
        if (s.PresenceHead)
            presence_head = nn.Sequential(("0", nn.Identity()), ("1", nn.Identity()), ("2", nn.Linear(s.HiddenDim, 1)));
        cross_attend_prompt = new MultiheadAttention(s.HiddenDim, s.CrossAttendPromptHeads, hc.SegCrossAttendPromptDropout);
        cross_attn_norm = nn.LayerNorm(s.HiddenDim, hc.LayerNormEps);
        semantic_seg_head = nn.Conv2d(pixel_decoder.out_dim, 1, 1);
        instance_seg_head = nn.Conv2d(pixel_decoder.out_dim, s.HiddenDim, 1);
        RegisterComponents();
    }

    /// <summary>
    /// The prompt cross-attention output <c>cross_attend_prompt(LN(memory), prompt, prompt)</c> [HW,B,d], before the residual
    /// add. <paramref name="encoderHiddenStates"/> [HW,B,d], <paramref name="prompt"/> [S,B,d], <paramref name="promptMask"/>
    /// [B,S] (True = padding).
    /// </summary>
    public Tensor CrossAttendPrompt(Tensor encoderHiddenStates, Tensor prompt, Tensor? promptMask)
    {
        using var scope = NewDisposeScope();
        var q = Precision.PrecisionPolicy.Norm(cross_attn_norm, encoderHiddenStates);
        return cross_attend_prompt.forward(q, prompt, prompt, key_padding_mask: promptMask).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// SegmentationHead._embed_pixels with encoder inputs: the backbone levels (finest first, NCHW) are indexed by
    /// <paramref name="imageIds"/> when their batch is larger than 1 (shared otherwise); the coarsest level is replaced by
    /// the encoder memory [HW,B,d] reshaped to its size; then the pixel decoder. Returns [B,d,H0,W0].
    /// </summary>
    public Tensor EmbedPixels(IList<Tensor> backboneFeats, Tensor? imageIds, Tensor encoderHiddenStates)
    {
        if (backboneFeats.Count < 1) throw new Sam3Exception("segmentation head needs at least one backbone level");
        using var scope = NewDisposeScope();
        var feats = new List<Tensor>(backboneFeats.Count);
        bool index = backboneFeats[0].shape[0] > 1;
        if (index && imageIds is null) throw new Sam3Exception("segmentation head: image ids are needed for a batch of images");
        foreach (var f in backboneFeats) feats.Add(index ? f.index_select(0, imageIds!.to(ScalarType.Int64).to(f.device)) : f);
        var last = backboneFeats[^1];
        long c = last.shape[1], h = last.shape[2], w = last.shape[3];
        var ehs = encoderHiddenStates.permute(1, 2, 0); // B,d,HW
        if (ehs.shape[2] < h * w)
            throw new Sam3Exception($"encoder memory has {ehs.shape[2]} tokens, the coarsest level needs {h * w}");
        feats[^1] = ehs[TensorIndex.Ellipsis, TensorIndex.Slice(0, h * w)].reshape(-1, c, h, w);
        return pixel_decoder.forward(feats).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Full head. <paramref name="backboneFeats"/> = backbone_fpn levels (finest first); <paramref name="objQueries"/> = decoder
    /// states [L,B,Q,d] (batch-first per layer; the last layer is used unless aux masks); <paramref name="imageIds"/> [B] image
    /// index per prompt; <paramref name="encoderHiddenStates"/> [HW,B,d]; <paramref name="prompt"/> [S,B,d] with
    /// <paramref name="promptMask"/> [B,S]. <paramref name="probe"/> receives "cross_attend_prompt", "pixel_decoder",
    /// "instance_embeds" (valid only during the call).
    /// </summary>
    public SegmentationHeadOutput forward(IList<Tensor> backboneFeats, Tensor objQueries, Tensor? imageIds,
        Tensor encoderHiddenStates, Tensor prompt, Tensor? promptMask, Action<string, Tensor>? probe = null)
    {
        if (encoderHiddenStates.dim() != 3) throw new Sam3Exception("segmentation head: encoder memory must be [HW,B,d]");
        using var scope = NewDisposeScope();
        long bs = encoderHiddenStates.shape[1];
        var attended = CrossAttendPrompt(encoderHiddenStates, prompt, promptMask);
        probe?.Invoke("cross_attend_prompt", attended);
        var ehs = attended + encoderHiddenStates;

        Tensor? presenceLogit = null;
        if (presence_head is not null)
        {
            var pooled = ehs.mean([0]);
            presenceLogit = presence_head.forward(pooled.view(1, bs, 1, d_model)).squeeze(0).squeeze(1);
        }

        var pixelEmbed = EmbedPixels(backboneFeats, imageIds, ehs);
        probe?.Invoke("pixel_decoder", pixelEmbed);
        var instanceEmbeds = instance_seg_head.forward(Precision.PrecisionPolicy.ToWeightDtype(pixelEmbed, instance_seg_head.weight!));
        probe?.Invoke("instance_embeds", instanceEmbeds);
        var masks = mask_predictor.forward(aux_masks ? objQueries : objQueries[-1], instanceEmbeds);
        var semantic = semantic_seg_head.forward(Precision.PrecisionPolicy.ToWeightDtype(pixelEmbed, semantic_seg_head.weight!));
        return new SegmentationHeadOutput(masks.MoveToOuterDisposeScope(), semantic.MoveToOuterDisposeScope(),
            presenceLogit?.MoveToOuterDisposeScope());
    }
}
