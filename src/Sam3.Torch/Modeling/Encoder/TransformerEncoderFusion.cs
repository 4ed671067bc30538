using Sam3.Torch.Config;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Encoder;

/// <summary>Result of <see cref="TransformerEncoderFusion.forward"/> (the dict returned upstream).</summary>
/// <param name="Memory">Encoded image tokens, seq-first [ΣHW,B,d].</param>
/// <param name="PaddingMask">Image padding mask, seq-first [ΣHW,B] (null when no image mask was given).</param>
/// <param name="PosEmbed">Image position encoding (+ level embedding), seq-first [ΣHW,B,d].</param>
/// <param name="MemoryText">The prompt, unchanged (seq-first [Lp,B,d]).</param>
/// <param name="LevelStartIndex">int64 [levels].</param>
/// <param name="SpatialShapes">int64 [levels,2] = (H,W).</param>
/// <param name="ValidRatios">float32 [B,levels,2] = (w,h) ratios.</param>
internal sealed record EncoderFusionOutput(Tensor Memory, Tensor? PaddingMask, Tensor PosEmbed, Tensor MemoryText,
                                         Tensor LevelStartIndex, Tensor SpatialShapes, Tensor ValidRatios);

/// <summary>
/// The fusion encoder of SAM3 (sam3/model/encoder.py <c>TransformerEncoderFusion</c>, with the flattening of its base
/// <c>TransformerEncoder</c>): image tokens go through pre-norm layers that self-attend (with the image position
/// encoding on q/k) and cross-attend to the prompt (text + geometry tokens). The prompt itself is not updated.
/// State-dict keys: <c>layers.{i}.*</c>, plus <c>level_embed</c> when several feature levels are used and
/// <c>text_pooling_proj.*</c> when <c>add_pooled_text_to_img_feat</c> is set (both off in SAM3).
/// </summary>
internal sealed class TransformerEncoderFusion : nn.Module
{
    public readonly ModuleList<TransformerEncoderLayer> layers;
    public readonly Parameter? level_embed;
    public readonly Linear? text_pooling_proj;

    public int num_layers { get; }

    /// <summary>
    /// Activation checkpointing of the layers when training (upstream <c>use_act_checkpoint</c>, True in the builder): each
    /// layer keeps only its inputs and is re-run in the backward (<see cref="Training.LayerCheckpoint"/>). Set by
    /// <see cref="Training.TrainingMode.Apply"/>; no effect in eval mode.
    /// </summary>
    public bool use_act_checkpoint { get; set; }
    public int num_feature_levels { get; }
    public bool add_pooled_text_to_img_feat { get; }
    public bool pool_text_with_mask { get; }

    public TransformerEncoderFusion(Sam3Config cfg) : base(nameof(TransformerEncoderFusion))
    {
        var e = cfg.Encoder;
        num_layers = e.NumLayers;
        num_feature_levels = e.NumFeatureLevels;
        add_pooled_text_to_img_feat = e.AddPooledTextToImgFeat;
        pool_text_with_mask = e.PoolTextWithMask;
        layers = new ModuleList<TransformerEncoderLayer>();
        for (int i = 0; i < e.NumLayers; i++)
        {
            var layer = TransformerEncoderLayer.ForFusion(cfg);
            layer.layer_idx = i;
            layers.Add(layer);
        }
        if (num_feature_levels > 1) level_embed = new Parameter(torch.randn(num_feature_levels, e.DModel)); // upstream: normal_ init
        if (add_pooled_text_to_img_feat) text_pooling_proj = nn.Linear(e.DModel, e.DModel);
        RegisterComponents();
    }

