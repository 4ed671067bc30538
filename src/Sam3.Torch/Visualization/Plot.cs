using Sam3.Torch.IO;
using TorchSharp;

namespace Sam3.Torch.Visualization;

/// <summary>
/// High-level rendering of detection results, the counterpart of the reference's <c>plot_results(img, results)</c>:
/// object i's mask blended in colour i (α = 0.5), its xyxy box outlined in the same colour, and the label
/// <c>"(id=i, prob=0.26)"</c> on a white panel above the box. Unlike the matplotlib original it renders in image
/// pixels (no figure, axes or resampling) and returns a new image of the input's size: all masks first, then boxes,
/// then labels, so labels stay readable.
/// </summary>
public static class Plot
{
    /// <summary>
    /// Renders results given as plain arrays. Each argument may be null; those present must agree on the number of
    /// objects N (<paramref name="boxesXyxy"/> holds 4·N values in pixels, <paramref name="scores"/> N values). Labels
    /// sit at the boxes, or at the masks' bounding boxes when no boxes are given.
    /// </summary>
    public static RgbImage Results(RgbImage image, IReadOnlyList<BinaryMask>? masks, float[]? boxesXyxy = null, float[]? scores = null, PlotOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        options = Visualizer.Checked(options);
        int n = -1;
        void Agree(int count, string what)
        {
            if (n >= 0 && count != n) throw new Sam3Exception($"Plot.Results: {count} {what} but {n} objects in the other inputs");
            n = count;
        }
        if (masks != null)
        {
            Visualizer.CheckMasks(image, masks);
            Agree(masks.Count, "masks");
        }
        if (boxesXyxy != null) Agree(Visualizer.CheckBoxes(boxesXyxy), "boxes");
        if (scores != null) Agree(scores.Length, "scores");

        using (var canvas = new Canvas(image))
        {
            if (masks != null)
                for (int i = 0; i < masks.Count; i++) Visualizer.OverlayMask(canvas, masks[i], Palette.At(i, options.Palette), options);
            if (boxesXyxy != null)
                for (int i = 0; 4 * i < boxesXyxy.Length; i++) Visualizer.DrawBox(canvas, boxesXyxy.AsSpan(4 * i, 4), Palette.At(i, options.Palette), options.BoxThickness);
            if (options.ShowLabels && n > 0)
            {
                for (int i = 0; i < n; i++)
                {
                    (int X, int Y)? anchor = null;
                    if (boxesXyxy != null)
                    {
                        var b = Visualizer.IntegerBox(boxesXyxy.AsSpan(4 * i, 4));
                        anchor = (b.X0, b.Y0);
                    }
                    else if (masks?[i].Bounds() is { } mb)
                    {
                        anchor = (mb.X0, mb.Y0);
                    }
                    if (anchor is not { } a) continue;
                    string text = options.LabelFormatter(i, scores?[i]);
                    Visualizer.DrawLabel(canvas, a.X, a.Y, text, Palette.At(i, options.Palette), options);
                }
            }
            return Visualizer.Finish(canvas);
        }
    }

    /// <summary>Renders the detections of one image (masks, boxes, <c>(id=i, prob=p)</c> labels) onto it.</summary>
    public static RgbImage Results(RgbImage image, ImageDetections detections, PlotOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(detections);
        if (detections.Width != image.Width || detections.Height != image.Height)
            throw new ArgumentException($"detections of a {detections.Width}x{detections.Height} image cannot be drawn on a {image.Width}x{image.Height} image", nameof(detections));
        var boxes = detections.SelectMany(d => d.Box.ToXyxy() is var (x0, y0, x1, y1) ? new[] { x0, y0, x1, y1 } : []).ToArray();
        return Results(image, detections.Masks(), boxes, detections.Scores(), options);
    }

    /// <summary>Renders the best mask (highest predicted IoU) of each prompt set of an interactive prediction, labelled with its IoU.</summary>
    public static RgbImage Results(RgbImage image, InteractivePrediction prediction, PlotOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        ArgumentNullException.ThrowIfNull(prediction);
        if (prediction.Width != image.Width || prediction.Height != image.Height)
            throw new ArgumentException($"a prediction for a {prediction.Width}x{prediction.Height} image cannot be drawn on a {image.Width}x{image.Height} image", nameof(prediction));
        var masks = Enumerable.Range(0, prediction.PromptCount).Select(p => prediction.BestMask(p)).ToList();
        var scores = Enumerable.Range(0, prediction.PromptCount).Select(p => prediction.IouScores(p)[prediction.BestIndex(p)]).ToArray();
        return Results(image, masks, null, scores, options);
    }

    /// <summary>
    /// Renders results given as tensors, e.g. the processor's output: masks bool [N, 1, H, W] or [N, H, W] (float is
    /// thresholded at 0.5), boxes [N, 4] xyxy pixels, scores [N]. Each may be null.
    /// </summary>
    internal static RgbImage Results(RgbImage image, torch.Tensor? masks, torch.Tensor? boxesXyxy = null, torch.Tensor? scores = null, PlotOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(image);
        BinaryMask[]? m = masks is null ? null : BinaryMask.FromTensorBatch(masks);
        float[]? b = boxesXyxy is null ? null : Visualizer.BoxesFromTensor(boxesXyxy);
        float[]? s = null;
        if (scores is not null)
        {
            if (scores.dim() != 1) throw new Sam3Exception($"scores must have shape [N], got [{string.Join(", ", scores.shape)}]");
            using var scope = torch.NewDisposeScope();
            s = scores.cpu().to(torch.ScalarType.Float32).contiguous().data<float>().ToArray();
        }
        return Results(image, m, b, s, options);
    }
}
