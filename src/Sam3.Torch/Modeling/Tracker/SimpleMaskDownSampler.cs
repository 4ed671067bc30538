using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Tracker;

/// <summary>
/// Progressive mask downsampler (model/memory.py SimpleMaskDownSampler): optionally resizes the mask to
/// <c>interpol_size</c> (bilinear, antialias, align_corners=False), then log_stride(total_stride) × [Conv(k, stride,
/// padding) with channels ×stride², LayerNorm2d, GELU] and a final 1×1 conv to embed_dim. <c>encoder</c> indices:
/// conv 3i, norm 3i+1, GELU 3i+2, final conv 3n.
/// </summary>
internal sealed class SimpleMaskDownSampler : nn.Module<Tensor, Tensor>
{
    public readonly Sequential encoder;
    public int[]? interpol_size { get; }

    public SimpleMaskDownSampler(MaskDownsamplerConfig c, double layerNorm2dEps) : base(nameof(SimpleMaskDownSampler))
    {
        if (c.Stride < 2 || c.TotalStride < c.Stride) throw new Sam3ConfigException($"SimpleMaskDownSampler: invalid stride {c.Stride} / total stride {c.TotalStride}");
        int numLayers = (int)Math.Floor(Math.Log2(c.TotalStride) / Math.Log2(c.Stride));
        if ((int)Math.Pow(c.Stride, numLayers) != c.TotalStride)
            throw new Sam3ConfigException($"SimpleMaskDownSampler: total_stride {c.TotalStride} is not a power of stride {c.Stride}");
        var mods = new List<(string, nn.Module<Tensor, Tensor>)>();
        int inCh = 1, outCh = 1;
        for (int i = 0; i < numLayers; i++)
        {
            outCh = inCh * c.Stride * c.Stride;
            mods.Add(((3 * i).ToString(), nn.Conv2d(inCh, outCh, kernel_size: c.KernelSize, stride: c.Stride, padding: c.Padding)));
            mods.Add(((3 * i + 1).ToString(), new LayerNorm2d(outCh, layerNorm2dEps)));
            mods.Add(((3 * i + 2).ToString(), nn.GELU()));
            inCh = outCh;
        }
        mods.Add(((3 * numLayers).ToString(), nn.Conv2d(outCh, c.EmbedDim, kernel_size: 1)));
        encoder = nn.Sequential(mods.ToArray());
        if (c.InterpolSize is { } s)
        {
            if (s.Length != 2) throw new Sam3ConfigException("SimpleMaskDownSampler: interpol_size must have 2 entries");
            interpol_size = [s[0], s[1]];
        }
        RegisterComponents();
    }

    /// <summary>Mask [B, 1, H, W] → [B, embed_dim, S/total_stride, S/total_stride] (S = interpol_size or H).</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        if (interpol_size is not null && (x.shape[^2] != interpol_size[0] || x.shape[^1] != interpol_size[1]))
            x = nn.functional.interpolate(x.to(ScalarType.Float32), [interpol_size[0], interpol_size[1]],
                                          mode: InterpolationMode.Bilinear, align_corners: false, antialias: true);
        return Precision.PrecisionPolicy.ForwardSequential(encoder, x).MoveToOuterDisposeScope(); // = encoder.forward(x) with the bf16 policy's casts
    }
}
