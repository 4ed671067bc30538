using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Sam;

/// <summary>Outputs of <see cref="MaskDecoder.forward"/>.</summary>
/// <param name="Masks">Mask logits [B, M, 4H, 4W] (M = 3 with multimask output, else 1).</param>
/// <param name="IouPred">Predicted mask quality [B, M] (sigmoid outputs when iou_prediction_use_sigmoid).</param>
/// <param name="SamTokensOut">Mask output tokens [B, M', C] used for object pointers (the 3 multimask tokens, or token 0).</param>
/// <param name="ObjectScoreLogits">Object-score logits [B, 1].</param>
internal sealed record MaskDecoderOutput(Tensor Masks, Tensor IouPred, Tensor SamTokensOut, Tensor ObjectScoreLogits) : IDisposable
{
    public void Dispose()
    {
        Masks.Dispose();
        IouPred.Dispose();
        SamTokensOut.Dispose();
        ObjectScoreLogits.Dispose();
    }
}

/// <summary>Raw outputs of <see cref="MaskDecoder.PredictMasks"/> (all mask tokens, before output selection).</summary>
internal sealed record MaskPrediction(Tensor Masks, Tensor IouPred, Tensor MaskTokensOut, Tensor ObjectScoreLogits);

/// <summary>
/// SAM mask decoder (sam/mask_decoder.py MaskDecoder) as built by the tracker: tokens
/// <c>[obj_score, iou, 4 mask tokens, prompts…]</c>, a two-way transformer over the image embedding (+ dense prompt),
/// upscaling ×4 with the high-resolution features added (<c>GELU(LN2d(ConvT(src) + feat_s1))</c>, then
/// <c>GELU(ConvT(·) + feat_s0)</c>), hypernetwork MLPs per mask token, an IoU head with sigmoid and an object-score MLP.
/// Single-mask output at eval uses the dynamic stability fallback (guide §4.17).
/// </summary>
internal sealed class MaskDecoder : nn.Module
{
    public readonly TwoWayTransformer transformer;
    public readonly Embedding iou_token;
    public readonly Embedding mask_tokens;
    public readonly Embedding? obj_score_token;
    /// <summary>ConvT(d→d/4,k2s2), LN2d, GELU, ConvT(d/4→d/8,k2s2), GELU: state-dict indices 0,1,3.</summary>
    public readonly Sequential output_upscaling;
    public readonly Conv2d? conv_s0;
    public readonly Conv2d? conv_s1;
    public readonly ModuleList<Mlp> output_hypernetworks_mlps;
    public readonly Mlp iou_prediction_head;
    /// <summary>MLP(d,d,1,3) (pred_obj_scores_mlp) or Linear(d,1); null without object scores.</summary>
    public readonly nn.Module<Tensor, Tensor>? pred_obj_score_head;

    // typed views of output_upscaling's layers (an array is not registered as a component)
    private readonly nn.Module<Tensor, Tensor>[] _upscaling;

    public int transformer_dim { get; }
    public int num_multimask_outputs { get; }
    public int num_mask_tokens { get; }
    public bool pred_obj_scores { get; }
    public bool use_high_res_features { get; }
    public bool use_multimask_token_for_obj_ptr { get; }
    public bool dynamic_multimask_via_stability { get; }
    public double dynamic_multimask_stability_delta { get; }
    public double dynamic_multimask_stability_thresh { get; }
    private readonly double _noObjScoreDefaultLogit;

    public MaskDecoder(Sam3Config cfg) : base(nameof(MaskDecoder))
    {
        var hc = cfg.HardcodedInClasses;
        var sam = cfg.Tracker.Sam;
        int d = cfg.Tracker.HiddenDim;
        if (d % 8 != 0) throw new Sam3ConfigException($"MaskDecoder: transformer_dim must be a multiple of 8, got {d}");
        transformer_dim = d;
        transformer = new TwoWayTransformer(cfg);
        num_multimask_outputs = hc.NumMultimaskOutputs;
        num_mask_tokens = num_multimask_outputs + 1;
        iou_token = nn.Embedding(1, d);
        mask_tokens = nn.Embedding(num_mask_tokens, d);
        pred_obj_scores = hc.PredObjScores;
        if (pred_obj_scores) obj_score_token = nn.Embedding(1, d);
        use_multimask_token_for_obj_ptr = hc.UseMultimaskTokenForObjPtr;

        _upscaling =
        [
            nn.ConvTranspose2d(d, d / 4, kernel_size: 2, stride: 2),
            new LayerNorm2d(d / 4, hc.SamLayerNorm2dEps),
            nn.GELU(),
            nn.ConvTranspose2d(d / 4, d / 8, kernel_size: 2, stride: 2),
            nn.GELU(),
        ];
        output_upscaling = nn.Sequential(_upscaling.Select((m, i) => (i.ToString(), m)).ToArray());
        use_high_res_features = hc.UseHighResFeatures;
        if (use_high_res_features)
        {
            conv_s0 = nn.Conv2d(d, d / 8, kernel_size: 1, stride: 1);
            conv_s1 = nn.Conv2d(d, d / 4, kernel_size: 1, stride: 1);
        }
        output_hypernetworks_mlps = new ModuleList<Mlp>();
        for (int i = 0; i < num_mask_tokens; i++) output_hypernetworks_mlps.Add(new Mlp(d, d, d / 8, 3));
        iou_prediction_head = new Mlp(d, hc.IouHeadHiddenDim, num_mask_tokens, hc.IouHeadDepth, sigmoidOutput: hc.IouPredictionUseSigmoid);
        if (pred_obj_scores)
            pred_obj_score_head = hc.PredObjScoresMlp ? new Mlp(d, d, 1, 3) : nn.Linear(d, 1);
        dynamic_multimask_via_stability = sam.DynamicMultimaskViaStability;
        dynamic_multimask_stability_delta = sam.DynamicMultimaskStabilityDelta;
        dynamic_multimask_stability_thresh = sam.DynamicMultimaskStabilityThresh;
        _noObjScoreDefaultLogit = hc.NoObjScoreDefaultLogit;
        RegisterComponents();
    }

