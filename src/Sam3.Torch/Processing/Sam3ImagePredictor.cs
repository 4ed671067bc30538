using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Processing;
using Sam3.Torch.Text;
using Sam3.Torch.Visualization;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch;

/// <summary>Options of <see cref="Sam3Model.CreateImagePredictor"/>.</summary>
public sealed record ImagePredictorOptions
{
    /// <summary>Score threshold in [0, 1] (upstream default 0.5).</summary>
    public double ConfidenceThreshold { get; init; } = 0.5;
    /// <summary>How many encoded text prompts are kept (alternating prompts reuse them); at least 1.</summary>
    public int TextCacheCapacity { get; init; } = 32;

    /// <summary>
    /// Keep each detection's mask as its COCO RLE (a few kilobytes) instead of Height × Width bytes; the bytes are
    /// decoded when <see cref="Visualization.BinaryMask.Data"/> is first read, and <see cref="Detection.ToRle"/> returns
    /// the stored RLE. For callers that hold many full-resolution masks (default false: bytes, as before).
    /// </summary>
    public bool CompactMasks { get; init; }

    /// <summary>
    /// Mask post-processing works on this many float elements at a time (at least one mask per chunk; default 16 Mi
    /// elements = 64 MiB): the bound on its temporary memory whatever the number of detections. At least 1.
    /// </summary>
    public long MaskChunkElements { get; init; } = MaskUpsampler.DefaultChunkElements;

    /// <summary>
    /// Run the SAM2 neck (the features of <see cref="Sam3InteractivePredictor"/>) inside <see cref="Sam3ImagePredictor.SetImage(RgbImage, CancellationToken)"/>,
    /// as upstream's <c>set_image</c> does. Default false: a state set by this predictor computes them on the first
    /// interactive call (same values), so text and box prompts never pay for them.
    /// </summary>
    public bool PrecomputeInteractiveFeatures { get; init; }
}

/// <summary>
/// The detector API, the counterpart of the official <c>Sam3Processor</c>: set an image (or a batch), then prompt it with
/// text, positive/negative boxes and points — alone or together (the official processor cannot combine text and
/// boxes; the model can). Every prompt call reruns only the detector heads on the cached image features. Each call
/// returns the detections of every image of the state (<see cref="ImageDetections"/>: scores, xyxy pixel boxes, masks
/// at the original resolution), data the caller owns: later calls do not touch it.
/// </summary>
/// <remarks>
/// Errors: null or out-of-range arguments are <see cref="ArgumentException"/>s, a disposed state or predictor an
/// <see cref="ObjectDisposedException"/>, an unusable prompt a <see cref="Sam3PromptException"/>, an unusable image a
/// <see cref="Sam3ImageException"/>. A prompt call that fails or is cancelled leaves the state as it was. One predictor
/// is not safe for concurrent calls (its text cache is unsynchronised): create one per thread; they share the weights.
/// </remarks>
public sealed class Sam3ImagePredictor : IDisposable
{
    /// <summary>Text used when only geometric prompts are given (upstream behaviour of add_geometric_prompt).</summary>
    public const string DummyTextPrompt = "visual";
    /// <summary>Threshold on mask probabilities (upstream <c>masks = masks_logits &gt; 0.5</c>).</summary>
    internal const double MaskProbabilityThreshold = 0.5;

    private readonly LinkedList<(string Text, Tensor Features, Tensor Mask, bool Full)> _textCache = new();
    private readonly int _textCacheCapacity;
    private readonly bool _compactMasks;
    private readonly long _maskChunkElements;
    private readonly bool _eagerSam2;
    private readonly Sam3Model _owner;
    private bool _disposed;

    internal Sam3ImagePredictor(Sam3Model owner, ImagePredictorOptions options)
    {
        _owner = owner;
        CheckThreshold(options.ConfidenceThreshold, $"{nameof(options)}.{nameof(ImagePredictorOptions.ConfidenceThreshold)}");
        if (options.TextCacheCapacity < 1)
            throw new ArgumentOutOfRangeException($"{nameof(options)}.{nameof(ImagePredictorOptions.TextCacheCapacity)}", options.TextCacheCapacity,
                $"TextCacheCapacity must be at least 1, got {options.TextCacheCapacity}");
        if (options.MaskChunkElements < 1)
            throw new ArgumentOutOfRangeException($"{nameof(options)}.{nameof(ImagePredictorOptions.MaskChunkElements)}", options.MaskChunkElements,
                $"MaskChunkElements must be at least 1, got {options.MaskChunkElements}");
        ConfidenceThreshold = options.ConfidenceThreshold;
        _textCacheCapacity = options.TextCacheCapacity;
        _compactMasks = options.CompactMasks;
        _maskChunkElements = options.MaskChunkElements;
        _eagerSam2 = options.PrecomputeInteractiveFeatures;
        Preprocessor = new ImagePreprocessor(owner.Config);
    }

