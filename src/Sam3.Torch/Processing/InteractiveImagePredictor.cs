using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Tracker;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Processing;

/// <summary>
/// SAM1-style interactive segmentation on an image set with <see cref="Sam3Processor"/> (upstream
/// <c>Sam3Image.predict_inst</c> → <c>SAM3InteractiveImagePredictor.predict</c>): clicks, a box and/or a previous
/// low-res mask give masks at the original resolution with their predicted IoU. Works on the state's cached SAM2-neck
/// features (levels 0/1 already projected by conv_s0/conv_s1 in SetImage): only the tracker's prompt encoder and mask
/// decoder run, never the backbone.
/// <para>
/// Per call: image embedding = SAM2 level 2 + <c>no_mem_embed</c>; prompts are scaled from original pixels to the model
/// frame (x/W·S, y/H·S, S = tracker image size); a box becomes two points (labels 2, 3) placed before the clicks; the
/// prompt encoder appends its padding point (no boxes are passed to it); the mask decoder runs with the high-res features
/// (one image repeated per prompt set for batched boxes). Post-processing as SAM2Transforms.postprocess_masks: holes
/// (components of <c>logit ≤ threshold</c>, 8-connectivity, area ≤ max_hole_area) in the low-res logits become
/// threshold + 10, bilinear (align_corners=False) upsampling to the original size, <c>&gt; threshold</c>. The returned
/// low-res logits are the decoder's, clamped to ±32.
/// </para>
/// <para>Extension over upstream: <c>imageIndex</c> selects an image of a batched state (upstream's predict_inst only
/// supports a single-image state).</para>
/// </summary>
public sealed class InteractiveImagePredictor
{
    public Sam3Image Model { get; }
    public Sam3TrackerBase Heads { get; }
    /// <summary>Masks are <c>logits &gt; MaskThreshold</c> (upstream mask_threshold, default 0).</summary>
    public double MaskThreshold { get; }
    /// <summary>Holes up to this area (low-res pixels) are filled (upstream max_hole_area, default 256; ≤ 0 disables).</summary>
    public double MaxHoleArea { get; }
    /// <summary>Foreground specks up to this area are removed (upstream max_sprinkle_area, default 0 = off).</summary>
    public double MaxSprinkleArea { get; }

    private readonly HardcodedConfig _post;
    private readonly int _resolution;
    private readonly int _lowRes;

    /// <param name="model">An image model built with the interactive heads (<c>inst_interactive_predictor</c>).</param>
    /// <param name="maskThreshold">Overrides sam1_predictor.mask_threshold of the configuration.</param>
    /// <param name="maxHoleArea">Overrides sam1_predictor.max_hole_area.</param>
    /// <param name="maxSprinkleArea">Overrides sam1_predictor.max_sprinkle_area.</param>
    public InteractiveImagePredictor(Sam3Image model, double? maskThreshold = null, double? maxHoleArea = null, double? maxSprinkleArea = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        Model = model;
        Heads = model.Tracker ?? throw new Sam3StateException(
            "model loaded without the interactive heads (inst_interactive_predictor): build it with enableInstInteractivity");
        var hc = model.Config.HardcodedInClasses;
        MaskThreshold = maskThreshold ?? hc.Sam1MaskThreshold;
        MaxHoleArea = maxHoleArea ?? hc.Sam1MaxHoleArea;
        MaxSprinkleArea = maxSprinkleArea ?? hc.Sam1MaxSprinkleArea;
        foreach (var v in new[] { MaskThreshold, MaxHoleArea, MaxSprinkleArea })
            if (!double.IsFinite(v)) throw new Sam3ConfigException($"interactive predictor settings must be finite, got {v}");
        _post = hc with { Sam1MaskThreshold = MaskThreshold, Sam1MaxHoleArea = MaxHoleArea, Sam1MaxSprinkleArea = MaxSprinkleArea };
        _resolution = Heads.image_size;
        _lowRes = Heads.low_res_mask_size;
    }

    /// <summary>Side of the low-res logits / mask input (4N; 288 for the released model).</summary>
    public int LowResMaskSize => _lowRes;