    /// <summary>
    /// Predicts masks. <paramref name="imageEmbeddings"/> [B or 1, C, H, W]; <paramref name="imagePe"/> [1, C, H, W]
    /// (from <see cref="PromptEncoder.GetDensePe"/>); <paramref name="sparsePromptEmbeddings"/> [B, P, C];
    /// <paramref name="densePromptEmbeddings"/> [B, C, H, W]; with <paramref name="repeatImage"/> the image is repeated
    /// for each prompt set; <paramref name="highResFeatures"/> = (feat_s0 [.., C/8, 4H, 4W], feat_s1 [.., C/4, 2H, 2W]),
    /// already projected by <see cref="conv_s0"/>/<see cref="conv_s1"/>.
    /// </summary>
    public MaskDecoderOutput forward(Tensor imageEmbeddings, Tensor imagePe, Tensor sparsePromptEmbeddings, Tensor densePromptEmbeddings,
                                     bool multimaskOutput, bool repeatImage, (Tensor s0, Tensor s1)? highResFeatures = null)
    {
        using var scope = NewDisposeScope();
        var p = PredictMasks(imageEmbeddings, imagePe, sparsePromptEmbeddings, densePromptEmbeddings, repeatImage, highResFeatures);
        Tensor masks, iou;
        if (multimaskOutput)
        {
            masks = p.Masks[.., 1..];
            iou = p.IouPred[.., 1..];
        }
        else if (dynamic_multimask_via_stability && !training)
        {
            (masks, iou) = DynamicMultimaskViaStability(p.Masks, p.IouPred);
        }
        else
        {
            masks = p.Masks[.., 0..1];
            iou = p.IouPred[.., 0..1];
        }
        var tokens = multimaskOutput && use_multimask_token_for_obj_ptr ? p.MaskTokensOut[.., 1..] : p.MaskTokensOut[.., 0..1];
        return new MaskDecoderOutput(masks.MoveToOuterDisposeScope(), iou.MoveToOuterDisposeScope(),
                                     tokens.MoveToOuterDisposeScope(), p.ObjectScoreLogits.MoveToOuterDisposeScope());
    }

