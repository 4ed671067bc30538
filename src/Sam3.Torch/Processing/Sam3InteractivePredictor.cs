using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Tracker;
using TorchSharp;
using static TorchSharp.torch;

using Sam3.Torch.Processing;

namespace Sam3.Torch;

/// <summary>
/// SAM1-style interactive segmentation on an image set with <see cref="SetImage(RgbImage, CancellationToken)"/> (or the detector's state) (upstream
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
public sealed class Sam3InteractivePredictor
{
    private readonly Sam3Model _owner;
    private readonly HardcodedConfig _post;
    private readonly int _resolution;
    private readonly int _lowRes;
    private readonly ImagePreprocessor _preprocessor;

    internal Sam3InteractivePredictor(Sam3Model owner, InteractivePredictorOptions options)
    {
        _owner = owner;
        var model = owner.Network;
        Heads = model.Tracker ?? throw new Sam3StateException(
            "the model was loaded without the interactive heads (Sam3ModelOptions.EnableInteractivePredictor = false)");
        var hc = model.Config.HardcodedInClasses;
        MaskThreshold = options.MaskThreshold ?? hc.Sam1MaskThreshold;
        MaxHoleArea = options.MaxHoleArea ?? hc.Sam1MaxHoleArea;
        MaxSprinkleArea = options.MaxSprinkleArea ?? hc.Sam1MaxSprinkleArea;
        if (!double.IsFinite(MaskThreshold)) throw new ArgumentOutOfRangeException(
            $"{nameof(options)}.{nameof(InteractivePredictorOptions.MaskThreshold)}", MaskThreshold, $"MaskThreshold must be finite, got {MaskThreshold}");
        if (!double.IsFinite(MaxHoleArea)) throw new ArgumentOutOfRangeException(
            $"{nameof(options)}.{nameof(InteractivePredictorOptions.MaxHoleArea)}", MaxHoleArea, $"MaxHoleArea must be finite, got {MaxHoleArea}");
        if (!double.IsFinite(MaxSprinkleArea)) throw new ArgumentOutOfRangeException(
            $"{nameof(options)}.{nameof(InteractivePredictorOptions.MaxSprinkleArea)}", MaxSprinkleArea, $"MaxSprinkleArea must be finite, got {MaxSprinkleArea}");
        _post = hc with { Sam1MaskThreshold = MaskThreshold, Sam1MaxHoleArea = MaxHoleArea, Sam1MaxSprinkleArea = MaxSprinkleArea };
        _resolution = Heads.image_size;
        _lowRes = Heads.low_res_mask_size;
        _preprocessor = new ImagePreprocessor(model.Config);
    }

    internal Sam3ImageModel Model => _owner.Network;
    internal Sam3TrackerBase Heads { get; }
    /// <summary>Masks are <c>logits &gt; MaskThreshold</c>.</summary>
    public double MaskThreshold { get; }
    /// <summary>Holes up to this area (low-res pixels) are filled.</summary>
    public double MaxHoleArea { get; }
    /// <summary>Foreground specks up to this area are removed.</summary>
    public double MaxSprinkleArea { get; }
    /// <summary>Side of the low-res logits / mask input (4N; 288 for the released model).</summary>
    public int LowResMaskSize => _lowRes;