    /// <summary>
    /// Predicts masks for one prompt (clicks and/or a box and/or a previous low-res mask) on image
    /// <paramref name="imageIndex"/> of <paramref name="state"/>.
    /// </summary>
    /// <param name="probe">Receives intermediates named as the parity fixtures: <c>sam.prompt_encoder.{0,1}</c>
    /// (sparse, dense), <c>sam.mask_decoder.{0..3}</c> (masks, iou, tokens, object score). The tensors belong to the
    /// call's dispose scope: copy and detach what must outlive the callback.</param>
    public InteractivePrediction Predict(Sam3ImageState state, InteractivePrompt prompt, int imageIndex = 0, Action<string, Tensor>? probe = null)
    {
        var (h, w) = CheckState(state, imageIndex);
        ArgumentNullException.ThrowIfNull(prompt);
        var points = prompt.Points ?? [];
        if (points.Count == 0 && prompt.Box is null && prompt.MaskInput is null)
            throw new Sam3PromptException("empty interactive prompt: give at least one point, a box or a mask input");
        for (int i = 0; i < points.Count; i++) ValidatePoint(points[i], i, h, w);
        if (prompt.Box is { } box) ValidateBox(box, -1, h, w);
        ValidateMaskInput(prompt.MaskInput);

        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var device = Device;
        Tensor? coords = null, labels = null;
        if (points.Count > 0)
        {
            coords = ToModelFrame(points.SelectMany(p => new[] { p.X, p.Y }).ToArray(), h, w).view(1, -1, 2);
            labels = torch.tensor(points.Select(p => p.Label).ToArray(), device: device).view(1, -1);
        }
        if (prompt.Box is { } b)
        {
            // _predict: the box is merged into the points as two corners (labels 2, 3) placed BEFORE the clicks
            var corners = ToModelFrame([b.X0, b.Y0, b.X1, b.Y1], h, w).view(1, 2, 2);
            var cornerLabels = BoxLabels(1, device);
            coords = coords is null ? corners : torch.cat([corners, coords], 1);
            labels = labels is null ? cornerLabels : torch.cat([cornerLabels, labels], 1);
        }
        Tensor? maskInput = null;
        if (prompt.MaskInput is { } m)
            maskInput = m.detach().to(ScalarType.Float32).reshape(1, 1, _lowRes, _lowRes).to(device);
        return Run(state, imageIndex, h, w, coords, labels, maskInput, prompt.MultimaskOutput, prompt.ReturnLogits,
                   repeatImage: false, keepPromptDim: false, probe);
    }

    /// <summary>
    /// Predicts masks for a batch of boxes on one image in a single decoder pass (upstream predict with a [B,4] box:
    /// the image is repeated per box). Masks [boxes, C, H, W], IoU [boxes, C], low-res logits [boxes, C, 4N, 4N].
    /// </summary>
    public InteractivePrediction PredictBoxes(Sam3ImageState state, IReadOnlyList<PixelBox> boxes, bool multimaskOutput = true,
                                              int imageIndex = 0, bool returnLogits = false, Action<string, Tensor>? probe = null)
    {
        var (h, w) = CheckState(state, imageIndex);
        if (boxes is null || boxes.Count == 0) throw new Sam3PromptException("empty interactive prompt: the box batch is empty");
        for (int i = 0; i < boxes.Count; i++) ValidateBox(boxes[i], i, h, w);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var coords = ToModelFrame(boxes.SelectMany(b => new[] { b.X0, b.Y0, b.X1, b.Y1 }).ToArray(), h, w).view(-1, 2, 2);
        var labels = BoxLabels(boxes.Count, Device);
        // upstream's batched_mode (repeat_image) is "more than one prompt set"; the [N, C, ...] layout is kept for one box too
        return Run(state, imageIndex, h, w, coords, labels, null, multimaskOutput, returnLogits,
                   repeatImage: boxes.Count > 1, keepPromptDim: true, probe);
    }

    // ------------------------------------------------------------------ internals

    private Device Device => Heads.no_mem_embed.device;

    private static Tensor BoxLabels(long n, Device device) =>
        torch.tensor(new[] { 2, 3 }, device: device).view(1, 2).repeat(n, 1);

    /// <summary>SAM2Transforms.transform_coords(normalize=True): x/W·S, y/H·S in float32 (flat x,y pairs).</summary>
    private Tensor ToModelFrame(float[] xy, int h, int w)
    {
        var t = torch.tensor(xy, device: Device).view(-1, 2);
        var size = torch.tensor(new float[] { w, h }, device: Device);
        return t / size * _resolution;
    }

    private (int H, int W) CheckState(Sam3ImageState state, int imageIndex)
    {
        if (state is null) throw new Sam3StateException("no image is set: call Sam3Processor.SetImage first");
        if (state.IsDisposed) throw new Sam3StateException("this image state has been disposed");
        if (imageIndex < 0 || imageIndex >= state.BatchSize)
            throw new Sam3PromptException($"image index {imageIndex} is out of range: the state holds {state.BatchSize} image(s)");
        var sam2 = state.Backbone.Sam2;
        if (sam2 is null || sam2.BackboneFpn.Length < 3)
            throw new Sam3StateException("the image state has no SAM2-neck features: it was set with a model loaded without the interactive heads");
        return state.OriginalSizes[imageIndex];
    }

    private static void ValidatePoint(InteractivePoint p, int i, int h, int w)
    {
        if (!float.IsFinite(p.X) || !float.IsFinite(p.Y)) throw new Sam3PromptException($"point {i} ({p.X}, {p.Y}) is not finite");
        if (p.X < 0 || p.X > w || p.Y < 0 || p.Y > h)
            throw new Sam3PromptException($"point {i} ({p.X}, {p.Y}) lies outside the {w}x{h} image (pixel coordinates of the original image expected)");
        if (p.Label is not (0 or 1)) throw new Sam3PromptException($"point {i} has label {p.Label}: labels are 1 (positive) or 0 (negative)");
    }