    /// <summary>The current score threshold.</summary>
    public double ConfidenceThreshold { get; private set; }

    internal Sam3ImageModel Model => _owner.Network;
    internal ClipBpeTokenizer Tokenizer => _owner.Tokenizer;
    internal ImagePreprocessor Preprocessor { get; }
    internal Device Device => _owner.TorchDevice;
    internal ScalarType DType => _owner.DType;

    /// <summary>Number of text prompts currently cached.</summary>
    public int CachedTextPrompts => _textCache.Count;

    private static void CheckThreshold(double t, string name)
    {
        if (!double.IsFinite(t) || t < 0 || t > 1) throw new ArgumentOutOfRangeException(name, t, $"the confidence threshold must be in [0, 1], got {t}");
    }

    private void CheckAlive()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ObjectDisposedException.ThrowIf(_owner.IsDisposed, _owner);
    }

    // ---------------------------------------------------------------- images

    /// <summary>Decodes the image file at <paramref name="path"/> and sets it.</summary>
    /// <exception cref="Sam3ImageException">The file is missing, unreadable or not an image.</exception>
    public Sam3ImageState SetImage(string path, CancellationToken cancellationToken = default)
    {
        CheckAlive();
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        cancellationToken.ThrowIfCancellationRequested();
        return SetImage(ImageLoader.Load(path), cancellationToken);
    }

    /// <summary>Runs the image encoder on one image and returns its state.</summary>
    public Sam3ImageState SetImage(RgbImage image, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(image);
        return SetImages([image], cancellationToken);
    }

    /// <summary>Runs the image encoder on a batch of images; later prompts apply to every image, results come back per image.</summary>
    public Sam3ImageState SetImages(IReadOnlyList<RgbImage> images, CancellationToken cancellationToken = default)
    {
        CheckAlive();
        ArgumentNullException.ThrowIfNull(images);
        if (images.Count == 0) throw new ArgumentException("the image batch is empty", nameof(images));
        for (int i = 0; i < images.Count; i++)
            if (images[i] is null) throw new ArgumentException($"image {i} of the batch is null", nameof(images));
        cancellationToken.ThrowIfCancellationRequested();
        return EncodeImages(_owner, Preprocessor, images, cancellationToken, _eagerSam2);
    }

    /// <summary>Preprocesses and encodes images for either predictor of <paramref name="owner"/>.</summary>
    /// <param name="eagerSam2">Run the SAM2 neck now (upstream) rather than on the first interactive call.</param>
    internal static Sam3ImageState EncodeImages(Sam3Model owner, ImagePreprocessor preprocessor, IReadOnlyList<RgbImage> images, CancellationToken ct,
        bool eagerSam2)
    {
        using var scope = NewDisposeScope();
        var input = preprocessor.Preprocess(images, owner.TorchDevice);
        return SetPreprocessed(owner, input, images.Select(i => (i.Height, i.Width)).ToList(), ct, eagerSam2);
    }

    /// <summary>
    /// Sets already-normalised model inputs [B,3,S,S] with the original sizes used to scale outputs back (parity runner,
    /// custom pipelines).
    /// </summary>
    /// <param name="eagerSam2">Run the SAM2 neck now, as upstream's set_image (default), rather than on the first
    /// interactive call (<see cref="Sam3ImageState.Sam2Features"/>). With a probe attached it always runs now.</param>
    internal static Sam3ImageState SetPreprocessed(Sam3Model owner, Tensor input, IReadOnlyList<(int Height, int Width)> originalSizes,
        CancellationToken cancellationToken = default, bool eagerSam2 = true)
    {
        var state = EncodePreprocessed(owner, input, originalSizes, cancellationToken, eagerSam2);
        // The image encoder's freed activations stay in the C heap otherwise (~1 GB at full size): give them back
        // before the prompts run, so their peak does not start from there.
        NativeHeap.Trim();
        return state;
    }

    private static Sam3ImageState EncodePreprocessed(Sam3Model owner, Tensor input, IReadOnlyList<(int Height, int Width)> originalSizes,
        CancellationToken cancellationToken, bool eagerSam2)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(originalSizes);
        var model = owner.Network;
        int s = model.Config.ImageSize;
        if (input.dim() != 4 || input.shape[1] != 3 || input.shape[2] != s || input.shape[3] != s)
            throw new Sam3ImageException($"model input must be [B,3,{s},{s}], got [{string.Join(",", input.shape)}]");
        if (input.shape[0] != originalSizes.Count) throw new Sam3ImageException($"{originalSizes.Count} original sizes for a batch of {input.shape[0]}");
        if (originalSizes.Any(sz => sz.Height <= 0 || sz.Width <= 0)) throw new Sam3ImageException("original image sizes must be positive");
        cancellationToken.ThrowIfCancellationRequested();
        var probe = owner.Probe;
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        probe?.Invoke("image_input", input);
        // Deferred SAM2 neck: only the interactive heads read it, so without them nothing is kept for it at all.
        bool withSam2 = eagerSam2 || probe is not null;
        var backbone = model.backbone.ForwardImage(input.to(owner.DType).to(owner.TorchDevice), probe, withSam2);
        if (!withSam2 && model.Tracker is null && backbone.DeferredTrunk is { } unused)
        {
            unused.Dispose();
            backbone.DeferredTrunk = null;
        }
        if (backbone.Sam2 is not null) ProjectSam2(owner, backbone.Sam2);
        if (probe is not null && backbone.Sam2 is not null)
            for (int i = 0; i < backbone.Sam2.BackboneFpn.Length; i++) probe($"state.sam2_backbone_fpn.{i}", backbone.Sam2.BackboneFpn[i]);
        return new Sam3ImageState(owner, backbone, originalSizes.ToList());
    }

    /// <summary>
    /// Sam3Processor.set_image: the SAM2 neck's two high-resolution levels are stored already projected by the mask
    /// decoder's conv_s0 / conv_s1 (the interactive heads consume them in that form); in place, when the model has the
    /// interactive heads.
    /// </summary>
    private static void ProjectSam2(Sam3Model owner, BackboneOutput sam2)
    {
        if (owner.Network.Tracker is not { } tracker) return;
        using var scope = NewDisposeScope();
        var fpn = sam2.BackboneFpn;
        var s0 = tracker.sam_mask_decoder.conv_s0!.forward(Precision.PrecisionPolicy.ToWeightDtype(fpn[0], tracker.sam_mask_decoder.conv_s0!.weight!));
        var s1 = tracker.sam_mask_decoder.conv_s1!.forward(Precision.PrecisionPolicy.ToWeightDtype(fpn[1], tracker.sam_mask_decoder.conv_s1!.weight!));
        fpn[0].Dispose(); fpn[1].Dispose();
        fpn[0] = s0.DetachFromDisposeScope();
        fpn[1] = s1.DetachFromDisposeScope();
    }

    /// <summary>
    /// The SAM2 neck of a state whose image was set with it deferred: computed from the kept trunk output and projected
    /// as in set_image, with the values an eager set_image gives; the trunk output is freed.
    /// </summary>
    internal static BackboneOutput ComputeDeferredSam2(Sam3Model owner, Tensor trunkOut)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var sam2 = owner.Network.backbone.ForwardSam2(trunkOut);
        ProjectSam2(owner, sam2);
        return sam2;
    }

    // ---------------------------------------------------------------- prompts

    /// <summary>
    /// Sets (replaces) the text prompt and runs the detector; boxes/points given before stay in the prompt. If the call
    /// fails (or is cancelled) the state keeps its previous prompt.
    /// </summary>
    /// <exception cref="Sam3PromptException">The text is empty or blank.</exception>
    public IReadOnlyList<ImageDetections> SetTextPrompt(Sam3ImageState state, string text, CancellationToken cancellationToken = default)
        => ToPublic(SetTextPromptCore(state, text, cancellationToken));

    internal IReadOnlyList<DetectionTensors> SetTextPromptCore(Sam3ImageState state, string text, CancellationToken cancellationToken = default)
    {
        CheckState(state);
        ArgumentNullException.ThrowIfNull(text);
        if (string.IsNullOrWhiteSpace(text)) throw new Sam3PromptException($"the text prompt is empty ('{text}')");
        string? previous = state.TextPrompt;
        return Transactional(state, () => state.TextPrompt = text, () => state.TextPrompt = previous, cancellationToken);
    }

    /// <summary>Applies a prompt change and runs the detector; on failure or cancellation the change is undone.</summary>
    private IReadOnlyList<DetectionTensors> Transactional(Sam3ImageState state, Action apply, Action undo, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        apply();
        try
        {
            return PredictCore(state, cancellationToken);
        }
        catch
        {
            undo();
            throw;
        }
    }

    /// <summary>
    /// Adds a box (any format; pixel coordinates need all images of the state to share one size) and runs the detector.
    /// Boxes accumulate. If the call fails (or is cancelled) the box is not kept.
    /// </summary>
    /// <exception cref="Sam3PromptException">The box is not finite, empty, or outside the image.</exception>
    public IReadOnlyList<ImageDetections> AddBox(Sam3ImageState state, BoxPrompt box, CancellationToken cancellationToken = default)
        => ToPublic(AddBoxCore(state, box, cancellationToken));

    internal IReadOnlyList<DetectionTensors> AddBoxCore(Sam3ImageState state, BoxPrompt box, CancellationToken cancellationToken = default)
    {
        CheckState(state);
        NormalizedCxcywh(state, box); // validates
        return Transactional(state, () => state.AddBox(box), state.RemoveLastBox, cancellationToken);
    }

    /// <summary>
    /// Sets the text (when given) and adds every box, then runs the detector once: the same result as
    /// <see cref="SetTextPrompt"/> followed by one <see cref="AddBox"/> per box, without running the detector after
    /// each (which made N boxes cost N runs of growing size: quadratic). All or nothing: on failure no box is kept.
    /// </summary>
    internal IReadOnlyList<ImageDetections> SetPrompts(Sam3ImageState state, string? text, IReadOnlyList<BoxPrompt> boxes, CancellationToken cancellationToken = default)
    {
        CheckState(state);
        ArgumentNullException.ThrowIfNull(boxes);
        if (text is not null && string.IsNullOrWhiteSpace(text)) throw new Sam3PromptException($"the text prompt is empty ('{text}')");
        foreach (var box in boxes) NormalizedCxcywh(state, box); // validates every box before anything changes
        string? previous = state.TextPrompt;
        int added = 0;
        return ToPublic(Transactional(state,
            () => { if (text is not null) state.TextPrompt = text; foreach (var box in boxes) { state.AddBox(box); added++; } },
            () => { for (; added > 0; added--) state.RemoveLastBox(); state.TextPrompt = previous; },
            cancellationToken));
    }

    /// <summary>
    /// Adds a point (the geometry encoder's point path) and runs the detector. Points accumulate. If the call fails
    /// (or is cancelled) the point is not kept.
    /// </summary>
    /// <exception cref="Sam3PromptException">The point is not finite or outside the image.</exception>
    public IReadOnlyList<ImageDetections> AddPoint(Sam3ImageState state, PointPrompt point, CancellationToken cancellationToken = default)
        => ToPublic(AddPointCore(state, point, cancellationToken));

    internal IReadOnlyList<DetectionTensors> AddPointCore(Sam3ImageState state, PointPrompt point, CancellationToken cancellationToken = default)
    {
        CheckState(state);
        NormalizedPoint(state, point); // validates
        return Transactional(state, () => state.AddPoint(point), state.RemoveLastPoint, cancellationToken);
    }

    /// <summary>Removes every prompt of the state (the image features stay).</summary>
    public void ResetPrompts(Sam3ImageState state)
    {
        CheckState(state);
        state.ClearPrompts();
    }

    /// <summary>
    /// Changes the threshold; with a state, re-filters its last outputs without rerunning any network and returns the
    /// new detections (null when the state has no outputs yet).
    /// </summary>
    public IReadOnlyList<ImageDetections>? SetConfidenceThreshold(double threshold, Sam3ImageState? state = null)
    {
        var r = SetConfidenceThresholdCore(threshold, state);
        return r is null ? null : ToPublic(r);
    }

    internal IReadOnlyList<DetectionTensors>? SetConfidenceThresholdCore(double threshold, Sam3ImageState? state)
    {
        CheckAlive();
        CheckThreshold(threshold, nameof(threshold));
        if (state is not null) CheckState(state);
        if (state?.RawOutput is null)
        {
            ConfidenceThreshold = threshold;
            return null;
        }
        var results = PostProcess(state, state.RawOutput, threshold, _maskChunkElements);
        ConfidenceThreshold = threshold;
        return results;
    }

    /// <summary>Runs the detector with the state's current prompts (text and/or boxes/points).</summary>
    /// <exception cref="Sam3PromptException">The state has no prompt.</exception>
    public IReadOnlyList<ImageDetections> Predict(Sam3ImageState state, CancellationToken cancellationToken = default)
        => ToPublic(PredictCore(state, cancellationToken));

    internal IReadOnlyList<DetectionTensors> PredictCore(Sam3ImageState state, CancellationToken cancellationToken = default)
    {
        CheckState(state);
        if (state.TextPrompt is null && state.Boxes.Count == 0 && state.Points.Count == 0)
            throw new Sam3PromptException("no prompt: give a text, a box or a point");
        cancellationToken.ThrowIfCancellationRequested();
        var probe = _owner.Probe;
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
        IReadOnlyList<DetectionTensors> results;
        try
        {
            results = PostProcess(state, raw, ConfidenceThreshold, _maskChunkElements);
        }
        catch
        {
            raw.Dispose();
            throw;
        }
        state.SetRaw(raw);
        return results;
    }

    // ---------------------------------------------------------------- internals

    private void CheckState(Sam3ImageState state)
    {
        CheckAlive();
        ArgumentNullException.ThrowIfNull(state);
        ObjectDisposedException.ThrowIf(state.IsDisposed, state);
        if (!ReferenceEquals(state.Model, _owner)) throw new ArgumentException("the image state was set on another model", nameof(state));
    }

    /// <summary>The box as normalised cxcywh (the detector's convention) for every image of the state; validates it.</summary>
    private static (float Cx, float Cy, float W, float H) NormalizedCxcywh(Sam3ImageState state, BoxPrompt prompt)
    {
        var box = prompt.Box;
        if (!box.IsFinite) throw new Sam3PromptException($"box {box} has a non-finite coordinate");
        if (box.Width <= 0 || box.Height <= 0) throw new Sam3PromptException($"box {box} has a non-positive size");
        Box n;
        if (box.Space == CoordinateSpace.Pixels)
        {
            var (h, w) = CommonSize(state, box.ToString());
            var (x0, y0, x1, y1) = box.ToXyxy();
            if (x0 < 0 || y0 < 0 || x1 > w || y1 > h) throw new Sam3PromptException($"box {box} lies outside the {w}x{h} image");
            n = box.ToNormalized(w, h);
        }
        else
        {
            n = box;
            var (x0, y0, x1, y1) = box.ToXyxy();
            const float slack = 1e-6f; // cxcywh given with rounding may reach 1 + ulp at the edge
            if (x0 < -slack || y0 < -slack || x1 > 1 + slack || y1 > 1 + slack)
                throw new Sam3PromptException($"box {box} is outside [0,1] (normalised coordinates)");
        }
        return n.ToCxcywh();
    }

    private static (float X, float Y) NormalizedPoint(Sam3ImageState state, PointPrompt point)
    {
        if (!float.IsFinite(point.X) || !float.IsFinite(point.Y)) throw new Sam3PromptException($"point {point} is not finite");
        if (point.Space == CoordinateSpace.Pixels)
        {
            var (h, w) = CommonSize(state, point.ToString());
            if (point.X < 0 || point.X > w || point.Y < 0 || point.Y > h) throw new Sam3PromptException($"point {point} lies outside the {w}x{h} image");
            var n = point.ToNormalized(w, h);
            return (n.X, n.Y);
        }
        if (point.X < 0 || point.X > 1 || point.Y < 0 || point.Y > 1) throw new Sam3PromptException($"point {point} is outside [0,1] (normalised coordinates)");
        return (point.X, point.Y);
    }

    private static (int H, int W) CommonSize(Sam3ImageState state, string what)
    {
        var first = state.OriginalSizes[0];
        if (state.OriginalSizes.Any(s => s != first))
            throw new Sam3PromptException($"{what}: pixel coordinates are ambiguous for a batch of images of different sizes: give normalised coordinates");
        return first;
    }

    private Prompt BuildGeometricPrompt(Sam3ImageState state, long batch)
    {
        var prompt = Prompt.Empty(batch, Device);
        if (state.Boxes.Count > 0)
        {
            var boxes = torch.tensor(state.Boxes.SelectMany(x => NormalizedCxcywh(state, x) is var (cx, cy, w, h) ? new[] { cx, cy, w, h } : []).ToArray(), device: Device)
                .view(-1, 1, 4).expand(-1, batch, -1).contiguous();
            var labels = torch.tensor(state.Boxes.Select(x => x.Positive).ToArray(), device: Device).view(-1, 1).expand(-1, batch).contiguous();
            prompt.AppendBoxes(boxes, labels);
        }
        if (state.Points.Count > 0)
        {
            var pts = torch.tensor(state.Points.SelectMany(x => NormalizedPoint(state, x) is var (px, py) ? new[] { px, py } : []).ToArray(), device: Device)
                .view(-1, 1, 2).expand(-1, batch, -1).contiguous();
            var labels = torch.tensor(state.Points.Select(x => x.Positive ? 1L : 0L).ToArray(), device: Device).view(-1, 1).expand(-1, batch).contiguous();
            prompt.AppendPoints(pts, labels);
        }
        return prompt;
    }

    /// <summary>
    /// Text features [L,1,d] and mask [1,L] of a prompt, from the bounded cache when present. The text transformer runs
    /// only over the prompt's real tokens (<see cref="Modeling.Text.VETextEncoder.forward"/>, skipPaddedPositions: the
    /// detector reads nothing else); with a probe attached (parity recording) over all positions, as upstream, so the
    /// recorded features are upstream's everywhere.
    /// </summary>
    private (Tensor Features, Tensor Mask) EncodeText(string text)
    {
        bool full = _owner.Probe is not null;
        for (var node = _textCache.First; node is not null; node = node.Next)
        {
            if (node.Value.Text != text) continue;
            if (full && !node.Value.Full)
            {
                // cached from the real tokens only: recompute over all positions for the recording
                node.Value.Features.Dispose(); node.Value.Mask.Dispose();
                _textCache.Remove(node);
                break;
            }
            _textCache.Remove(node);
            _textCache.AddFirst(node);
            return (node.Value.Features, node.Value.Mask);
        }
        Tensor f, m;
        using (var scope = NewDisposeScope())
        {
            var (ids, pad) = Tokenizer.TokenizeToTensors([text]);
            var enc = Model.backbone.ForwardText(ids.to(Device), pad.to(Device), skipPaddedPositions: !full);
            f = enc.LanguageFeatures.MoveToOuterDisposeScope();
            m = enc.LanguageMask.MoveToOuterDisposeScope();
        }
        f.DetachFromDisposeScope();
        m.DetachFromDisposeScope();
        _textCache.AddFirst((text, f, m, full));
        while (_textCache.Count > _textCacheCapacity)
        {
            var last = _textCache.Last!.Value;
            last.Features.Dispose(); last.Mask.Dispose();
            _textCache.RemoveLast();
        }
        return (f, m);
    }

    /// <summary>Copies tensor results into caller-owned immutable detections and frees the tensors.</summary>
    private IReadOnlyList<ImageDetections> ToPublic(IReadOnlyList<DetectionTensors> results)
    {
        try
        {
            // The detector heads' freed activations (~1 GB at full size) stay in the C heap, which the managed mask
            // arrays cannot reuse: when the masks need more than one upsampling chunk's memory, give that heap back first
            // so that the results' peak does not stack on it (malloc_trim: tens of milliseconds to ~1 s on a loaded machine).
            long maskBytes = _compactMasks ? 0 : results.Sum(r => (long)r.Count * r.Height * r.Width);
            if (maskBytes > _maskChunkElements * sizeof(float)) NativeHeap.Trim();
            return results.Select(r => r.ToDetections(_compactMasks)).ToList();
        }
        finally
        {
            foreach (var r in results) r.Dispose();
        }
    }

    /// <summary>
    /// The post-processing of the public detector calls (<see cref="SetTextPrompt"/>, <see cref="Predict"/>, ...) on
    /// given raw outputs of <paramref name="state"/>'s images: threshold, boxes, masks upsampled straight into the public
    /// results (the same calls those methods make after the model). For the benchmarks' staged pass.
    /// </summary>
    internal IReadOnlyList<ImageDetections> PostProcessToPublic(Sam3ImageState state, GroundingOutput raw, double threshold)
    {
        CheckAlive();
        CheckThreshold(threshold, nameof(threshold));
        return ToPublic(PostProcess(state, raw, threshold, _maskChunkElements));
    }

    /// <summary>
    /// Sam3Processor._forward_grounding's post-processing per image: scores, threshold, xyxy pixel boxes, bilinear
    /// (align_corners=False) upsampling of the kept mask logits to the original size, sigmoid, &gt; 0.5.
    /// </summary>
    private static IReadOnlyList<DetectionTensors> PostProcess(Sam3ImageState state, GroundingOutput raw, double threshold, long maskChunkElements)
    {
        var results = new List<DetectionTensors>();
        using var scope = NewDisposeScope();
        var logits = raw.PredLogits!.to(ScalarType.Float32).cpu();
        var presence = raw.PresenceLogitDec!.to(ScalarType.Float32).cpu();
        var boxesAll = raw.PredBoxes!.to(ScalarType.Float32).cpu();
        var masksAll = raw.PredMasks!;
        try
        {
            for (int i = 0; i < state.BatchSize; i++)
                results.Add(PostProcessOne(state, i, logits, presence, boxesAll, masksAll, threshold, maskChunkElements));
        }
        catch
        {
            foreach (var r in results) r.Dispose();
            throw;
        }
        return results;
    }

    private static DetectionTensors PostProcessOne(Sam3ImageState state, int i, Tensor logits, Tensor presence, Tensor boxesAll, Tensor masksAll,
        double threshold, long maskChunkElements)
    {
        using var scope = NewDisposeScope();
        var (h, w) = state.OriginalSizes[i];
        var probs = (logits[i].sigmoid() * presence[i].sigmoid().unsqueeze(0)).squeeze(-1); // [Q]
        var keep = probs.gt(threshold).nonzero().flatten();
        long[] idx = keep.data<long>().ToArray();
        var scores = probs.index_select(0, keep);
        var boxes = BoxOps.Denormalize(BoxOps.CxcywhToXyxy(boxesAll[i].index_select(0, keep)), w, h);
        // Only the kept queries' low-res logits are kept: they are upsampled chunk by chunk when the results are made
        // (straight into each detection's bytes or RLE) or on demand (DetectionTensors.Masks / MaskProbabilities).
        var low = masksAll[i].index_select(0, keep.to(masksAll.device));
        return new DetectionTensors(i, h, w, low, boxes, scores, idx, MaskProbabilityThreshold, maskChunkElements);
    }

    /// <summary>Frees the text-feature cache. The model stays loaded.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var (_, f, m, _) in _textCache) { f.Dispose(); m.Dispose(); }
        _textCache.Clear();
    }
}

