using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Tracker;

/// <summary>Output of the memory encoder: features [B, out_dim, H, W] and their sine position encoding (same shape).</summary>
internal sealed record MaskMemory(Tensor VisionFeatures, Tensor VisionPosEnc) : IDisposable
{
    public void Dispose()
    {
        VisionFeatures.Dispose();
        VisionPosEnc.Dispose();
    }
}

/// <summary>
/// The tracker's memory encoder (model/memory.py SimpleMaskEncoder): <c>sigmoid(mask)</c> (unless skipped) →
/// <see cref="SimpleMaskDownSampler"/>, added to <c>pix_feat_proj(pix_feat)</c>, fused by <see cref="SimpleFuser"/> and
/// projected to out_dim; position encoding = PositionEmbeddingSine(out_dim) of the result.
/// </summary>
internal sealed class SimpleMaskEncoder : nn.Module
{
    public readonly SimpleMaskDownSampler mask_downsampler;
    public readonly Conv2d pix_feat_proj;
    public readonly SimpleFuser fuser;
    public readonly PositionEmbeddingSine position_encoding;
    /// <summary>1×1 conv in_dim → out_dim; null (identity) when they are equal.</summary>
    public readonly Conv2d? out_proj;

    public SimpleMaskEncoder(Sam3Config cfg) : base(nameof(SimpleMaskEncoder))
    {
        var c = cfg.Tracker.MemoryEncoder;
        double eps = cfg.HardcodedInClasses.MemoryLayerNorm2dEps;
        mask_downsampler = new SimpleMaskDownSampler(c.MaskDownsampler, eps);
        pix_feat_proj = nn.Conv2d(c.InDim, c.InDim, kernel_size: 1);
        fuser = new SimpleFuser(() => new CXBlock(c.CxBlock, eps), c.FuserNumLayers);
        position_encoding = new PositionEmbeddingSine(c.PosNumPosFeats, normalize: true);
        if (c.OutDim != c.InDim) out_proj = nn.Conv2d(c.InDim, c.OutDim, kernel_size: 1);
        RegisterComponents();
    }

    /// <summary>
    /// <paramref name="pixFeat"/> [B, in_dim, H, W], <paramref name="masks"/> [B, 1, h, w] (logits, or already-scaled
    /// values with <paramref name="skipMaskSigmoid"/>, as the tracker passes them).
    /// </summary>
    public MaskMemory forward(Tensor pixFeat, Tensor masks, bool skipMaskSigmoid = false)
    {
        using var scope = NewDisposeScope();
        if (!skipMaskSigmoid) masks = masks.sigmoid();
        masks = mask_downsampler.forward(masks);
        pixFeat = pixFeat.to(masks.device);
        var x = pix_feat_proj.forward(Precision.PrecisionPolicy.ToWeightDtype(pixFeat, pix_feat_proj.weight!)) + masks;
        x = fuser.forward(x);
        if (out_proj is not null) x = out_proj.forward(Precision.PrecisionPolicy.ToWeightDtype(x, out_proj.weight!));
        var pos = position_encoding.forward(x).to(x.dtype);
        return new MaskMemory(x.MoveToOuterDisposeScope(), pos.MoveToOuterDisposeScope());
    }
}
