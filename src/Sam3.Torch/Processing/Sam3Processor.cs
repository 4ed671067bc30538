using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Processing;

/// <summary>
/// Image prediction API, the counterpart of the official <c>Sam3Processor</c>: set an image (or a batch), then prompt
/// it with text, positive/negative boxes and points — alone or together (the official processor cannot combine text and
/// boxes; the model can). Every prompt call reruns only the detector heads on the cached backbone features. Results:
/// boolean masks and probabilities at the original resolution, xyxy pixel boxes, scores
/// (<c>sigmoid(logit)·sigmoid(presence)</c> &gt; threshold; no NMS, no top-k, as upstream).
/// </summary>
/// <remarks>
/// Errors: bad prompts are <see cref="Sam3PromptException"/>, bad images <see cref="Sam3ImageException"/>, a missing or
/// disposed state <see cref="Sam3StateException"/>, a disposed processor <see cref="ObjectDisposedException"/>. A prompt
/// call that fails or is cancelled leaves the state as it was (prompts, results, raw outputs). One processor is not
/// safe for concurrent calls (the text cache and the states are unsynchronised); use one per thread.
/// </remarks>
public sealed class Sam3Processor : IDisposable
{
    /// <summary>Text used when only geometric prompts are given (upstream behaviour of add_geometric_prompt).</summary>
    public const string DummyTextPrompt = "visual";
    /// <summary>Threshold on mask probabilities (upstream <c>masks = masks_logits &gt; 0.5</c>).</summary>
    public const double MaskProbabilityThreshold = 0.5;

    private readonly LinkedList<(string Text, Tensor Features, Tensor Mask)> _textCache = new();
    private readonly int _textCacheCapacity;
    private bool _disposed;

    public Sam3Image Model { get; }
    public ClipBpeTokenizer Tokenizer { get; }
    public ImagePreprocessor Preprocessor { get; }
    public Device Device { get; }
    public ScalarType DType { get; }
    public double ConfidenceThreshold { get; private set; }