/// <summary>
/// Detections of one image as tensors (CPU): boolean masks and mask probabilities at the original resolution, xyxy
/// pixel boxes and scores, in query order. Owned by whoever received it (internal: parity runner, tests). Only the kept
/// low-resolution mask logits are stored; the full-resolution masks are upsampled from them on demand (<see cref="Masks"/>,
/// <see cref="MaskProbabilities"/>) or streamed chunk by chunk into the public results (<see cref="ToDetections"/>), so
/// no [K, H, W] tensor exists unless an internal caller asks for one.
/// </summary>
internal sealed class DetectionTensors : IDisposable
{
    public int ImageIndex { get; }
    public int Height { get; }
    public int Width { get; }
    /// <summary>bool [K,H,W]: probability &gt; 0.5. Computed on first access (1 byte a pixel per detection).</summary>
    public Tensor Masks
    {
        get
        {
            if (_masks is null)
            {
                using var scope = NewDisposeScope();
                _masks = MaskUpsampler.Masks(_lowResLogits, Height, Width, _maskThreshold, _chunkElements).DetachFromDisposeScope();
            }
            return _masks;
        }
    }
    /// <summary>
    /// float [K,H,W]: sigmoid of the bilinearly upsampled mask logits (upstream's "masks_logits"). Computed on first
    /// access from the kept low-resolution logits (4 bytes a pixel per detection; the public results never need it).
    /// </summary>
    public Tensor MaskProbabilities
    {
        get
        {
            if (_probabilities is null)
            {
                using var scope = NewDisposeScope();
                _probabilities = MaskUpsampler.Probabilities(_lowResLogits, Height, Width, _chunkElements).DetachFromDisposeScope();
            }
            return _probabilities;
        }
    }
    private readonly Tensor _lowResLogits;
    private readonly double _maskThreshold;
    private readonly long _chunkElements;
    private Tensor? _masks;
    private Tensor? _probabilities;
    /// <summary>float [K,4]: xyxy in original pixels.</summary>
    public Tensor Boxes { get; }
    /// <summary>float [K].</summary>
    public Tensor Scores { get; }
    public long[] QueryIndices { get; }
    public int Count => (int)Scores.shape[0];

