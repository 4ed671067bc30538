using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Sam;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Tracker;

/// <summary>Outputs of the SAM heads (<see cref="Sam3TrackerBase.ForwardSamHeads"/>, <see cref="Sam3TrackerBase.UseMaskAsOutput"/>).</summary>
/// <param name="LowResMultimasks">[B, M, 4N, 4N] logits (−1024 where the object is absent).</param>
/// <param name="HighResMultimasks">[B, M, S, S] bilinear upsampling to the image size.</param>
/// <param name="Ious">[B, M] predicted IoU.</param>
/// <param name="LowResMasks">[B, 1, 4N, 4N] best mask (highest IoU with multimask output).</param>
/// <param name="HighResMasks">[B, 1, S, S].</param>
/// <param name="ObjPtr">[B, C] object pointer (mixed with no_obj_ptr when absent).</param>
/// <param name="ObjectScoreLogits">[B, 1].</param>
internal sealed record SamHeadsOutput(Tensor LowResMultimasks, Tensor HighResMultimasks, Tensor Ious, Tensor LowResMasks,
                                    Tensor HighResMasks, Tensor ObjPtr, Tensor ObjectScoreLogits) : IDisposable
{
    public void Dispose()
    {
        // LowRes/HighResMasks may be the same objects as the multimask tensors: dispose each object once
        var all = new[] { LowResMultimasks, HighResMultimasks, Ious, LowResMasks, HighResMasks, ObjPtr, ObjectScoreLogits };
        foreach (var t in all.Distinct(ReferenceEqualityComparer.Instance).ToList()) ((Tensor)t!).Dispose();
    }
}

/// <summary>A stored spatial memory read by the memory attention.</summary>
/// <param name="Features">maskmem_features [B, mem_dim, N, N] (upstream stores them rounded to bfloat16).</param>
/// <param name="PosEnc">maskmem_pos_enc [B, mem_dim, N, N].</param>
/// <param name="TPos">Temporal position: 0 for a conditioning frame, 1..num_maskmem−1 for previous frames
/// (num_maskmem−1 = the most recent); the temporal embedding is <c>maskmem_tpos_enc[num_maskmem − TPos − 1]</c>.</param>
internal sealed record MemoryFrame(Tensor Features, Tensor PosEnc, int TPos);

/// <summary>An object pointer read by the memory attention: its signed frame distance and the pointer [B, C].</summary>
internal sealed record ObjectPointer(int RelPos, Tensor Ptr);

/// <summary>
/// The SAM2-style tracker's network (model/sam3_tracker_base.py Sam3TrackerBase, the weights of Sam3TrackerPredictor;
/// checkpoint prefix <c>tracker.</c>, image-model prefix <c>inst_interactive_predictor.model.</c>). No backbone: image
/// features come from the detector's SAM2 neck. Holds the memory attention (<c>transformer.encoder</c>), the memory
/// encoder (<c>maskmem_backbone</c>), the SAM prompt encoder and mask decoder, and the pointer projections, plus the
/// per-frame building blocks of track_step (SAM heads, mask-as-output, memory encoding, memory conditioning).
/// Frame bookkeeping (which memories to read) is left to the predictor.
/// </summary>
internal sealed class Sam3TrackerBase : nn.Module
{
    public readonly Conv2d mask_downsample;
    public readonly TrackerTransformerWrapper transformer;
    public readonly SimpleMaskEncoder maskmem_backbone;
    public readonly Parameter maskmem_tpos_enc;
    public readonly Parameter no_mem_embed;
    /// <summary>Stored but never used by the forward pass (unreachable upstream code).</summary>
    public readonly Parameter no_mem_pos_enc;
    public readonly Parameter no_obj_ptr;
    public readonly Parameter no_obj_embed_spatial;
    public readonly PromptEncoder sam_prompt_encoder;
    public readonly MaskDecoder sam_mask_decoder;
    public readonly Mlp obj_ptr_proj;
    public readonly Linear obj_ptr_tpos_proj;

