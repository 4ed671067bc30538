namespace Sam3.Torch;

/// <summary>
/// The space coordinates are given in. SAM3's APIs mix them (upstream: <c>add_geometric_prompt</c> takes normalised
/// cxcywh boxes, <c>predict_inst</c> pixel xy / xyxy, the video predictor normalised xy / xywh); this library states
/// it on every point and box and converts where the model needs another one.
/// </summary>
public enum CoordinateSpace
{
    /// <summary>Pixels of the original image: x to the right in [0, width], y down in [0, height].</summary>
    Pixels,
    /// <summary>Fractions of the original image's width and height, in [0, 1].</summary>
    Normalized,
}

/// <summary>How the four numbers of a <see cref="Box"/> are laid out.</summary>
public enum BoxFormat
{
    /// <summary>Left, top, right, bottom corners (x0, y0, x1, y1).</summary>
    Xyxy,
    /// <summary>Left, top, width, height (COCO's <c>bbox</c>).</summary>
    Xywh,
    /// <summary>Centre x, centre y, width, height (SAM3's internal box format).</summary>
    Cxcywh,
}
