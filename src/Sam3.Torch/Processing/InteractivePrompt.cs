using static TorchSharp.torch;

namespace Sam3.Torch.Processing;

/// <summary>
/// A click for <see cref="InteractiveImagePredictor"/>: (x, y) in pixels of the ORIGINAL image (x to the right, y down,
/// 0 ≤ x ≤ width, 0 ≤ y ≤ height) with its label, 1 = foreground (positive), 0 = background (negative).
/// </summary>
public readonly record struct InteractivePoint(float X, float Y, int Label = 1)
{
    public static InteractivePoint Positive(float x, float y) => new(x, y, 1);
    public static InteractivePoint Negative(float x, float y) => new(x, y, 0);
}

/// <summary>A box in pixels of the ORIGINAL image, xyxy (top-left, bottom-right).</summary>
public readonly record struct PixelBox(float X0, float Y0, float X1, float Y1);

/// <summary>
/// Prompt of one SAM1-style interactive call (upstream <c>SAM3InteractiveImagePredictor.predict</c> arguments): any
/// combination of clicks, one box and a low-resolution mask from a previous call; at least one of them is required.
/// </summary>
public sealed record InteractivePrompt
{
    /// <summary>Clicks in original-image pixels with labels 1 (positive) / 0 (negative).</summary>
    public IReadOnlyList<InteractivePoint> Points { get; init; } = [];

    /// <summary>Optional box xyxy in original-image pixels (encoded as two corner points placed before the clicks).</summary>
    public PixelBox? Box { get; init; }

    /// <summary>
    /// Optional low-resolution mask logits [1, 4N, 4N] or [4N, 4N] (4N = 4·image_size/patch, 288 for the released
    /// model), typically <see cref="InteractivePrediction.BestLowResLogits"/> of a previous call. Not owned by the prompt.
    /// </summary>
    public Tensor? MaskInput { get; init; }

    /// <summary>
    /// True: three masks (the multimask tokens 1..3, in token order as upstream returns them, not sorted). False: one mask
    /// (token 0, or — dynamic multimask — the best multimask output when token 0 is unstable).
    /// </summary>
    public bool MultimaskOutput { get; init; } = true;

    /// <summary>Also return the upsampled mask logits at the original size (<see cref="InteractivePrediction.MaskLogits"/>).</summary>
    public bool ReturnLogits { get; init; }

    /// <summary>A prompt of clicks.</summary>
    public static InteractivePrompt FromPoints(params InteractivePoint[] points) => new() { Points = points };

    /// <summary>A box prompt; single-mask output by default (a box is rarely ambiguous), unlike the multimask default of a prompt.</summary>
    public static InteractivePrompt FromBox(PixelBox box, bool multimaskOutput = false) => new() { Box = box, MultimaskOutput = multimaskOutput };
}
