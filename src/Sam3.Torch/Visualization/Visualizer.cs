using System.Runtime.InteropServices;
using OpenCvSharp;
using Sam3.Torch.IO;
using TorchSharp;
using CvPoint = OpenCvSharp.Point;
using CvSize = OpenCvSharp.Size;
using Scalar = OpenCvSharp.Scalar;

namespace Sam3.Torch.Visualization;

/// <summary>
/// Drawing primitives, counterparts of the reference's <c>plot_mask</c>/<c>show_mask</c> (mask overlays),
/// <c>show_box</c>/<c>plot_bbox</c>/<c>draw_box_on_image</c> (boxes), <c>show_points</c> (point prompts) and the text
/// of <c>plot_bbox</c> (labels). Every method returns a <b>new</b> image and leaves its input untouched.
/// Coordinates are pixels of the image: (x, y) with x to the right, y down, pixel centres at integers (as in both
/// matplotlib's <c>imshow</c> and OpenCV). Object i is drawn in <c>Palette.At(i, options.Palette)</c>.
/// </summary>
public static class Visualizer
{
    /// <summary>Sub-pixel bits for OpenCV polygon coordinates.</summary>
    private const int Shift = 4;

    // ------------------------------------------------------------------------------------------------ masks

    /// <summary>
    /// Blends each mask over the image in its own colour: inside mask i, out = round((1 − α)·pixel + α·colour_i)
    /// per channel, masks applied in order (a later mask blends over an earlier one). With
    /// <see cref="PlotOptions.ContourThickness"/> &gt; 0 the mask's outline is then drawn in its colour.
    /// Every mask must have the image's size.
    /// </summary>
    public static RgbImage OverlayMasks(RgbImage image, IReadOnlyList<BinaryMask> masks, PlotOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(masks);
        options = Checked(options);
        CheckMasks(image, masks);
        using (var canvas = new Canvas(image))
        {
            for (int i = 0; i < masks.Count; i++) OverlayMask(canvas, masks[i], Palette.At(i, options.Palette), options);
            return Finish(canvas);
        }
    }

    /// <summary>Masks as a [N, H, W] or [N, 1, H, W] tensor (bool, integer nonzero, or float &gt; 0.5).</summary>
    internal static RgbImage OverlayMasks(RgbImage image, torch.Tensor masks, PlotOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(masks);
        return OverlayMasks(image, BinaryMask.FromTensorBatch(masks), options);
    }

    // ------------------------------------------------------------------------------------------------ boxes

    /// <summary>
    /// Draws boxes given as xyxy pixel coordinates (4 values per box). The outline runs along the pixels
    /// (⌊x0⌋..⌊x1⌋) × (⌊y0⌋..⌊y1⌋) (corners inclusive, as the reference's <c>cv2.rectangle(int(x0), int(y0), int(x1), int(y1))</c>),
    /// <see cref="PlotOptions.BoxThickness"/> pixels wide, growing <b>inwards</b> so nothing outside the box changes.
    /// Parts outside the image are clipped. Corners may come in any order; NaN/infinite values are a <see cref="Sam3Exception"/>.
    /// </summary>
    public static RgbImage DrawBoxes(RgbImage image, ReadOnlySpan<float> boxesXyxy, PlotOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        options = Checked(options);
        int n = CheckBoxes(boxesXyxy);
        using (var canvas = new Canvas(image))
        {
            for (int i = 0; i < n; i++) DrawBox(canvas, boxesXyxy.Slice(4 * i, 4), Palette.At(i, options.Palette), options.BoxThickness);
            return Finish(canvas);
        }
    }

    /// <summary>Boxes as a [N, 4] xyxy pixel tensor (the processor's <c>boxes</c> output).</summary>
    internal static RgbImage DrawBoxes(RgbImage image, torch.Tensor boxesXyxy, PlotOptions? options = null) =>
        DrawBoxes(image, BoxesFromTensor(boxesXyxy), options);

    // ------------------------------------------------------------------------------------------------ points