    /// <summary>All mask tokens' predictions (masks [B, 4, 4H, 4W], IoU [B, 4], tokens [B, 4, C], object score [B, 1]).</summary>
    public MaskPrediction PredictMasks(Tensor imageEmbeddings, Tensor imagePe, Tensor sparsePromptEmbeddings, Tensor densePromptEmbeddings,
                                       bool repeatImage, (Tensor s0, Tensor s1)? highResFeatures = null)
    {
        if (imagePe.shape[0] != 1) throw new Sam3Exception("MaskDecoder: image_pe must have batch size 1 (from get_dense_pe)");
        long nPrompts = sparsePromptEmbeddings.shape[0];
        if (!repeatImage && imageEmbeddings.shape[0] != nPrompts)
            throw new Sam3Exception($"MaskDecoder: {imageEmbeddings.shape[0]} image embeddings for {nPrompts} prompt sets (use repeatImage for one image)");
        if (use_high_res_features && highResFeatures is null)
            throw new Sam3Exception("MaskDecoder: high-resolution features (conv_s0/conv_s1 projections) are required");

        using var scope = NewDisposeScope();
        var weights = new List<Tensor>();
        if (pred_obj_scores) weights.Add(obj_score_token!.weight!);
        weights.Add(iou_token.weight!);
        weights.Add(mask_tokens.weight!);
        int s = pred_obj_scores ? 1 : 0;
        var outputTokens = torch.cat(weights, 0).unsqueeze(0).expand(nPrompts, -1, -1);
        var tokens = torch.cat([outputTokens, sparsePromptEmbeddings], 1);

        var src = repeatImage ? torch.repeat_interleave(imageEmbeddings, tokens.shape[0], 0) : imageEmbeddings;
        src = src + densePromptEmbeddings;
        var posSrc = torch.repeat_interleave(imagePe, tokens.shape[0], 0);
        long b = src.shape[0], c = src.shape[1], h = src.shape[2], w = src.shape[3];

        var (hs, srcOut) = transformer.forward(src, posSrc, tokens);
        var iouTokenOut = hs[.., s, ..];
        var maskTokensOut = hs[.., (s + 1)..(s + 1 + num_mask_tokens), ..];

        src = srcOut.transpose(1, 2).reshape(b, c, h, w);
        Tensor up;
        if (!use_high_res_features)
        {
            up = Up(4, Up(3, Up(2, Up(1, Up(0, src))))); // = output_upscaling.forward(src), with the bf16 policy's casts
        }
        else
        {
            var (featS0, featS1) = highResFeatures!.Value;
            up = Up(2, Up(1, Up(0, src) + featS1));
            up = Up(4, Up(3, up) + featS0);
        }

        // the convolutions take their input in the weight's dtype (bf16 policy; a no-op in fp32)
        Tensor Up(int i, Tensor x) => _upscaling[i].forward(i is 0 or 3 ? Precision.PrecisionPolicy.ToModuleDtype(x, _upscaling[i]) : x);

        var hyper = new List<Tensor>();
        for (int i = 0; i < num_mask_tokens; i++)
            hyper.Add(output_hypernetworks_mlps[i].forward(maskTokensOut[.., i, ..]));
        var hyperIn = torch.stack(hyper, 1);
        long ub = up.shape[0], uc = up.shape[1], uh = up.shape[2], uw = up.shape[3];
        var masks = hyperIn.matmul(up.reshape(ub, uc, uh * uw)).reshape(ub, -1, uh, uw);

        var iouPred = iou_prediction_head.forward(iouTokenOut);
        var objectScoreLogits = pred_obj_scores
            ? pred_obj_score_head!.forward(hs[.., 0, ..])
            : _noObjScoreDefaultLogit * iouPred.new_ones(iouPred.shape[0], 1); // "object present" default upstream
        return new MaskPrediction(masks.MoveToOuterDisposeScope(), iouPred.MoveToOuterDisposeScope(),
                                  maskTokensOut.MoveToOuterDisposeScope(), objectScoreLogits.MoveToOuterDisposeScope());
    }

    /// <summary>Stability of mask logits [..., H, W]: area(logit > δ) / area(logit > −δ), 1 where the latter is empty.</summary>
    public Tensor GetStabilityScores(Tensor maskLogits)
    {
        using var scope = NewDisposeScope();
        var flat = maskLogits.flatten(-2);
        var areaI = flat.gt(dynamic_multimask_stability_delta).sum(-1).to(ScalarType.Float32);
        var areaU = flat.gt(-dynamic_multimask_stability_delta).sum(-1).to(ScalarType.Float32);
        var scores = torch.where(areaU.gt(0), areaI / areaU, torch.ones_like(areaU));
        return scores.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Single-mask output with fallback: token 0's mask if its stability ≥ threshold, else the multimask output (tokens
    /// 1..3) with the highest predicted IoU. Inputs: all masks [B, 4, h, w] and IoU [B, 4]; outputs [B, 1, h, w], [B, 1].
    /// </summary>
    public (Tensor masks, Tensor iou) DynamicMultimaskViaStability(Tensor allMaskLogits, Tensor allIouScores)
    {
        using var scope = NewDisposeScope();
        var multiLogits = allMaskLogits[.., 1..];
        var multiIou = allIouScores[.., 1..];
        var best = multiIou.argmax(-1);
        var batch = torch.arange(multiIou.shape[0], device: allIouScores.device);
        var bestLogits = multiLogits.index([batch, best]).unsqueeze(1);
        var bestIou = multiIou.index([batch, best]).unsqueeze(1);

        var singleLogits = allMaskLogits[.., 0..1];
        var singleIou = allIouScores[.., 0..1];
        var isStable = GetStabilityScores(singleLogits).ge(dynamic_multimask_stability_thresh); // [B, 1]
        var maskOut = torch.where(isStable[.., .., TensorIndex.None, TensorIndex.None].expand_as(singleLogits), singleLogits, bestLogits);
        var iouOut = torch.where(isStable.expand_as(singleIou), singleIou, bestIou);
        return (maskOut.MoveToOuterDisposeScope(), iouOut.MoveToOuterDisposeScope());
    }
}