    /// <summary>Decodes the image file at <paramref name="path"/> and runs the image encoder on it.</summary>
    public Sam3ImageState SetImage(string path, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_owner.IsDisposed, _owner);
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        return SetImage(ImageLoader.Load(path), cancellationToken);
    }

    /// <summary>Runs the image encoder on one image; the state also works with the model's detector.</summary>
    public Sam3ImageState SetImage(RgbImage image, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_owner.IsDisposed, _owner);
        ArgumentNullException.ThrowIfNull(image);
        cancellationToken.ThrowIfCancellationRequested();
        return Sam3ImagePredictor.EncodeImages(_owner, _preprocessor, [image], cancellationToken, eagerSam2: true);
    }

    /// <summary>
    /// Predicts masks for one prompt (clicks and/or a box and/or previous low-res logits) on image
    /// <paramref name="imageIndex"/> of <paramref name="state"/>.
    /// </summary>
    /// <exception cref="Sam3PromptException">The prompt is empty, or a point/box is not finite or outside the image.</exception>
    public InteractivePrediction Predict(Sam3ImageState state, InteractivePrompt prompt, int imageIndex = 0)
    {
        using var t = PredictCore(state, prompt, imageIndex);
        return t.ToPublic();
    }

    internal InteractiveTensors PredictCore(Sam3ImageState state, InteractivePrompt prompt, int imageIndex = 0)
    {
        var (h, w) = CheckState(state, imageIndex);
        ArgumentNullException.ThrowIfNull(prompt);
        var points = prompt.Points ?? [];
        if (points.Count == 0 && prompt.Box is null && prompt.MaskInput is null)
            throw new Sam3PromptException("empty interactive prompt: give at least one point, a box or a mask input");
        var px = new List<PointPrompt>();
        for (int i = 0; i < points.Count; i++) px.Add(ValidatePoint(points[i], i, h, w));
        PixelXyxy? box = prompt.Box is { } bx ? ValidateBox(bx, -1, h, w) : null;
        ValidateMaskInput(prompt.MaskInput);

        var probe = _owner.Probe;
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var device = Device;
        Tensor? coords = null, labels = null;
        if (px.Count > 0)
        {
            coords = ToModelFrame(px.SelectMany(p => new[] { p.X, p.Y }).ToArray(), h, w).view(1, -1, 2);
            labels = torch.tensor(px.Select(p => p.Label).ToArray(), device: device).view(1, -1);
        }
        if (box is { } b)
        {
            // _predict: the box is merged into the points as two corners (labels 2, 3) placed BEFORE the clicks
            var corners = ToModelFrame([b.X0, b.Y0, b.X1, b.Y1], h, w).view(1, 2, 2);
            var cornerLabels = BoxLabels(1, device);
            coords = coords is null ? corners : torch.cat([corners, coords], 1);
            labels = labels is null ? cornerLabels : torch.cat([cornerLabels, labels], 1);
        }
        Tensor? maskInput = null;
        if (prompt.MaskInput is { } m)
            maskInput = torch.tensor(m.Data, device: device).reshape(1, 1, _lowRes, _lowRes);
        return Run(state, imageIndex, h, w, coords, labels, maskInput, prompt.MultimaskOutput, prompt.ReturnLogits,
                   repeatImage: false, keepPromptDim: false, probe);
    }

    /// <summary>
    /// Predicts masks for a batch of boxes on one image in a single decoder pass (upstream predict with a [B,4] box:
    /// the image is repeated per box); one prompt set per box.
    /// </summary>
    public InteractivePrediction PredictBoxes(Sam3ImageState state, IReadOnlyList<Box> boxes, bool multimaskOutput = true,
                                              int imageIndex = 0, bool returnLogits = false)
    {
        using var t = PredictBoxesCore(state, boxes, multimaskOutput, imageIndex, returnLogits);
        return t.ToPublic();
    }

    internal InteractiveTensors PredictBoxesCore(Sam3ImageState state, IReadOnlyList<Box> boxes, bool multimaskOutput = true,
                                                 int imageIndex = 0, bool returnLogits = false)
    {
        var (h, w) = CheckState(state, imageIndex);
        ArgumentNullException.ThrowIfNull(boxes);
        if (boxes.Count == 0) throw new Sam3PromptException("empty interactive prompt: the box batch is empty");
        var px = new List<PixelXyxy>();
        for (int i = 0; i < boxes.Count; i++) px.Add(ValidateBox(boxes[i], i, h, w));
        var probe = _owner.Probe;
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var coords = ToModelFrame(px.SelectMany(b => new[] { b.X0, b.Y0, b.X1, b.Y1 }).ToArray(), h, w).view(-1, 2, 2);
        var labels = BoxLabels(boxes.Count, Device);
        // upstream's batched_mode (repeat_image) is "more than one prompt set"; the [N, C, ...] layout is kept for one box too
        return Run(state, imageIndex, h, w, coords, labels, null, multimaskOutput, returnLogits,
                   repeatImage: boxes.Count > 1, keepPromptDim: true, probe);
    }

    private readonly record struct PixelXyxy(float X0, float Y0, float X1, float Y1);

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
        ObjectDisposedException.ThrowIf(_owner.IsDisposed, _owner);
        ArgumentNullException.ThrowIfNull(state);
        ObjectDisposedException.ThrowIf(state.IsDisposed, state);
        if (!ReferenceEquals(state.Model, _owner)) throw new ArgumentException("the image state was set on another model", nameof(state));
        if (imageIndex < 0 || imageIndex >= state.BatchSize)
            throw new ArgumentOutOfRangeException(nameof(imageIndex), imageIndex, $"the state holds {state.BatchSize} image(s)");
        var sam2 = state.Sam2Features; // computed here on the first interactive call of a state set with it deferred
        if (sam2 is null || sam2.BackboneFpn.Length < 3)
            throw new Sam3StateException("the image state has no SAM2-neck features: it was set with a model loaded without the interactive heads");
        return state.OriginalSizes[imageIndex];
    }

    private static PointPrompt ValidatePoint(PointPrompt p, int i, int h, int w)
    {
        if (!float.IsFinite(p.X) || !float.IsFinite(p.Y)) throw new Sam3PromptException($"point {i} {p} is not finite");
        var q = p.ToPixels(w, h);
        if (q.X < 0 || q.X > w || q.Y < 0 || q.Y > h)
            throw new Sam3PromptException($"point {i} {p} lies outside the {w}x{h} image");
        return q;
    }

    private static PixelXyxy ValidateBox(Box b, int i, int h, int w)
    {
        string which = i < 0 ? "box" : $"box {i}";
        if (!b.IsFinite) throw new Sam3PromptException($"{which} {b} has a non-finite coordinate");
        if (b.Width <= 0 || b.Height <= 0) throw new Sam3PromptException($"{which} {b} has a non-positive size");
        var (x0, y0, x1, y1) = b.ToPixels(w, h).ToXyxy();
        if (x0 < 0 || y0 < 0 || x1 > w || y1 > h)
            throw new Sam3PromptException($"{which} {b} lies outside the {w}x{h} image");
        return new PixelXyxy(x0, y0, x1, y1);
    }

    private void ValidateMaskInput(MaskLogits? m)
    {
        if (m is null) return;
        if (m.Width != _lowRes || m.Height != _lowRes)
            throw new Sam3PromptException($"mask input must be low-res logits of {_lowRes}x{_lowRes} (a previous call's LowResLogits), got {m.Width}x{m.Height}");
        foreach (var v in m.Values)
            if (!float.IsFinite(v)) throw new Sam3PromptException("mask input contains NaN or infinite values");
    }

    private InteractiveTensors Run(Sam3ImageState state, int imageIndex, int h, int w, Tensor? coords, Tensor? labels, Tensor? maskInput,
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
        return new InteractiveTensors(imageIndex, h, w, keepPromptDim, Out(masks), returnLogits ? Out(upsampled) : null,
                                         Out(iou), Out(lowRes), Out(obj));
    }
}