    /// <summary>
    /// Marks point prompts (x, y pairs in pixels) with five-pointed stars as the reference's <c>show_points</c>:
    /// label 1 (positive) filled <see cref="PlotOptions.PositivePointColor"/> (green), label 0 (negative)
    /// <see cref="PlotOptions.NegativePointColor"/> (red), outlined white. Like the reference, points with any other
    /// label are not drawn.
    /// </summary>
    public static RgbImage DrawPoints(RgbImage image, ReadOnlySpan<float> pointsXy, ReadOnlySpan<int> labels, PlotOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        options = Checked(options);
        if (pointsXy.Length % 2 != 0) throw new Sam3Exception($"points must be (x, y) pairs, got {pointsXy.Length} values");
        int n = pointsXy.Length / 2;
        if (labels.Length != n) throw new Sam3Exception($"{n} points but {labels.Length} labels");
        for (int i = 0; i < pointsXy.Length; i++)
            if (!float.IsFinite(pointsXy[i])) throw new Sam3Exception($"point {i / 2} has a non-finite coordinate ({pointsXy[i]})");
        using (var canvas = new Canvas(image))
        {
            for (int i = 0; i < n; i++)
            {
                if (labels[i] == 1) DrawStar(canvas, pointsXy[2 * i], pointsXy[2 * i + 1], options.PositivePointColor, options);
                else if (labels[i] == 0) DrawStar(canvas, pointsXy[2 * i], pointsXy[2 * i + 1], options.NegativePointColor, options);
            }
            return Finish(canvas);
        }
    }

    /// <summary>Points as a [N, 2] pixel tensor, labels as [N] (integer or bool: true = positive).</summary>
    internal static RgbImage DrawPoints(RgbImage image, torch.Tensor pointsXy, torch.Tensor labels, PlotOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(pointsXy);
        ArgumentNullException.ThrowIfNull(labels);
        if (pointsXy.dim() != 2 || pointsXy.shape[1] != 2) throw new Sam3Exception($"points must have shape [N, 2], got [{string.Join(", ", pointsXy.shape)}]");
        if (labels.dim() != 1) throw new Sam3Exception($"point labels must have shape [N], got [{string.Join(", ", labels.shape)}]");
        using var scope = torch.NewDisposeScope();
        float[] xy = pointsXy.cpu().to(torch.ScalarType.Float32).contiguous().data<float>().ToArray();
        int[] l = labels.cpu().to(torch.ScalarType.Int32).contiguous().data<int>().ToArray();
        return DrawPoints(image, xy, l, options);
    }

    // ------------------------------------------------------------------------------------------------ labels

    /// <summary>
    /// Writes <paramref name="texts"/>[i] next to box i (xyxy pixels): on a <see cref="PlotOptions.LabelBackground"/>
    /// panel (α = <see cref="PlotOptions.LabelBackgroundAlpha"/>) just above the box's top-left corner, or just inside
    /// the box when there is no room above; always kept inside the image. Text in the object's colour unless
    /// <see cref="PlotOptions.LabelTextColor"/> is set. Empty or null texts are skipped.
    /// </summary>
    public static RgbImage DrawLabels(RgbImage image, ReadOnlySpan<float> boxesXyxy, IReadOnlyList<string?> texts, PlotOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(texts);
        options = Checked(options);
        int n = CheckBoxes(boxesXyxy);
        if (texts.Count != n) throw new Sam3Exception($"{n} boxes but {texts.Count} label texts");
        using (var canvas = new Canvas(image))
        {
            for (int i = 0; i < n; i++)
            {
                var (x0, y0, _, _) = IntegerBox(boxesXyxy.Slice(4 * i, 4));
                DrawLabel(canvas, x0, y0, texts[i], Palette.At(i, options.Palette), options);
            }
            return Finish(canvas);
        }
    }

    /// <summary>Boxes as a [N, 4] xyxy pixel tensor.</summary>
    internal static RgbImage DrawLabels(RgbImage image, torch.Tensor boxesXyxy, IReadOnlyList<string?> texts, PlotOptions? options = null) =>
        DrawLabels(image, BoxesFromTensor(boxesXyxy), texts, options);

    // ------------------------------------------------------------------------------------------------ internals (canvas level)

    internal static PlotOptions Checked(PlotOptions? options)
    {
        options ??= PlotOptions.Default;
        options.Validate();
        return options;
    }

    internal static RgbImage Finish(Canvas canvas)
    {
        canvas.Dispose();
        return canvas.ToImage();
    }

    internal static void CheckMasks(RgbImage image, IReadOnlyList<BinaryMask> masks)
    {
        for (int i = 0; i < masks.Count; i++)
        {
            var m = masks[i] ?? throw new Sam3Exception($"mask {i} is null");
            if (m.Width != image.Width || m.Height != image.Height)
                throw new Sam3ImageException($"mask {i} is {m.Width}x{m.Height} but the image is {image.Width}x{image.Height} (masks must have the image's size)");
        }
    }

