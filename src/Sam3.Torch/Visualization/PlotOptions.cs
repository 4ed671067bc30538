using System.Globalization;

namespace Sam3.Torch.Visualization;

/// <summary>
/// Drawing settings shared by <see cref="Visualizer"/> and <see cref="Plot"/>. Defaults follow the reference's
/// visualisation helpers where they have a pixel-space meaning (see each member).
/// </summary>
public sealed record PlotOptions
{
    public static PlotOptions Default { get; } = new();

    /// <summary>Colours by object index (cycled). Default <see cref="Palette.Tab10"/>.</summary>
    public IReadOnlyList<RgbColor> Palette { get; init; } = Visualization.Palette.Tab10;

    /// <summary>Mask opacity: out = (1 − α)·pixel + α·colour. 0.5 as the reference's <c>plot_mask</c> / <c>render_masklet_frame</c>.</summary>
    public double MaskAlpha { get; init; } = 0.5;

    /// <summary>Width in pixels of a contour drawn along each mask's boundary in the mask's colour; 0 (default) draws none.</summary>
    public int ContourThickness { get; init; }

    /// <summary>Box line width in pixels, drawn inside the box (2 as <c>render_masklet_frame</c>'s cv2.rectangle).</summary>
    public int BoxThickness { get; init; } = 2;

    /// <summary>Whether <see cref="Plot"/>.Results writes a label per object.</summary>
    public bool ShowLabels { get; init; } = true;

    /// <summary>Label text from (object index, score or null). Default: the reference's <c>"(id=0, prob=0.26)"</c>, or <c>"(id=0)"</c> without a score.</summary>
    public Func<int, float?, string> LabelFormatter { get; init; } = DefaultLabel;

    /// <summary>OpenCV Hershey-simplex font scale of label text (0.5 as <c>render_masklet_frame</c>).</summary>
    public double FontScale { get; init; } = 0.5;

    /// <summary>Stroke width of label text in pixels.</summary>
    public int FontThickness { get; init; } = 1;

    /// <summary>Label background colour (white, as the reference's <c>plot_bbox</c> text box).</summary>
    public RgbColor LabelBackground { get; init; } = RgbColor.White;

    /// <summary>Label background opacity (0.75 as <c>plot_bbox</c>).</summary>
    public double LabelBackgroundAlpha { get; init; } = 0.75;

    /// <summary>Label text colour; null (default) uses the object's colour, as the reference does.</summary>
    public RgbColor? LabelTextColor { get; init; }

    /// <summary>Fill of positive points (label 1): matplotlib "green", as the reference's <c>show_points</c>.</summary>
    public RgbColor PositivePointColor { get; init; } = RgbColor.Green;

    /// <summary>Fill of negative points (label 0): "red", as <c>show_points</c>.</summary>
    public RgbColor NegativePointColor { get; init; } = RgbColor.Red;

    /// <summary>Outline of point markers: white, as <c>show_points</c>.</summary>
    public RgbColor PointEdgeColor { get; init; } = RgbColor.White;

    /// <summary>Outer radius in pixels of the five-pointed star marking a point (the reference's marker is '*').</summary>
    public int MarkerRadius { get; init; } = 12;

    /// <summary>Width of the marker outline in pixels; 0 draws none.</summary>
    public int MarkerEdgeThickness { get; init; } = 1;

    public static string DefaultLabel(int index, float? score) =>
        score is { } s
            ? string.Create(CultureInfo.InvariantCulture, $"(id={index}, prob={s:0.00})")
            : string.Create(CultureInfo.InvariantCulture, $"(id={index})");

    /// <summary>Throws <see cref="Sam3Exception"/> naming the first setting out of range.</summary>
    public void Validate()
    {
        if (Palette is null || Palette.Count == 0) throw new Sam3Exception("PlotOptions.Palette must hold at least one colour");
        if (!(MaskAlpha >= 0 && MaskAlpha <= 1)) throw new Sam3Exception($"PlotOptions.MaskAlpha must be in [0, 1], got {MaskAlpha}");
        if (!(LabelBackgroundAlpha >= 0 && LabelBackgroundAlpha <= 1)) throw new Sam3Exception($"PlotOptions.LabelBackgroundAlpha must be in [0, 1], got {LabelBackgroundAlpha}");
        if (ContourThickness < 0 || ContourThickness > 100) throw new Sam3Exception($"PlotOptions.ContourThickness must be in [0, 100], got {ContourThickness}");
        if (BoxThickness < 1 || BoxThickness > 100) throw new Sam3Exception($"PlotOptions.BoxThickness must be in [1, 100], got {BoxThickness}");
        if (!(FontScale > 0 && FontScale <= 20)) throw new Sam3Exception($"PlotOptions.FontScale must be in (0, 20], got {FontScale}");
        if (FontThickness < 1 || FontThickness > 50) throw new Sam3Exception($"PlotOptions.FontThickness must be in [1, 50], got {FontThickness}");
        if (MarkerRadius < 1 || MarkerRadius > 1000) throw new Sam3Exception($"PlotOptions.MarkerRadius must be in [1, 1000], got {MarkerRadius}");
        if (MarkerEdgeThickness < 0 || MarkerEdgeThickness > 100) throw new Sam3Exception($"PlotOptions.MarkerEdgeThickness must be in [0, 100], got {MarkerEdgeThickness}");
        if (LabelFormatter is null) throw new Sam3Exception("PlotOptions.LabelFormatter must not be null");
    }
}
