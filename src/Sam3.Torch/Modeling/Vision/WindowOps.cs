using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Vision;

/// <summary>Non-overlapping window partition of a channels-last grid (vitdet.py <c>window_partition</c> / <c>window_unpartition</c>).</summary>
internal static class WindowOps
{
    /// <summary>
    /// Splits <c>[B, H, W, C]</c> into windows <c>[B·nWin, ws, ws, C]</c>, ordered (batch, row-window, col-window).
    /// When H or W is not a multiple of <paramref name="windowSize"/>, the grid is first zero-padded at the bottom/right
    /// to <c>(Hp, Wp)</c>, which is returned for <see cref="Unpartition"/>.
    /// </summary>
    public static (Tensor windows, (long Hp, long Wp) padHw) Partition(Tensor x, int windowSize)
    {
        if (x.dim() != 4) throw new Sam3Exception($"window partition expects [B,H,W,C], got [{string.Join(",", x.shape)}]");
        if (windowSize <= 0) throw new Sam3ConfigException($"window size must be positive, got {windowSize}");
        using var scope = NewDisposeScope();
        long b = x.shape[0], h = x.shape[1], w = x.shape[2], c = x.shape[3];
        long padH = (windowSize - h % windowSize) % windowSize;
        long padW = (windowSize - w % windowSize) % windowSize;
        if (padH > 0 || padW > 0)
            x = nn.functional.pad(x, [0, 0, 0, padW, 0, padH]);
        long hp = h + padH, wp = w + padW;
        var windows = x.reshape(b, hp / windowSize, windowSize, wp / windowSize, windowSize, c)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(-1, windowSize, windowSize, c);
        return (windows.MoveToOuterDisposeScope(), (hp, wp));
    }

    /// <summary>
    /// Inverse of <see cref="Partition"/>: <c>[B·nWin, ws, ws, C]</c> → <c>[B, H, W, C]</c>, dropping the padding
    /// (the result is then a cropped view of the padded grid, as upstream).
    /// </summary>
    public static Tensor Unpartition(Tensor windows, int windowSize, (long Hp, long Wp) padHw, (long H, long W) hw)
    {
        using var scope = NewDisposeScope();
        var (hp, wp) = padHw;
        var (h, w) = hw;
        long b = windows.shape[0] / (hp * wp / windowSize / windowSize);
        var x = windows.reshape(b, hp / windowSize, wp / windowSize, windowSize, windowSize, -1)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(b, hp, wp, -1);
        if (hp > h || wp > w)
            x = x.slice(1, 0, h, 1).slice(2, 0, w, 1);
        return x.MoveToOuterDisposeScope();
    }
}