    /// <summary>Number of boxes; throws when the length is not a multiple of 4 or a value is not finite.</summary>
    internal static int CheckBoxes(ReadOnlySpan<float> boxesXyxy)
    {
        if (boxesXyxy.Length % 4 != 0) throw new Sam3Exception($"boxes must be xyxy quadruples, got {boxesXyxy.Length} values");
        for (int i = 0; i < boxesXyxy.Length; i++)
            if (!float.IsFinite(boxesXyxy[i])) throw new Sam3Exception($"box {i / 4} has a non-finite coordinate ({boxesXyxy[i]})");
        return boxesXyxy.Length / 4;
    }

    internal static float[] BoxesFromTensor(torch.Tensor boxes)
    {
        ArgumentNullException.ThrowIfNull(boxes);
        if (boxes.dim() != 2 || boxes.shape[1] != 4) throw new Sam3Exception($"boxes must have shape [N, 4], got [{string.Join(", ", boxes.shape)}]");
        using var scope = torch.NewDisposeScope();
        return boxes.cpu().to(torch.ScalarType.Float32).contiguous().data<float>().ToArray();
    }

    /// <summary>Inclusive integer corners: floor of each coordinate (clamped far outside any image), sorted.</summary>
    internal static (int X0, int Y0, int X1, int Y1) IntegerBox(ReadOnlySpan<float> box)
    {
        static int F(float v) => (int)Math.Floor(Math.Clamp((double)v, -1e8, 1e8));
        int ax = F(box[0]), ay = F(box[1]), bx = F(box[2]), by = F(box[3]);
        return (Math.Min(ax, bx), Math.Min(ay, by), Math.Max(ax, bx), Math.Max(ay, by));
    }

    internal static void OverlayMask(Canvas canvas, BinaryMask mask, RgbColor color, PlotOptions options)
    {
        // Exact per-channel lookup tables: lut[p] = round((1 − α)·p + α·c).
        Span<byte> lr = stackalloc byte[256], lg = stackalloc byte[256], lb = stackalloc byte[256];
        double a = options.MaskAlpha;
        for (int p = 0; p < 256; p++)
        {
            lr[p] = Blend(p, color.R, a);
            lg[p] = Blend(p, color.G, a);
            lb[p] = Blend(p, color.B, a);
        }
        var d = canvas.Data.AsSpan();
        var m = mask.Data.AsSpan();
        for (int i = 0; i < m.Length; i++)
        {
            if (m[i] == 0) continue;
            int j = 3 * i;
            d[j] = lr[d[j]];
            d[j + 1] = lg[d[j + 1]];
            d[j + 2] = lb[d[j + 2]];
        }
        if (options.ContourThickness > 0) DrawContour(canvas, mask, color, options.ContourThickness);
    }

    internal static byte Blend(int pixel, int color, double alpha) => (byte)Math.Floor((1 - alpha) * pixel + alpha * color + 0.5);

    internal static void DrawContour(Canvas canvas, BinaryMask mask, RgbColor color, int thickness)
    {
        var pin = GCHandle.Alloc(mask.Data, GCHandleType.Pinned);
        try
        {
            using var view = Mat.FromPixelData(mask.Height, mask.Width, MatType.CV_8UC1, pin.AddrOfPinnedObject());
            using var copy = view.Clone(); // findContours must not touch the caller's mask
            Cv2.FindContours(copy, out CvPoint[][] contours, out _, RetrievalModes.List, ContourApproximationModes.ApproxNone);
            if (contours.Length > 0) Cv2.DrawContours(canvas.Mat, contours, -1, Canvas.ToScalar(color), thickness, LineTypes.Link8);
        }
        finally
        {
            pin.Free();
        }
    }

    internal static void DrawBox(Canvas canvas, ReadOnlySpan<float> box, RgbColor color, int thickness)
    {
        var (x0, y0, x1, y1) = IntegerBox(box);
        var scalar = Canvas.ToScalar(color);
        int t = thickness;
        FillClipped(canvas, x0, y0, x1, Math.Min(y0 + t - 1, y1), scalar); // top
        FillClipped(canvas, x0, Math.Max(y1 - t + 1, y0), x1, y1, scalar); // bottom
        FillClipped(canvas, x0, y0, Math.Min(x0 + t - 1, x1), y1, scalar); // left
        FillClipped(canvas, Math.Max(x1 - t + 1, x0), y0, x1, y1, scalar); // right
    }