    // lowResLogits: [K,h,w] mask logits of the kept queries at the model's resolution; masks are
    // sigmoid(upsample(lowResLogits)) > maskThreshold, upsampled at most chunkElements float elements at a time.
    internal DetectionTensors(int imageIndex, int height, int width, Tensor lowResLogits, Tensor boxes, Tensor scores, long[] queryIndices,
        double maskThreshold, long chunkElements)
    {
        ImageIndex = imageIndex; Height = height; Width = width;
        _lowResLogits = lowResLogits.DetachFromDisposeScope();
        Boxes = boxes.DetachFromDisposeScope();
        Scores = scores.DetachFromDisposeScope();
        QueryIndices = queryIndices;
        _maskThreshold = maskThreshold;
        _chunkElements = chunkElements;
    }

    public float[] ScoreArray()
    {
        if (Count == 0) return []; // TorchSharp's data<T>().ToArray() throws on empty tensors
        using var scope = NewDisposeScope();
        return Scores.contiguous().data<float>().ToArray();
    }

    public float[][] BoxArray()
    {
        if (Count == 0) return [];
        float[] flat;
        using (var scope = NewDisposeScope()) flat = Boxes.contiguous().data<float>().ToArray();
        return Enumerable.Range(0, Count).Select(i => flat.AsSpan(i * 4, 4).ToArray()).ToArray();
    }