    private static void ValidateBox(PixelBox b, int i, int h, int w)
    {
        string which = i < 0 ? "box" : $"box {i}";
        if (!float.IsFinite(b.X0) || !float.IsFinite(b.Y0) || !float.IsFinite(b.X1) || !float.IsFinite(b.Y1))
            throw new Sam3PromptException($"{which} ({b.X0}, {b.Y0}, {b.X1}, {b.Y1}) has a non-finite coordinate");
        if (b.X1 <= b.X0 || b.Y1 <= b.Y0) throw new Sam3PromptException($"{which} ({b.X0}, {b.Y0}, {b.X1}, {b.Y1}) has a non-positive size (xyxy expected)");
        if (b.X0 < 0 || b.Y0 < 0 || b.X1 > w || b.Y1 > h)
            throw new Sam3PromptException($"{which} ({b.X0}, {b.Y0}, {b.X1}, {b.Y1}) lies outside the {w}x{h} image (pixel xyxy of the original image expected)");
    }

    private void ValidateMaskInput(Tensor? m)
    {
        if (m is null) return;
        if (m.IsInvalid) throw new Sam3PromptException("the mask input tensor has been disposed");
        long n = _lowRes;
        bool shapeOk = m.dim() switch
        {
            2 => m.shape[0] == n && m.shape[1] == n,
            3 => m.shape[0] == 1 && m.shape[1] == n && m.shape[2] == n,
            4 => m.shape[0] == 1 && m.shape[1] == 1 && m.shape[2] == n && m.shape[3] == n,
            _ => false,
        };
        if (!shapeOk)
            throw new Sam3PromptException($"mask input must be low-res logits [1, {n}, {n}] or [{n}, {n}] (a previous call's low-res output), got [{string.Join(",", m.shape)}]");
        if (!m.is_floating_point()) throw new Sam3PromptException($"mask input must hold float logits, got {m.dtype}");
        using var scope = NewDisposeScope();
        if (!m.isfinite().all().item<bool>()) throw new Sam3PromptException("mask input contains NaN or infinite values");
    }

    private InteractivePrediction Run(Sam3ImageState state, int imageIndex, int h, int w, Tensor? coords, Tensor? labels, Tensor? maskInput,
                                      bool multimask, bool returnLogits, bool repeatImage, bool keepPromptDim, Action<string, Tensor>? probe)
    {
        var fpn = state.Backbone.Sam2!.BackboneFpn;
        long c = Heads.hidden_dim;
        // predict_inst: the last three SAM2 levels; no_mem_embed is added to the lowest-resolution one
        var imageEmbed = fpn[^1][imageIndex..(imageIndex + 1)] + Heads.no_mem_embed.reshape(1, c, 1, 1);
        var highRes = (fpn[^3][imageIndex..(imageIndex + 1)], fpn[^2][imageIndex..(imageIndex + 1)]);

        // boxes are always merged into the points upstream, so the prompt encoder gets boxes = null (and pads the points)
        var (sparse, dense) = Heads.sam_prompt_encoder.forward(coords, labels, null, maskInput);
        probe?.Invoke("sam.prompt_encoder.0", sparse);
        probe?.Invoke("sam.prompt_encoder.1", dense);
        var imagePe = Heads.sam_prompt_encoder.GetDensePe();
        using var dec = Heads.sam_mask_decoder.forward(imageEmbed, imagePe, sparse, dense, multimask, repeatImage, highRes);
        probe?.Invoke("sam.mask_decoder.0", dec.Masks);
        probe?.Invoke("sam.mask_decoder.1", dec.IouPred);
        probe?.Invoke("sam.mask_decoder.2", dec.SamTokensOut);
        probe?.Invoke("sam.mask_decoder.3", dec.ObjectScoreLogits);

        var lowResRaw = dec.Masks.to(ScalarType.Float32);
        var upsampled = MaskPost.PostprocessSam1Masks(lowResRaw, h, w, _post);
        var masks = upsampled.gt(MaskThreshold);
        double clamp = Model.Config.HardcodedInClasses.Sam1LowResLogitClamp;
        var lowRes = lowResRaw.clamp(-clamp, clamp);
        var iou = dec.IouPred.to(ScalarType.Float32);
        var obj = dec.ObjectScoreLogits.to(ScalarType.Float32);
        // predict(): squeeze(0) of the prompt dimension for a single prompt set
        Tensor Out(Tensor t) => (keepPromptDim ? t : t.squeeze(0)).cpu().contiguous();
        return new InteractivePrediction(imageIndex, h, w, keepPromptDim, Out(masks), returnLogits ? Out(upsampled) : null,
                                         Out(iou), Out(lowRes), Out(obj));
    }
}