    /// <summary>
    /// Runs the encoder as <c>Sam3ImageModel._run_encoder</c> calls it.
    /// </summary>
    /// <param name="src">Per level image features, seq-first [H·W,B,d] (row-major flattening of NCHW).</param>
    /// <param name="featSizes">Per level (H,W).</param>
    /// <param name="srcPos">Per level position encodings, seq-first [H·W,B,d].</param>
    /// <param name="prompt">Prompt tokens, seq-first [Lp,B,d].</param>
    /// <param name="promptKeyPaddingMask">bool [B,Lp], True = padding.</param>
    /// <param name="srcKeyPaddingMask">Optional per level image masks, seq-first [H·W,B] bool (True = padding).</param>
    /// <param name="layerOutputs">When given, receives each layer's output (batch-first [B,ΣHW,d]), owned by the caller's scope.</param>
    public EncoderFusionOutput forward(IList<Tensor> src, IList<(int H, int W)> featSizes, IList<Tensor> srcPos, Tensor prompt,
                                       Tensor? promptKeyPaddingMask, IList<Tensor?>? srcKeyPaddingMask = null,
                                       List<Tensor>? layerOutputs = null)
    {
        if (src.Count != num_feature_levels || featSizes.Count != src.Count || srcPos.Count != src.Count)
            throw new Sam3Exception($"TransformerEncoderFusion: expected {num_feature_levels} feature level(s), got src {src.Count}, sizes {featSizes.Count}, pos {srcPos.Count}");
        if (srcKeyPaddingMask is not null && srcKeyPaddingMask.Count != src.Count)
            throw new Sam3Exception("TransformerEncoderFusion: one padding mask per feature level is expected");
        if (prompt.dim() != 3) throw new Sam3Exception($"TransformerEncoderFusion: prompt must be seq-first [L,B,d], got [{string.Join(",", prompt.shape)}]");

        using var scope = NewDisposeScope();
        long bs = src[0].shape[1];
        var srcFlat = new List<Tensor>();
        var posFlat = new List<Tensor>();
        var maskFlat = new List<Tensor>();
        var validRatios = new List<Tensor>();
        bool hasMask = srcKeyPaddingMask is not null && srcKeyPaddingMask[0] is not null;
        Tensor? pooledText = null;
        if (add_pooled_text_to_img_feat)
            pooledText = text_pooling_proj!.forward(PoolTextFeat(prompt, promptKeyPaddingMask, pool_text_with_mask)); // [B,d]

        for (int lvl = 0; lvl < src.Count; lvl++)
        {
            var (h, w) = featSizes[lvl];
            if (src[lvl].dim() != 3 || src[lvl].shape[0] != (long)h * w || src[lvl].shape[1] != bs)
                throw new Sam3Exception($"TransformerEncoderFusion: level {lvl} features must be [{h * w},{bs},d], got [{string.Join(",", src[lvl].shape)}]");
            if (!srcPos[lvl].shape.SequenceEqual(src[lvl].shape))
                throw new Sam3Exception($"TransformerEncoderFusion: level {lvl} position encoding shape [{string.Join(",", srcPos[lvl].shape)}] differs from the features");
            // seq-first [HW,B,C] -> batch-first [B,HW,C] (upstream: reshape(h,w,b,c).permute(2,3,0,1) then flatten(2).transpose(1,2))
            var s = src[lvl].transpose(0, 1);
            if (pooledText is not null) s = s + pooledText.unsqueeze(1);
            srcFlat.Add(s);
            var p = srcPos[lvl].transpose(0, 1);
            if (level_embed is not null) p = p + level_embed[lvl].view(1, 1, -1);
            posFlat.Add(p);
            if (hasMask)
            {
                var m = srcKeyPaddingMask![lvl] ?? throw new Sam3Exception("TransformerEncoderFusion: padding masks must be given for all levels or none");
                var mb = m.transpose(0, 1).reshape(bs, h, w); // [B,H,W]
                maskFlat.Add(mb.flatten(1));
                validRatios.Add(ValidRatio(mb));
            }
        }
        var srcAll = torch.cat(srcFlat, 1);
        var posAll = torch.cat(posFlat, 1);
        Tensor? maskAll = hasMask ? torch.cat(maskFlat, 1) : null;
        var spatialShapes = torch.tensor(featSizes.SelectMany(f => new long[] { f.H, f.W }).ToArray(), device: srcAll.device).view(-1, 2);
        var levelStart = torch.cat([torch.zeros(1, dtype: ScalarType.Int64, device: srcAll.device),
                                    spatialShapes.prod(1).cumsum(0)[TensorIndex.Slice(null, -1)]]);
        var valid = hasMask ? torch.stack(validRatios, 1)
                            : torch.ones(bs, num_feature_levels, 2, device: srcAll.device);

        var promptBf = prompt.transpose(0, 1);
        var output = srcAll;
        var perLayer = new List<Tensor>();
        foreach (var layer in layers)
        {
            output = use_act_checkpoint && training
                ? Training.LayerCheckpoint.Apply(layer, t => [layer.forward(t[0]!, t[1]!, tgtKeyPaddingMask: t[3],
                      memoryKeyPaddingMask: t[4], queryPos: t[2])], output, promptBf, posAll, maskAll, promptKeyPaddingMask)[0]!
                : layer.forward(output, promptBf, tgtKeyPaddingMask: maskAll, memoryKeyPaddingMask: promptKeyPaddingMask,
                                queryPos: posAll);
            perLayer.Add(output);
        }
        var result = new EncoderFusionOutput(
            output.transpose(0, 1).MoveToOuterDisposeScope(),
            maskAll?.transpose(0, 1).MoveToOuterDisposeScope(),
            posAll.transpose(0, 1).MoveToOuterDisposeScope(),
            prompt.alias().MoveToOuterDisposeScope(),
            levelStart.MoveToOuterDisposeScope(),
            spatialShapes.MoveToOuterDisposeScope(),
            valid.MoveToOuterDisposeScope());
        if (layerOutputs is not null)
            foreach (var t in perLayer) layerOutputs.Add(t.MoveToOuterDisposeScope());
        return result;
    }

    /// <summary>model_misc.get_valid_ratio: mask [B,H,W] (True = padding) → [B,2] = (valid_w/W, valid_h/H).</summary>
    public static Tensor ValidRatio(Tensor mask)
    {
        using var scope = NewDisposeScope();
        long h = mask.shape[1], w = mask.shape[2];
        var validH = mask[.., .., 0].logical_not().sum(1);
        var validW = mask[.., 0, ..].logical_not().sum(1);
        var r = torch.stack([validW.to(ScalarType.Float32) / w, validH.to(ScalarType.Float32) / h], -1);
        return r.MoveToOuterDisposeScope();
    }

    /// <summary>encoder.pool_text_feat: mean of the prompt (seq-first [L,B,d]) over its valid tokens → [B,d].</summary>
    public static Tensor PoolTextFeat(Tensor prompt, Tensor? promptMask, bool poolWithMask)
    {
        using var scope = NewDisposeScope();
        if (!poolWithMask || promptMask is null)
        {
            if (poolWithMask) throw new Sam3Exception("pool_text_feat: pooling with mask needs the prompt mask");
            return prompt.mean([0]).MoveToOuterDisposeScope();
        }
        var isValid = promptMask.logical_not().to(prompt.dtype).permute(1, 0).unsqueeze(-1); // [L,B,1]
        var numValid = isValid.sum(0).clamp(min: 1.0);
        return ((prompt * isValid).sum(0) / numValid).MoveToOuterDisposeScope();
    }
}