    /// <summary>Fills the inclusive pixel rectangle (x0..x1) × (y0..y1) intersected with the image.</summary>
    private static void FillClipped(Canvas canvas, long x0, long y0, long x1, long y1, Scalar color)
    {
        long cx0 = Math.Max(x0, 0), cy0 = Math.Max(y0, 0), cx1 = Math.Min(x1, canvas.Width - 1), cy1 = Math.Min(y1, canvas.Height - 1);
        if (cx0 > cx1 || cy0 > cy1) return;
        Cv2.Rectangle(canvas.Mat, new Rect((int)cx0, (int)cy0, (int)(cx1 - cx0 + 1), (int)(cy1 - cy0 + 1)), color, thickness: -1);
    }

    internal static void DrawStar(Canvas canvas, float x, float y, RgbColor fill, PlotOptions options)
    {
        double outer = options.MarkerRadius;
        double inner = outer * Math.Cos(2 * Math.PI / 5) / Math.Cos(Math.PI / 5); // regular pentagram: ≈ 0.382·R
        var pts = new CvPoint[10];
        for (int k = 0; k < 10; k++)
        {
            double angle = -Math.PI / 2 + k * Math.PI / 5; // first tip straight up
            double r = (k & 1) == 0 ? outer : inner;
            pts[k] = new CvPoint(Fixed(x + r * Math.Cos(angle)), Fixed(y + r * Math.Sin(angle)));
        }
        var poly = new[] { pts };
        Cv2.FillPoly(canvas.Mat, poly, Canvas.ToScalar(fill), LineTypes.AntiAlias, Shift);
        if (options.MarkerEdgeThickness > 0)
            Cv2.Polylines(canvas.Mat, poly, isClosed: true, Canvas.ToScalar(options.PointEdgeColor), options.MarkerEdgeThickness, LineTypes.AntiAlias, Shift);
    }

    private static int Fixed(double v) => (int)Math.Round(Math.Clamp(v, -1e6, 1e6) * (1 << Shift));

    /// <summary>Label panel at the box's top-left pixel (<paramref name="boxX0"/>, <paramref name="boxY0"/>).</summary>
    internal static void DrawLabel(Canvas canvas, int boxX0, int boxY0, string? text, RgbColor objectColor, PlotOptions options)
    {
        if (string.IsNullOrEmpty(text)) return;
        const int Pad = 2;
        CvSize size = Cv2.GetTextSize(text, HersheyFonts.HersheySimplex, options.FontScale, options.FontThickness, out int baseline);
        int bw = size.Width + 2 * Pad, bh = size.Height + baseline + 2 * Pad;
        // Above the box; inside it (below its top edge) when there is no room above; then kept inside the image.
        long top = (long)boxY0 - bh;
        if (top < 0) top = (long)boxY0 + options.BoxThickness;
        int y = (int)Math.Clamp(top, 0, Math.Max(0, canvas.Height - bh));
        int x = (int)Math.Clamp((long)boxX0, 0, Math.Max(0, canvas.Width - bw));
        BlendRect(canvas, x, y, bw, bh, options.LabelBackground, options.LabelBackgroundAlpha);
        var textColor = options.LabelTextColor ?? objectColor;
        Cv2.PutText(canvas.Mat, text, new CvPoint(x + Pad, y + Pad + size.Height), HersheyFonts.HersheySimplex, options.FontScale,
            Canvas.ToScalar(textColor), options.FontThickness, LineTypes.AntiAlias);
    }

    private static void BlendRect(Canvas canvas, int x, int y, int w, int h, RgbColor color, double alpha)
    {
        int x1 = Math.Min(x + w, canvas.Width), y1 = Math.Min(y + h, canvas.Height);
        var d = canvas.Data.AsSpan();
        for (int yy = Math.Max(y, 0); yy < y1; yy++)
        {
            for (int xx = Math.Max(x, 0); xx < x1; xx++)
            {
                int j = 3 * (yy * canvas.Width + xx);
                d[j] = Blend(d[j], color.R, alpha);
                d[j + 1] = Blend(d[j + 1], color.G, alpha);
                d[j + 2] = Blend(d[j + 2], color.B, alpha);
            }
        }
    }
}
