namespace Sam3.Cli.Serve;

// Wire format of `sam3 serve` (camelCase JSON). Coordinates are pixels of the uploaded image, origin top-left.

/// <summary>A click: positive (part of the object) or negative (not part of it).</summary>
internal sealed record PointIn(float X, float Y, bool Positive = true);

/// <summary>A box, corners in pixels (x0 &lt; x1, y0 &lt; y1); negative boxes only for the detector.</summary>
internal sealed record BoxIn(float X0, float Y0, float X1, float Y1, bool Positive = true);

internal sealed record TextRequest(string? Text);

internal sealed record ThresholdRequest(double? Threshold);

/// <summary>
/// Interactive (SAM1-style) request: the full set of clicks and an optional box for one object. With
/// <see cref="Refine"/>, the previous interactive call's best low-resolution logits are the mask input.
/// <see cref="Multimask"/> (default: true for a single click without a box) returns 3 candidates.
/// </summary>
internal sealed record InteractiveRequest(List<PointIn>? Points, BoxIn? Box, bool Refine = false, bool? Multimask = null);

internal sealed record RleDto(int[] Size, string Counts);

/// <summary>One mask: its score (detector confidence, or predicted IoU), xyxy pixel box (exclusive max), area, COCO RLE.</summary>
internal sealed record ObjectDto(int Index, float Score, float[] Box, long Area, RleDto Rle);

internal sealed record PromptDto(string? Text, IReadOnlyList<BoxIn> Boxes, IReadOnlyList<PointIn> Points);

/// <summary>The answer of every prompt endpoint.</summary>
internal sealed record ResultDto(
    string ImageId, string Mode, int Width, int Height, double Threshold, PromptDto Prompt, IReadOnlyList<ObjectDto> Objects,
    int? Best, float? ObjectScoreLogit, bool Refined, double ElapsedMs, string? OverlayPng);

internal sealed record ImageDto(string ImageId, int Width, int Height, double Threshold, PromptDto Prompt, double ElapsedMs);

internal sealed record ErrorDto(string Error, int Status);

internal sealed record LimitsDto(long MaxUploadBytes, int MaxImageSide, long MaxImagePixels, int MaxImages, int MaxPoints,
                                 int MaxDetectorPrompts, int MaxTextLength);

internal sealed record InfoDto(string Version, string Model, string Device, long Parameters, bool Interactive, LimitsDto Limits);