    public byte[] MaskBytes(int k)
    {
        if (k < 0 || k >= Count) throw new ArgumentOutOfRangeException(nameof(k), k, $"mask index must be in [0,{Count})");
        using var scope = NewDisposeScope();
        return Masks[k].to(ScalarType.Byte).contiguous().data<byte>().ToArray();
    }

    /// <summary>
    /// Copies into the public immutable form. The upsampler writes each mask's bytes 0/1 straight into the detection's
    /// own array (<see cref="MaskUpsampler.MasksInto"/>): H×W bytes per mask, or its COCO RLE when
    /// <paramref name="compactMasks"/> (decoded on first access of <see cref="BinaryMask.Data"/>). Peak: the results plus
    /// one chunk of float logits.
    /// </summary>
    public ImageDetections ToDetections(bool compactMasks = false)
    {
        var scores = ScoreArray();
        var boxes = BoxArray();
        var items = new Detection[Count];
        var masks = new BinaryMask[Count];
        int pixels = checked(Height * Width);
        void Take(long start, Tensor chunk)
        {
            // a bool tensor stores one byte 0/1 per element: its bytes are the mask bytes
            var all = chunk.bytes;
            for (int j = 0; j < chunk.shape[0]; j++)
            {
                var one = all.Slice(j * pixels, pixels);
                masks[start + j] = compactMasks ? BinaryMask.FromRleOf(one, Width, Height) : BinaryMask.FromZeroOne(one, Width, Height);
            }
        }
        if (Count > 0)
        {
            using var scope = NewDisposeScope();
            if (_masks is not null)
            {
                long perChunk = Math.Max(1, _chunkElements / pixels);
                for (long start = 0; start < Count; start += perChunk)
                {
                    using var chunkScope = NewDisposeScope();
                    Take(start, _masks.slice(0, start, Math.Min(Count, start + perChunk), 1).clone());
                }
            }
            else if (compactMasks)
            {
                // one reused array per mask of a chunk: each mask is RLE-encoded as soon as its bytes are written
                long perChunk = Math.Max(1, _chunkElements / pixels);
                var scratch = new byte[Math.Min(Count, perChunk)][];
                MaskUpsampler.MasksInto(_lowResLogits, Height, Width, _maskThreshold, _chunkElements,
                    k => scratch[k % scratch.Length] ??= GC.AllocateUninitializedArray<byte>(pixels),
                    (k, bytes) => masks[k] = BinaryMask.FromRleOf(bytes, Width, Height));
            }
            else
            {
                // the masks' own arrays are written in place (uninitialised: every byte is overwritten)
                MaskUpsampler.MasksInto(_lowResLogits, Height, Width, _maskThreshold, _chunkElements,
                    _ => GC.AllocateUninitializedArray<byte>(pixels),
                    (k, bytes) => masks[k] = BinaryMask.Own(bytes, Width, Height));
            }
        }
        for (int k = 0; k < Count; k++)
        {
            var b = boxes[k];
            items[k] = new Detection(k, (int)QueryIndices[k], scores[k], Box.FromXyxy(b[0], b[1], b[2], b[3]), masks[k]);
        }
        return new ImageDetections(ImageIndex, Width, Height, items);
    }

    public void Dispose()
    {
        _masks?.Dispose(); _lowResLogits.Dispose(); _probabilities?.Dispose(); Boxes.Dispose(); Scores.Dispose();
    }
}