    public int hidden_dim { get; }
    public int mem_dim { get; }
    public int num_maskmem { get; }
    public int image_size { get; }
    public int backbone_stride { get; }
    public int sam_image_embedding_size { get; }
    public int low_res_mask_size { get; }
    public int input_mask_size { get; }
    public double sigmoid_scale_for_mem_enc { get; }
    public double sigmoid_bias_for_mem_enc { get; }
    public bool non_overlap_masks_for_mem_enc { get; }
    public bool multimask_output_in_sam { get; }
    public int multimask_min_pt_num { get; }
    public int multimask_max_pt_num { get; }
    public bool multimask_output_for_tracking { get; }
    public int max_obj_ptrs_in_encoder { get; }
    public double no_obj_score { get; }

    private readonly HardcodedConfig _hc;
    private readonly double _tposTemperature;

    public Sam3TrackerBase(Sam3Config cfg) : base(nameof(Sam3TrackerBase))
    {
        var t = cfg.Tracker;
        _hc = cfg.HardcodedInClasses;
        hidden_dim = t.MemoryAttention.DModel;
        mem_dim = t.MemoryEncoder.OutDim;
        if (t.HiddenDim != hidden_dim) throw new Sam3ConfigException($"tracker.hidden_dim {t.HiddenDim} differs from memory_attention.d_model {hidden_dim}");
        if (t.MemDim != mem_dim) throw new Sam3ConfigException($"tracker.mem_dim {t.MemDim} differs from memory_encoder.out_dim {mem_dim}");
        if (hidden_dim % mem_dim != 0) throw new Sam3ConfigException($"tracker: hidden_dim {hidden_dim} is not a multiple of mem_dim {mem_dim}");
        num_maskmem = t.NumMaskmem;
        image_size = t.ImageSize;
        backbone_stride = t.BackboneStride;
        sam_image_embedding_size = t.ImageEmbeddingSize;
        low_res_mask_size = t.LowResMaskSize;
        input_mask_size = low_res_mask_size * _hc.TrackerMaskDownsampleStride;
        sigmoid_scale_for_mem_enc = _hc.SigmoidScaleForMemEnc;
        sigmoid_bias_for_mem_enc = _hc.SigmoidBiasForMemEnc;
        non_overlap_masks_for_mem_enc = t.NonOverlapMasksForMemEnc;
        multimask_output_in_sam = t.Sam.MultimaskOutputInSam;
        multimask_min_pt_num = t.Sam.MultimaskMinPtNum;
        multimask_max_pt_num = t.Sam.MultimaskMaxPtNum;
        multimask_output_for_tracking = t.Sam.MultimaskOutputForTracking;
        max_obj_ptrs_in_encoder = t.MaxObjPtrsInEncoder;
        no_obj_score = _hc.NoObjScore;
        _tposTemperature = _hc.ObjPtrTposTemperature;

        int k = _hc.TrackerMaskDownsampleStride;
        mask_downsample = nn.Conv2d(1, 1, kernel_size: k, stride: k);
        transformer = new TrackerTransformerWrapper(cfg);
        maskmem_backbone = new SimpleMaskEncoder(cfg);
        maskmem_tpos_enc = TruncNormal(num_maskmem, 1, 1, mem_dim);
        no_mem_embed = TruncNormal(1, 1, hidden_dim);
        no_mem_pos_enc = TruncNormal(1, 1, hidden_dim);
        no_obj_ptr = TruncNormal(1, hidden_dim);
        no_obj_embed_spatial = TruncNormal(1, mem_dim);
        sam_prompt_encoder = new PromptEncoder(cfg);
        sam_mask_decoder = new MaskDecoder(cfg);
        obj_ptr_proj = new Mlp(hidden_dim, hidden_dim, hidden_dim, _hc.ObjPtrProjMlpLayers);
        obj_ptr_tpos_proj = nn.Linear(hidden_dim, mem_dim);
        RegisterComponents();
    }

