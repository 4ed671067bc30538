using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Data;

/// <summary>
/// torchvision's <c>F.resize</c> on a uint8 mask tensor, the way upstream's train transforms resize instance masks
/// (<c>basic_for_api.resize</c>): cast to float32, bilinear interpolation with <b>antialias</b> (align_corners False;
/// the default of torchvision ≥ 0.17, and what the reference fixture used), <c>round</c>, cast back to uint8. LibTorch's
/// <c>_upsample_bilinear2d_aa</c> does the interpolation (TorchSharp exposes it as <c>interpolate(..., antialias: true)</c>).
/// </summary>
internal static class MaskResize
{
    /// <summary>uint8 [H, W] → new uint8 [outHeight, outWidth] (the input is not disposed).</summary>
    public static Tensor Resize(Tensor mask, int outHeight, int outWidth, bool antialias = true)
    {
        if (mask.dim() != 2) throw new ArgumentException($"expected a [H, W] mask, got [{string.Join(", ", mask.shape)}]", nameof(mask));
        if (mask.shape[0] == outHeight && mask.shape[1] == outWidth) return mask.clone();
        using var scope = NewDisposeScope();
        var x = mask.to(ScalarType.Float32).unsqueeze(0).unsqueeze(0);
        var y = nn.functional.interpolate(x, [outHeight, outWidth], mode: InterpolationMode.Bilinear, align_corners: false, antialias: antialias);
        var result = y.round().to(ScalarType.Byte).squeeze(0).squeeze(0).contiguous();
        return result.MoveToOuterDisposeScope();
    }
}
