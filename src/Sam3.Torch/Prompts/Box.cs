using System.Globalization;

namespace Sam3.Torch;

/// <summary>
/// An axis-aligned box: four numbers in a stated <see cref="BoxFormat"/> and <see cref="CoordinateSpace"/>. The numbers
/// are kept exactly as given; conversions (the arithmetic of upstream's <c>box_ops</c>, in float32) happen on request.
/// Create one with <see cref="FromXyxy"/>, <see cref="FromXywh"/> or <see cref="FromCxcywh"/>.
/// </summary>
public readonly record struct Box
{
    private Box(float a, float b, float c, float d, BoxFormat format, CoordinateSpace space)
    {
        A = a; B = b; C = c; D = d; Format = format; Space = space;
    }

    /// <summary>First number as given (x0, x or cx).</summary>
    public float A { get; }
    /// <summary>Second number as given (y0, y or cy).</summary>
    public float B { get; }
    /// <summary>Third number as given (x1 or width).</summary>
    public float C { get; }
    /// <summary>Fourth number as given (y1 or height).</summary>
    public float D { get; }
    /// <summary>Layout of <see cref="A"/>..<see cref="D"/>.</summary>
    public BoxFormat Format { get; }
    /// <summary>Space of the numbers.</summary>
    public CoordinateSpace Space { get; }

    /// <summary>A box from its corners (x0, y0) top-left and (x1, y1) bottom-right.</summary>
    public static Box FromXyxy(float x0, float y0, float x1, float y1, CoordinateSpace space = CoordinateSpace.Pixels) =>
        new(x0, y0, x1, y1, BoxFormat.Xyxy, space);

    /// <summary>A box from its top-left corner and size.</summary>
    public static Box FromXywh(float x, float y, float width, float height, CoordinateSpace space = CoordinateSpace.Pixels) =>
        new(x, y, width, height, BoxFormat.Xywh, space);

    /// <summary>A box from its centre and size.</summary>
    public static Box FromCxcywh(float cx, float cy, float width, float height, CoordinateSpace space = CoordinateSpace.Normalized) =>
        new(cx, cy, width, height, BoxFormat.Cxcywh, space);

    /// <summary>Corners (x0, y0, x1, y1) in this box's space.</summary>
    public (float X0, float Y0, float X1, float Y1) ToXyxy() => Format switch
    {
        BoxFormat.Xyxy => (A, B, C, D),
        BoxFormat.Xywh => (A, B, A + C, B + D),
        _ => (A - 0.5f * C, B - 0.5f * D, A + 0.5f * C, B + 0.5f * D),
    };

    /// <summary>Top-left corner and size (x, y, width, height) in this box's space.</summary>
    public (float X, float Y, float Width, float Height) ToXywh() => Format switch
    {
        BoxFormat.Xywh => (A, B, C, D),
        BoxFormat.Xyxy => (A, B, C - A, D - B),
        _ => (A - 0.5f * C, B - 0.5f * D, C, D),
    };

    /// <summary>Centre and size (cx, cy, width, height) in this box's space.</summary>
    public (float Cx, float Cy, float Width, float Height) ToCxcywh() => Format switch
    {
        BoxFormat.Cxcywh => (A, B, C, D),
        BoxFormat.Xyxy => ((A + C) / 2, (B + D) / 2, C - A, D - B),
        _ => (A + 0.5f * C, B + 0.5f * D, C, D),
    };

    /// <summary>The same box in another format (same space).</summary>
    public Box As(BoxFormat format)
    {
        if (format == Format) return this;
        return format switch
        {
            BoxFormat.Xyxy => ToXyxy() is var (x0, y0, x1, y1) ? new Box(x0, y0, x1, y1, format, Space) : default,
            BoxFormat.Xywh => ToXywh() is var (x, y, w, h) ? new Box(x, y, w, h, format, Space) : default,
            _ => ToCxcywh() is var (cx, cy, cw, ch) ? new Box(cx, cy, cw, ch, format, Space) : default,
        };
    }

    /// <summary>The same box in pixels of an image of the given size (unchanged when already in pixels).</summary>
    public Box ToPixels(int imageWidth, int imageHeight)
    {
        CheckSize(imageWidth, imageHeight);
        return Space == CoordinateSpace.Pixels ? this
            : new Box(A * imageWidth, B * imageHeight, C * imageWidth, D * imageHeight, Format, CoordinateSpace.Pixels);
    }

    /// <summary>The same box as fractions of an image of the given size (unchanged when already normalised).</summary>
    public Box ToNormalized(int imageWidth, int imageHeight)
    {
        CheckSize(imageWidth, imageHeight);
        return Space == CoordinateSpace.Normalized ? this
            : new Box(A / imageWidth, B / imageHeight, C / imageWidth, D / imageHeight, Format, CoordinateSpace.Normalized);
    }

    /// <summary>Width in this box's space.</summary>
    public float Width => Format == BoxFormat.Xyxy ? C - A : C;
    /// <summary>Height in this box's space.</summary>
    public float Height => Format == BoxFormat.Xyxy ? D - B : D;

    /// <summary>True when all four numbers are finite.</summary>
    public bool IsFinite => float.IsFinite(A) && float.IsFinite(B) && float.IsFinite(C) && float.IsFinite(D);

    internal static void CheckSize(int imageWidth, int imageHeight)
    {
        if (imageWidth <= 0) throw new ArgumentOutOfRangeException(nameof(imageWidth), imageWidth, "image width must be positive");
        if (imageHeight <= 0) throw new ArgumentOutOfRangeException(nameof(imageHeight), imageHeight, "image height must be positive");
    }

    /// <summary>e.g. <c>xyxy(10, 20, 110, 220) px</c>.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Format.ToString().ToLowerInvariant()}({A:G6}, {B:G6}, {C:G6}, {D:G6}) {(Space == CoordinateSpace.Pixels ? "px" : "normalized")}");
}
