using System.Globalization;

namespace Sam3.Torch;

/// <summary>
/// A point prompt: (x, y) in a stated <see cref="CoordinateSpace"/>, positive (part of the object) or negative
/// (background). Used by the detector (<see cref="Sam3ImagePredictor"/>, the geometry encoder's point path) and by the
/// interactive predictor (<see cref="Sam3InteractivePredictor"/>, SAM1-style clicks).
/// </summary>
public readonly record struct PointPrompt(float X, float Y, bool Positive = true, CoordinateSpace Space = CoordinateSpace.Pixels)
{
    /// <summary>A positive point in pixels of the original image.</summary>
    public static PointPrompt Pixel(float x, float y, bool positive = true) => new(x, y, positive, CoordinateSpace.Pixels);

    /// <summary>A point as fractions of the image's width and height.</summary>
    public static PointPrompt Normalized(float x, float y, bool positive = true) => new(x, y, positive, CoordinateSpace.Normalized);

    /// <summary>Upstream's point label: 1 = positive, 0 = negative.</summary>
    public int Label => Positive ? 1 : 0;

    /// <summary>The same point in pixels of an image of the given size.</summary>
    public PointPrompt ToPixels(int imageWidth, int imageHeight)
    {
        Box.CheckSize(imageWidth, imageHeight);
        return Space == CoordinateSpace.Pixels ? this : this with { X = X * imageWidth, Y = Y * imageHeight, Space = CoordinateSpace.Pixels };
    }

    /// <summary>The same point as fractions of an image of the given size.</summary>
    public PointPrompt ToNormalized(int imageWidth, int imageHeight)
    {
        Box.CheckSize(imageWidth, imageHeight);
        return Space == CoordinateSpace.Normalized ? this : this with { X = X / imageWidth, Y = Y / imageHeight, Space = CoordinateSpace.Normalized };
    }

    /// <summary>e.g. <c>+(120, 45) px</c>.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{(Positive ? "+" : "-")}({X:G6}, {Y:G6}) {(Space == CoordinateSpace.Pixels ? "px" : "normalized")}");
}

/// <summary>A box prompt: a <see cref="Torch.Box"/> that is an example of what to find (positive) or of what not to (negative).</summary>
public readonly record struct BoxPrompt(Box Box, bool Positive = true)
{
    /// <summary>A box prompt from pixel corners.</summary>
    public static BoxPrompt Xyxy(float x0, float y0, float x1, float y1, bool positive = true) => new(Box.FromXyxy(x0, y0, x1, y1), positive);

    /// <summary>A box prompt in upstream <c>add_geometric_prompt</c>'s convention: normalised cxcywh.</summary>
    public static BoxPrompt NormalizedCxcywh(float cx, float cy, float width, float height, bool positive = true) =>
        new(Box.FromCxcywh(cx, cy, width, height, CoordinateSpace.Normalized), positive);

    /// <summary>e.g. <c>+xyxy(10, 20, 110, 220) px</c>.</summary>
    public override string ToString() => (Positive ? "+" : "-") + Box;
}