    private static Parameter TruncNormal(params long[] shape)
    {
        // upstream init trunc_normal_(std=0.02); the checkpoint overwrites it
        var p = new Parameter(torch.zeros(shape));
        using (torch.no_grad()) nn.init.trunc_normal_(p, std: 0.02);
        return p;
    }

    /// <summary>Multimask output iff enabled, on an initial conditioning frame or while tracking (if allowed), with a point count in [min, max].</summary>
    public bool UseMultimask(bool isInitCondFrame, int numPoints)
        => multimask_output_in_sam && (isInitCondFrame || multimask_output_for_tracking)
           && multimask_min_pt_num <= numPoints && numPoints <= multimask_max_pt_num;

    /// <summary>
    /// SAM prompt encoder + mask decoder on one frame (<c>_forward_sam_heads</c>). <paramref name="backboneFeatures"/>
    /// [B, C, N, N] (memory-conditioned, or + no_mem_embed); points [B, P, 2] in input-image pixels with labels [B, P]
    /// (none → one padding point); <paramref name="maskInputs"/> [B, 1, h, w] logits (resized to 4N with antialias if
    /// needed); <paramref name="highResFeatures"/> = (conv_s0(level 0), conv_s1(level 1)).
    /// </summary>
    public SamHeadsOutput ForwardSamHeads(Tensor backboneFeatures, Tensor? pointCoords = null, Tensor? pointLabels = null,
                                          Tensor? maskInputs = null, (Tensor s0, Tensor s1)? highResFeatures = null,
                                          bool multimaskOutput = false)
    {
        long b = backboneFeatures.shape[0];
        if (backboneFeatures.dim() != 4 || backboneFeatures.shape[1] != hidden_dim || backboneFeatures.shape[2] != sam_image_embedding_size || backboneFeatures.shape[3] != sam_image_embedding_size)
            throw new Sam3Exception($"tracker SAM heads: backbone features must be [B, {hidden_dim}, {sam_image_embedding_size}, {sam_image_embedding_size}], got [{string.Join(",", backboneFeatures.shape)}]");
        using var scope = NewDisposeScope();
        var device = backboneFeatures.device;
        if ((pointCoords is null) != (pointLabels is null))
            throw new Sam3PromptException("tracker SAM heads: point coordinates and labels must be given together");
        if (pointCoords is null)
        {
            pointCoords = torch.zeros(b, 1, 2, device: device);
            pointLabels = -torch.ones(b, 1, dtype: ScalarType.Int32, device: device);
        }
        else if (pointCoords.shape[0] != b || pointLabels is null || pointLabels.shape[0] != b)
            throw new Sam3PromptException($"tracker SAM heads: point prompts must have batch size {b}");

        Tensor? samMaskPrompt = null;
        if (maskInputs is not null)
        {
            if (maskInputs.dim() != 4 || maskInputs.shape[0] != b || maskInputs.shape[1] != 1)
                throw new Sam3PromptException($"tracker SAM heads: mask inputs must be [{b}, 1, H, W], got [{string.Join(",", maskInputs.shape)}]");
            var (mh, mw) = sam_prompt_encoder.mask_input_size;
            samMaskPrompt = maskInputs.shape[2] != mh || maskInputs.shape[3] != mw
                ? nn.functional.interpolate(maskInputs.to(ScalarType.Float32), [mh, mw], mode: InterpolationMode.Bilinear,
                                            align_corners: false, antialias: true) // antialias for downsampling
                : maskInputs;
        }

        var (sparse, dense) = sam_prompt_encoder.forward(pointCoords, pointLabels, null, samMaskPrompt);
        var imagePe = sam_prompt_encoder.GetDensePe();
        using var dec = sam_mask_decoder.forward(backboneFeatures, imagePe, sparse, dense, multimaskOutput, repeatImage: false, highResFeatures);

        var isObjAppearing = dec.ObjectScoreLogits.gt(0); // [B, 1]
        var lowResMulti = torch.where(isObjAppearing[.., .., TensorIndex.None, TensorIndex.None], dec.Masks,
                                      torch.full_like(dec.Masks, no_obj_score)).to(ScalarType.Float32);
        var highResMulti = nn.functional.interpolate(lowResMulti, [image_size, image_size], mode: InterpolationMode.Bilinear, align_corners: false);

        var token = dec.SamTokensOut[.., 0];
        Tensor lowRes, highRes;
        if (multimaskOutput)
        {
            var best = dec.IouPred.argmax(-1);
            var batch = torch.arange(b, device: device);
            lowRes = lowResMulti.index([batch, best]).unsqueeze(1);
            highRes = highResMulti.index([batch, best]).unsqueeze(1);
            if (dec.SamTokensOut.shape[1] > 1) token = dec.SamTokensOut.index([batch, best]);
        }
        else
        {
            lowRes = lowResMulti;
            highRes = highResMulti;
        }
        var objPtr = obj_ptr_proj.forward(token);
        var lambda = isObjAppearing.to(ScalarType.Float32);
        objPtr = lambda * objPtr + (1 - lambda) * no_obj_ptr;
        var ious = dec.IouPred.alias();
        var score = dec.ObjectScoreLogits.alias();
        return new SamHeadsOutput(lowResMulti.MoveToOuterDisposeScope(), highResMulti.MoveToOuterDisposeScope(), ious.MoveToOuterDisposeScope(),
                                  lowRes.MoveToOuterDisposeScope(), highRes.MoveToOuterDisposeScope(), objPtr.MoveToOuterDisposeScope(),
                                  score.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Turns a binary/float mask [B, 1, S', S'] (typically input_mask_size², e.g. 1152²) into outputs without SAM
    /// (<c>_use_mask_as_output</c>): logits ±10, an antialiased low-res copy of size (S'/stride·4)², IoU 1, an object
    /// pointer from the SAM heads run on <c>mask_downsample(mask)</c>, object score ±10 from whether the mask is non-empty.
    /// </summary>
    public SamHeadsOutput UseMaskAsOutput(Tensor backboneFeatures, (Tensor s0, Tensor s1)? highResFeatures, Tensor maskInputs)
    {
        using var scope = NewDisposeScope();
        var m = maskInputs.to(ScalarType.Float32);
        var highRes = m * _hc.MaskAsOutputScale + _hc.MaskAsOutputBias;
        int ratio = low_res_mask_size / sam_image_embedding_size; // low-res masks are 4× the embedding grid
        long lh = highRes.shape[^2] / backbone_stride * ratio, lw = highRes.shape[^1] / backbone_stride * ratio;
        var lowRes = nn.functional.interpolate(highRes, [lh, lw], mode: InterpolationMode.Bilinear, align_corners: false, antialias: true);
        var ious = torch.ones(m.shape[0], 1, device: m.device);
        using var sam = ForwardSamHeads(backboneFeatures, maskInputs: mask_downsample.forward(Precision.PrecisionPolicy.ToWeightDtype(m, mask_downsample.weight!)), highResFeatures: highResFeatures);
        var isObj = m.flatten(1).gt(0.0).any(1).unsqueeze(-1);
        var lambda = isObj.to(ScalarType.Float32);
        var objectScore = _hc.MaskAsOutputScale * lambda + _hc.MaskAsOutputBias;
        var objPtr = lambda * sam.ObjPtr + (1 - lambda) * no_obj_ptr;
        lowRes = lowRes.MoveToOuterDisposeScope();
        highRes = highRes.MoveToOuterDisposeScope();
        return new SamHeadsOutput(lowRes, highRes, ious.MoveToOuterDisposeScope(), lowRes, highRes,
                                  objPtr.MoveToOuterDisposeScope(), objectScore.MoveToOuterDisposeScope());
    }

    /// <summary>Keeps, at each pixel, only the highest-scoring object of the batch; others are clamped to ≤ −10.</summary>
    public Tensor ApplyNonOverlappingConstraints(Tensor predMasks)
    {
        if (predMasks.shape[0] == 1) return predMasks.alias();
        using var scope = NewDisposeScope();
        var maxObj = predMasks.argmax(0, keepdim: true);
        var objInds = torch.arange(predMasks.shape[0], device: predMasks.device)[.., TensorIndex.None, TensorIndex.None, TensorIndex.None];
        var keep = maxObj.eq(objInds);
        return torch.where(keep, predMasks, predMasks.clamp(max: _hc.NonOverlapSuppressLogit)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Memory encoding of a prediction (<c>_encode_new_memory</c>). <paramref name="pixFeat"/> [B, C, N, N] = the frame's
    /// top-level features (without memory); <paramref name="predMasksHighRes"/> [B, 1, S, S] logits. The mask is
    /// binarised (<c>logit &gt; 0</c>) when it came from point prompts at eval, else passed through a sigmoid; then
    /// <c>·20 − 10</c>. <c>no_obj_embed_spatial</c> is added where the object score is ≤ 0. Returns float32 features
    /// (upstream rounds them to bfloat16 for storage: the caller does that).
    /// </summary>
    public MaskMemory EncodeNewMemory(Tensor pixFeat, Tensor predMasksHighRes, Tensor objectScoreLogits, bool isMaskFromPts)
    {
        using var scope = NewDisposeScope();
        if (non_overlap_masks_for_mem_enc && !training) predMasksHighRes = ApplyNonOverlappingConstraints(predMasksHighRes);
        var maskForMem = isMaskFromPts && !training ? predMasksHighRes.gt(0).to(ScalarType.Float32) : predMasksHighRes.sigmoid();
        if (sigmoid_scale_for_mem_enc != 1.0) maskForMem = maskForMem * sigmoid_scale_for_mem_enc;
        if (sigmoid_bias_for_mem_enc != 0.0) maskForMem = maskForMem + sigmoid_bias_for_mem_enc;
        using var mem = maskmem_backbone.forward(pixFeat, maskForMem, skipMaskSigmoid: true);
        var isObj = objectScoreLogits.gt(0).to(ScalarType.Float32); // [B, 1]
        var noObj = (1 - isObj[.., .., TensorIndex.None, TensorIndex.None])
                    * no_obj_embed_spatial[.., .., TensorIndex.None, TensorIndex.None].expand(mem.VisionFeatures.shape);
        var feats = mem.VisionFeatures + noObj;
        return new MaskMemory(feats.MoveToOuterDisposeScope(), mem.VisionPosEnc.alias().MoveToOuterDisposeScope());
    }

    /// <summary>1-D sine encoding (sam3_tracker_utils.get_1d_sine_pe): <c>cat(sin(p/t_i), cos(p/t_i))</c>, t_i = T^(2⌊i/2⌋/(dim/2)).</summary>
    public static Tensor Get1dSinePe(Tensor posInds, int dim, double temperature)
    {
        using var scope = NewDisposeScope();
        int peDim = dim / 2;
        var dimT = torch.arange(peDim, dtype: ScalarType.Float32, device: posInds.device);
        dimT = torch.pow(torch.tensor((float)temperature, device: posInds.device), 2 * torch.floor_divide(dimT, 2) / peDim);
        var pe = posInds.unsqueeze(-1) / dimT;
        return torch.cat([pe.sin(), pe.cos()], -1).MoveToOuterDisposeScope();
    }

    /// <summary>Temporal encoding of object pointers (<c>_get_tpos_enc</c>): [n, mem_dim] for signed frame distances.</summary>
    public Tensor GetTposEnc(IReadOnlyList<int> relPos, int? maxAbsPos, Device? device = null)
    {
        using var scope = NewDisposeScope();
        long tDiffMax = maxAbsPos is int m ? m - 1 : 1;
        var pos = torch.tensor(relPos.Select(x => (long)x).ToArray(), device: device ?? obj_ptr_tpos_proj.weight!.device) / tDiffMax;
        var pe = Get1dSinePe(pos, hidden_dim, _tposTemperature);
        return obj_ptr_tpos_proj.forward(Precision.PrecisionPolicy.ToWeightDtype(pe, obj_ptr_tpos_proj.weight!)).MoveToOuterDisposeScope();
    }

    /// <summary>Features of a frame without memory (initial conditioning frame): <c>feats + no_mem_embed</c>, [HW, B, C] → [B, C, H, W].</summary>
    public Tensor NoMemoryFeatures(Tensor currentVisionFeat, int h, int w)
    {
        using var scope = NewDisposeScope();
        long b = currentVisionFeat.shape[1];
        var x = (currentVisionFeat + no_mem_embed).permute(1, 2, 0).reshape(b, hidden_dim, h, w);
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Memory attention step of <c>_prepare_memory_conditioned_features</c> for already-selected memories.
    /// <paramref name="currentVisionFeat"/>/<paramref name="currentVisionPos"/> [HW, B, C] (top level);
    /// <paramref name="memories"/> spatial memories (conditioning frames with TPos 0 first, then previous frames);
    /// <paramref name="pointers"/> object pointers with their frame distances; <paramref name="maxAbsPos"/> =
    /// min(num_frames, max_obj_ptrs_in_encoder). Each pointer is split into C/mem_dim tokens. Returns [B, C, H, W].
    /// </summary>
    public Tensor PrepareMemoryConditionedFeatures(Tensor currentVisionFeat, Tensor currentVisionPos, int h, int w,
                                                   IReadOnlyList<MemoryFrame> memories, IReadOnlyList<ObjectPointer> pointers, int maxAbsPos)
    {
        if (memories.Count == 0 && pointers.Count == 0)
            throw new Sam3StateException("memory attention needs at least one memory (use NoMemoryFeatures on initial conditioning frames)");
        using var scope = NewDisposeScope();
        long b = currentVisionFeat.shape[1];
        var device = currentVisionFeat.device;
        var prompt = new List<Tensor>();
        var promptPos = new List<Tensor>();
        foreach (var mf in memories)
        {
            if (mf.TPos < 0 || mf.TPos >= num_maskmem) throw new Sam3StateException($"memory temporal position {mf.TPos} outside [0, {num_maskmem - 1}]");
            prompt.Add(mf.Features.to(device).to(ScalarType.Float32).flatten(2).permute(2, 0, 1));
            var pe = mf.PosEnc.to(device).flatten(2).permute(2, 0, 1);
            promptPos.Add(pe + maskmem_tpos_enc[num_maskmem - mf.TPos - 1]);
        }
        int numObjPtrTokens = 0;
        if (pointers.Count > 0)
        {
            var ptrs = torch.stack(pointers.Select(p => p.Ptr.to(device)).ToArray(), 0); // [P, B, C]
            var objPos = GetTposEnc(pointers.Select(p => p.RelPos).ToArray(), maxAbsPos, device).unsqueeze(1).expand(-1, b, -1);
            if (mem_dim < hidden_dim)
            {
                int split = hidden_dim / mem_dim;
                ptrs = ptrs.reshape(-1, b, split, mem_dim).permute(0, 2, 1, 3).flatten(0, 1);
                objPos = objPos.repeat_interleave(split, 0);
            }
            prompt.Add(ptrs);
            promptPos.Add(objPos);
            numObjPtrTokens = (int)ptrs.shape[0];
        }
        using var outp = transformer.encoder.forward(currentVisionFeat, torch.cat(prompt, 0), currentVisionPos, torch.cat(promptPos, 0), numObjPtrTokens);
        return outp.Memory.permute(1, 2, 0).reshape(b, hidden_dim, h, w).MoveToOuterDisposeScope();
    }

    /// <summary>Memory-selection score of a frame (<c>cal_mem_score</c>): mean(iou · (2σ(obj)−1 if obj &gt; 0 else 0)).</summary>
    public static Tensor CalMemScore(Tensor objectScoreLogits, Tensor iouScore)
    {
        using var scope = NewDisposeScope();
        var norm = torch.where(objectScoreLogits.gt(0), objectScoreLogits.sigmoid() * 2 - 1, torch.zeros_like(objectScoreLogits));
        return (norm * iouScore).mean().MoveToOuterDisposeScope();
    }
}
