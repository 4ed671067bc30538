namespace Sam3.Torch;

/// <summary>Options of <see cref="Sam3Model.CreateInteractivePredictor"/> (defaults: the configuration's sam1_predictor values).</summary>
public sealed record InteractivePredictorOptions
{
    /// <summary>Masks are <c>logits &gt; MaskThreshold</c> (upstream mask_threshold, default 0).</summary>
    public double? MaskThreshold { get; init; }
    /// <summary>Holes up to this area (low-res pixels) are filled (upstream max_hole_area, default 256; ≤ 0 disables).</summary>
    public double? MaxHoleArea { get; init; }
    /// <summary>Foreground specks up to this area are removed (upstream max_sprinkle_area, default 0 = off).</summary>
    public double? MaxSprinkleArea { get; init; }
}

/// <summary>
/// Prompt of one SAM1-style interactive call (upstream <c>SAM3InteractiveImagePredictor.predict</c> arguments): any
/// combination of clicks, one box and the low-resolution logits of a previous call; at least one of them is required.
/// </summary>
public sealed record InteractivePrompt
{
    /// <summary>Clicks (pixels or normalised) with positive/negative labels.</summary>
    public IReadOnlyList<PointPrompt> Points { get; init; } = [];

    /// <summary>Optional box (any format and space; encoded as two corner points placed before the clicks).</summary>
    public Box? Box { get; init; }

    /// <summary>
    /// Optional low-resolution mask logits (4N × 4N, 288 × 288 for the released model), typically
    /// <see cref="InteractivePrediction.BestLowResLogits"/> of a previous call.
    /// </summary>
    public MaskLogits? MaskInput { get; init; }

    /// <summary>
    /// True: three masks (the multimask tokens 1..3, in token order as upstream returns them, not sorted). False: one mask
    /// (token 0, or — dynamic multimask — the best multimask output when token 0 is unstable).
    /// </summary>
    public bool MultimaskOutput { get; init; } = true;

    /// <summary>Also return the upsampled mask logits at the original size (<see cref="InteractivePrediction.UpsampledLogits"/>).</summary>
    public bool ReturnLogits { get; init; }

    /// <summary>A prompt of clicks.</summary>
    public static InteractivePrompt FromPoints(params PointPrompt[] points) => new() { Points = points };

    /// <summary>A box prompt; single-mask output by default (a box is rarely ambiguous), unlike the multimask default of a prompt.</summary>
    public static InteractivePrompt FromBox(Box box, bool multimaskOutput = false) => new() { Box = box, MultimaskOutput = multimaskOutput };
}