    /// <param name="model">A loaded model (eval mode).</param>
    /// <param name="tokenizer">The CLIP BPE tokenizer.</param>
    /// <param name="confidenceThreshold">Score threshold (upstream default 0.5).</param>
    /// <param name="textCacheCapacity">How many encoded text prompts are kept (alternating prompts reuse them).</param>
    public Sam3Processor(Sam3Image model, ClipBpeTokenizer tokenizer, double confidenceThreshold = 0.5, int textCacheCapacity = 32)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        Model = model;
        Tokenizer = tokenizer;
        Preprocessor = new ImagePreprocessor(model.Config);
        var p = model.parameters().First();
        Device = p.device;
        DType = p.dtype;
        CheckThreshold(confidenceThreshold);
        ConfidenceThreshold = confidenceThreshold;
        _textCacheCapacity = Math.Max(1, textCacheCapacity);
    }

    private static void CheckThreshold(double t)
    {
        if (!double.IsFinite(t) || t < 0 || t > 1) throw new Sam3PromptException($"confidence threshold must be in [0,1], got {t}");
    }

    private void CheckAlive() => ObjectDisposedException.ThrowIf(_disposed, this);

    // ---------------------------------------------------------------- images

    /// <summary>Decodes <paramref name="path"/> and sets it.</summary>
    public Sam3ImageState SetImage(string path, CancellationToken cancellationToken = default)
    {
        CheckAlive();
        cancellationToken.ThrowIfCancellationRequested();
        return SetImage(ImageLoader.Load(path), cancellationToken);
    }

    /// <summary>Runs the backbone on one image and returns its state.</summary>
    public Sam3ImageState SetImage(RgbImage image, CancellationToken cancellationToken = default) => SetImageBatch([image], cancellationToken);

    /// <summary>Runs the backbone on a batch of images; later prompts apply to every image, results come back per image.</summary>
    public Sam3ImageState SetImageBatch(IReadOnlyList<RgbImage> images, CancellationToken cancellationToken = default)
    {
        CheckAlive();
        if (images is null || images.Count == 0) throw new Sam3ImageException("the image batch is empty");
        if (images.Any(i => i is null)) throw new Sam3ImageException("the image batch contains a null image");
        cancellationToken.ThrowIfCancellationRequested();
        using var scope = NewDisposeScope();
        var input = Preprocessor.Preprocess(images, Device);
        return SetPreprocessed(input, images.Select(i => (i.Height, i.Width)).ToList(), cancellationToken);
    }

    /// <summary>
    /// Sets already-normalised model inputs [B,3,S,S] (e.g. from a custom pipeline) with the original sizes used to scale
    /// the outputs back.
    /// </summary>
    public Sam3ImageState SetPreprocessed(Tensor input, IReadOnlyList<(int Height, int Width)> originalSizes, CancellationToken cancellationToken = default,
        Action<string, Tensor>? probe = null)
    {
        CheckAlive();
        if (input is null) throw new Sam3ImageException("the model input tensor is null");
        if (originalSizes is null) throw new Sam3ImageException("the original image sizes are null");
        int s = Model.Config.ImageSize;
        if (input.dim() != 4 || input.shape[1] != 3 || input.shape[2] != s || input.shape[3] != s)
            throw new Sam3ImageException($"model input must be [B,3,{s},{s}], got [{string.Join(",", input.shape)}]");
        if (input.shape[0] != originalSizes.Count) throw new Sam3ImageException($"{originalSizes.Count} original sizes for a batch of {input.shape[0]}");
        if (originalSizes.Any(sz => sz.Height <= 0 || sz.Width <= 0)) throw new Sam3ImageException("original image sizes must be positive");
        cancellationToken.ThrowIfCancellationRequested();
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        probe?.Invoke("image_input", input);
        var backbone = Model.backbone.ForwardImage(input.to(DType).to(Device), probe);
        if (backbone.Sam2 is not null && Model.Tracker is { } tracker)
        {
            // Sam3Processor.set_image: the SAM2 neck's two high-resolution levels are stored already projected by the
            // mask decoder's conv_s0 / conv_s1 (the interactive heads consume them in that form).
            var fpn = backbone.Sam2.BackboneFpn;
            var s0 = tracker.sam_mask_decoder.conv_s0!.forward(fpn[0]);
            var s1 = tracker.sam_mask_decoder.conv_s1!.forward(fpn[1]);
            fpn[0].Dispose(); fpn[1].Dispose();
            fpn[0] = s0.DetachFromDisposeScope();
            fpn[1] = s1.DetachFromDisposeScope();
        }
        if (probe is not null && backbone.Sam2 is not null)
            for (int i = 0; i < backbone.Sam2.BackboneFpn.Length; i++) probe($"state.sam2_backbone_fpn.{i}", backbone.Sam2.BackboneFpn[i]);
        return new Sam3ImageState(backbone, originalSizes.ToList());
    }

    // ---------------------------------------------------------------- prompts

    /// <summary>
    /// Sets (replaces) the text prompt and runs the detector; boxes/points given before stay in the prompt. If the call
    /// fails (or is cancelled) the state keeps its previous prompt and results.
    /// </summary>
    public IReadOnlyList<Sam3Detections> SetTextPrompt(Sam3ImageState state, string prompt, Action<string, Tensor>? probe = null,
        CancellationToken cancellationToken = default)
    {
        CheckState(state);
        if (prompt is null || string.IsNullOrWhiteSpace(prompt)) throw new Sam3PromptException("the text prompt is empty");
        cancellationToken.ThrowIfCancellationRequested();
        string? previous = state.TextPrompt;
        state.TextPrompt = prompt;
        try
        {
            return Predict(state, probe, cancellationToken);
        }
        catch
        {
            state.TextPrompt = previous;
            throw;
        }
    }

    /// <summary>
    /// Adds a box in normalised cxcywh ([0,1], upstream's convention) and runs the detector. Boxes accumulate. If the
    /// call fails (or is cancelled) the box is not kept.
    /// </summary>
    public IReadOnlyList<Sam3Detections> AddBoxPrompt(Sam3ImageState state, BoxPrompt box, Action<string, Tensor>? probe = null,
        CancellationToken cancellationToken = default)
    {
        CheckState(state);
        ValidateBox(box);
        cancellationToken.ThrowIfCancellationRequested();
        state.AddBox(box);
        try
        {
            return Predict(state, probe, cancellationToken);
        }
        catch
        {
            state.RemoveLastBox();
            throw;
        }
    }

    /// <summary>Adds a box given in pixels of the image(s) as xyxy. All images of the batch must have the same size.</summary>
    public IReadOnlyList<Sam3Detections> AddBoxPromptXyxy(Sam3ImageState state, float x0, float y0, float x1, float y1, bool positive = true,
        CancellationToken cancellationToken = default)
    {
        CheckState(state);
        var (h, w) = CommonSize(state);
        foreach (var v in new[] { x0, y0, x1, y1 })
            if (!float.IsFinite(v)) throw new Sam3PromptException($"box coordinate {v} is not finite");
        if (x1 <= x0 || y1 <= y0) throw new Sam3PromptException($"box ({x0},{y0},{x1},{y1}) has a non-positive size");
        if (x0 < 0 || y0 < 0 || x1 > w || y1 > h) throw new Sam3PromptException($"box ({x0},{y0},{x1},{y1}) lies outside the {w}x{h} image");
        return AddBoxPrompt(state, new BoxPrompt((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h, positive),
            cancellationToken: cancellationToken);
    }

    /// <summary>Adds a box given in pixels as x, y (top-left), width, height.</summary>
    public IReadOnlyList<Sam3Detections> AddBoxPromptXywh(Sam3ImageState state, float x, float y, float width, float height, bool positive = true,
        CancellationToken cancellationToken = default)
        => AddBoxPromptXyxy(state, x, y, x + width, y + height, positive, cancellationToken);

    /// <summary>
    /// Adds a point in normalised xy ([0,1]) and runs the detector (the geometry encoder's point path). If the call
    /// fails (or is cancelled) the point is not kept.
    /// </summary>
    public IReadOnlyList<Sam3Detections> AddPointPrompt(Sam3ImageState state, PointPrompt point, Action<string, Tensor>? probe = null,
        CancellationToken cancellationToken = default)
    {
        CheckState(state);
        if (!float.IsFinite(point.X) || !float.IsFinite(point.Y)) throw new Sam3PromptException($"point ({point.X},{point.Y}) is not finite");
        if (point.X < 0 || point.X > 1 || point.Y < 0 || point.Y > 1) throw new Sam3PromptException($"point ({point.X},{point.Y}) is outside [0,1]");
        cancellationToken.ThrowIfCancellationRequested();
        state.AddPoint(point);
        try
        {
            return Predict(state, probe, cancellationToken);
        }
        catch
        {
            state.RemoveLastPoint();
            throw;
        }
    }

    /// <summary>Removes every prompt and result (the image features stay).</summary>
    public void ResetAllPrompts(Sam3ImageState state)
    {
        CheckState(state);
        state.ClearPrompts();
    }

    /// <summary>
    /// Changes the threshold; with a state, re-filters its last outputs without rerunning any network and returns the
    /// new results (null when the state has no outputs yet). The previous results of that state are disposed.
    /// </summary>
    public IReadOnlyList<Sam3Detections>? SetConfidenceThreshold(double threshold, Sam3ImageState? state = null)
    {
        CheckAlive();
        CheckThreshold(threshold);
        if (state is not null) CheckState(state); // a disposed state is an error, also when it has no outputs
        if (state?.RawOutput is null)
        {
            ConfidenceThreshold = threshold;
            return state?.Results;
        }
        var results = PostProcess(state, state.RawOutput, threshold);
        ConfidenceThreshold = threshold;
        state.SetResults(results);
        return results;
    }

    /// <summary>
    /// Runs the detector with the state's current prompts (text and/or boxes/points). The returned results are owned by
    /// the state (<see cref="Sam3ImageState.Results"/>): the next prompt, threshold change, reset or dispose of the
    /// state disposes them. On failure or cancellation the state keeps its previous results.
    /// </summary>
    public IReadOnlyList<Sam3Detections> Predict(Sam3ImageState state, Action<string, Tensor>? probe = null, CancellationToken cancellationToken = default)
    {
        CheckState(state);
        if (state.TextPrompt is null && state.Boxes.Count == 0 && state.Points.Count == 0)
            throw new Sam3PromptException("no prompt: give a text, a box or a point");
        cancellationToken.ThrowIfCancellationRequested();
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        long b = state.BatchSize;
        var (feats, mask) = EncodeText(state.TextPrompt ?? DummyTextPrompt);
        probe?.Invoke("text.out.0", mask);
        probe?.Invoke("text.out.1", feats);
        cancellationToken.ThrowIfCancellationRequested();
        var prompt = BuildGeometricPrompt(state, b);
        var ids = torch.arange(b, dtype: ScalarType.Int64, device: Device);
        var textIds = torch.zeros(b, dtype: ScalarType.Int64, device: Device);
        var raw = Model.ForwardGrounding(state.Backbone, feats, mask, textIds, ids, prompt, probe);
        IReadOnlyList<Sam3Detections> results;
        try
        {
            results = PostProcess(state, raw, ConfidenceThreshold);
        }
        catch
        {
            raw.Dispose();
            throw;
        }
        state.SetRaw(raw);
        state.SetResults(results);
        return results;
    }

    // ---------------------------------------------------------------- internals

    private void CheckState(Sam3ImageState state)
    {
        CheckAlive();
        if (state is null) throw new Sam3StateException("no image is set: call SetImage first");
        if (state.IsDisposed) throw new Sam3StateException("this image state has been disposed");
    }

    private static (int, int) CommonSize(Sam3ImageState state)
    {
        var first = state.OriginalSizes[0];
        if (state.OriginalSizes.Any(s => s != first))
            throw new Sam3PromptException("pixel coordinates are ambiguous for a batch of images of different sizes: give normalised coordinates");
        return first;
    }

    private static void ValidateBox(BoxPrompt box)
    {
        float[] v = [box.Cx, box.Cy, box.W, box.H];
        if (v.Any(x => !float.IsFinite(x))) throw new Sam3PromptException($"box ({string.Join(", ", v)}) has a non-finite coordinate");
        if (box.W <= 0 || box.H <= 0) throw new Sam3PromptException($"box ({string.Join(", ", v)}) has a non-positive size");
        if (v.Any(x => x < 0 || x > 1)) throw new Sam3PromptException($"box ({string.Join(", ", v)}) is outside [0,1] (normalised cxcywh expected)");
    }

    private Prompt BuildGeometricPrompt(Sam3ImageState state, long batch)
    {
        var prompt = Prompt.Empty(batch, Device);
        if (state.Boxes.Count > 0)
        {
            var boxes = torch.tensor(state.Boxes.SelectMany(x => new[] { x.Cx, x.Cy, x.W, x.H }).ToArray(), device: Device)
                .view(-1, 1, 4).expand(-1, batch, -1).contiguous();
            var labels = torch.tensor(state.Boxes.Select(x => x.Positive).ToArray(), device: Device).view(-1, 1).expand(-1, batch).contiguous();
            prompt.AppendBoxes(boxes, labels);
        }
        if (state.Points.Count > 0)
        {
            var pts = torch.tensor(state.Points.SelectMany(x => new[] { x.X, x.Y }).ToArray(), device: Device)
                .view(-1, 1, 2).expand(-1, batch, -1).contiguous();
            var labels = torch.tensor(state.Points.Select(x => x.Positive ? 1L : 0L).ToArray(), device: Device).view(-1, 1).expand(-1, batch).contiguous();
            prompt.AppendPoints(pts, labels);
        }
        return prompt;
    }

    /// <summary>Text features [L,1,d] and mask [1,L] of a prompt, from the bounded cache when present.</summary>
    private (Tensor Features, Tensor Mask) EncodeText(string text)
    {
        for (var node = _textCache.First; node is not null; node = node.Next)
        {
            if (node.Value.Text != text) continue;
            _textCache.Remove(node);
            _textCache.AddFirst(node);
            return (node.Value.Features, node.Value.Mask);
        }
        Tensor f, m;
        using (var scope = NewDisposeScope())
        {
            var (ids, pad) = Tokenizer.TokenizeToTensors([text]);
            var enc = Model.backbone.ForwardText(ids.to(Device), pad.to(Device));
            f = enc.LanguageFeatures.MoveToOuterDisposeScope();
            m = enc.LanguageMask.MoveToOuterDisposeScope();
        }
        f.DetachFromDisposeScope();
        m.DetachFromDisposeScope();
        _textCache.AddFirst((text, f, m));
        while (_textCache.Count > _textCacheCapacity)
        {
            var last = _textCache.Last!.Value;
            last.Features.Dispose(); last.Mask.Dispose();
            _textCache.RemoveLast();
        }
        return (f, m);
    }

    /// <summary>Number of text prompts currently cached.</summary>
    public int CachedTextPrompts => _textCache.Count;

    /// <summary>
    /// Sam3Processor._forward_grounding's post-processing per image: scores, threshold, xyxy pixel boxes, bilinear
    /// (align_corners=False) upsampling of the kept mask logits to the original size, sigmoid, &gt; 0.5.
    /// </summary>
    private static IReadOnlyList<Sam3Detections> PostProcess(Sam3ImageState state, GroundingOutput raw, double threshold)
    {
        var results = new List<Sam3Detections>();
        using var scope = NewDisposeScope();
        var logits = raw.PredLogits!.to(ScalarType.Float32).cpu();
        var presence = raw.PresenceLogitDec!.to(ScalarType.Float32).cpu();
        var boxesAll = raw.PredBoxes!.to(ScalarType.Float32).cpu();
        var masksAll = raw.PredMasks!;
        try
        {
            for (int i = 0; i < state.BatchSize; i++)
                results.Add(PostProcessOne(state, i, logits, presence, boxesAll, masksAll, threshold));
        }
        catch
        {
            foreach (var r in results) r.Dispose();
            throw;
        }
        return results;
    }

    private static Sam3Detections PostProcessOne(Sam3ImageState state, int i, Tensor logits, Tensor presence, Tensor boxesAll, Tensor masksAll,
        double threshold)
    {
        using var scope = NewDisposeScope();
        var (h, w) = state.OriginalSizes[i];
        var probs = (logits[i].sigmoid() * presence[i].sigmoid().unsqueeze(0)).squeeze(-1); // [Q]
        var keep = probs.gt(threshold).nonzero().flatten();
        long[] idx = keep.data<long>().ToArray();
        var scores = probs.index_select(0, keep);
        var boxes = BoxOps.Denormalize(BoxOps.CxcywhToXyxy(boxesAll[i].index_select(0, keep)), w, h);
        var low = masksAll[i].index_select(0, keep.to(masksAll.device)).to(ScalarType.Float32).unsqueeze(1);
        var prob = nn.functional.interpolate(low, [h, w], mode: InterpolationMode.Bilinear, align_corners: false).sigmoid().squeeze(1).cpu();
        var masks = prob.gt(MaskProbabilityThreshold);
        return new Sam3Detections(i, h, w, masks, prob, boxes, scores, idx);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var (_, f, m) in _textCache) { f.Dispose(); m.Dispose(); }
        _textCache.Clear();
    }
}
