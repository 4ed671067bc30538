namespace Sam3.Torch.Visualization;

/// <summary>
/// Fixed colour palettes. Object i gets colour <c>palette[i % palette.Count]</c>, so a mask, its box and its label
/// share a colour.
/// <para>
/// The reference's <c>plot_results</c> draws from <c>COLORS</c>, 128 colours made at import time by k-means over
/// random samples in Lab space (seeded, but the result depends on scikit-learn's version), which cannot be reproduced
/// without that stack; its <c>show_mask</c> uses matplotlib's "tab10" colour cycle. <see cref="Tab10"/> is the
/// default here.
/// </para>
/// </summary>
public static class Palette
{
    /// <summary>matplotlib's "tab10" (Tableau 10) colours in order.</summary>
    public static IReadOnlyList<RgbColor> Tab10 { get; } = new[]
    {
        RgbColor.FromHex("#1f77b4"), RgbColor.FromHex("#ff7f0e"), RgbColor.FromHex("#2ca02c"), RgbColor.FromHex("#d62728"),
        RgbColor.FromHex("#9467bd"), RgbColor.FromHex("#8c564b"), RgbColor.FromHex("#e377c2"), RgbColor.FromHex("#7f7f7f"),
        RgbColor.FromHex("#bcbd22"), RgbColor.FromHex("#17becf"),
    };

    /// <summary>Colour of object <paramref name="index"/> in <paramref name="palette"/> (default <see cref="Tab10"/>), cycling.</summary>
    public static RgbColor At(int index, IReadOnlyList<RgbColor>? palette = null)
    {
        palette ??= Tab10;
        if (palette.Count == 0) throw new Sam3Exception("the colour palette is empty");
        int i = index % palette.Count;
        return palette[i < 0 ? i + palette.Count : i];
    }
}
