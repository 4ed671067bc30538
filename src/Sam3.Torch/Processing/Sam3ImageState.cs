using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Heads;
using static TorchSharp.torch;

namespace Sam3.Torch.Processing;

/// <summary>A box prompt in normalised cxcywh ([0,1]), positive or negative.</summary>
public readonly record struct BoxPrompt(float Cx, float Cy, float W, float H, bool Positive = true);

/// <summary>A point prompt in normalised xy ([0,1]), positive or negative.</summary>
public readonly record struct PointPrompt(float X, float Y, bool Positive = true);

/// <summary>
/// The state of one image (or a batch of images) set on a <see cref="Sam3Processor"/>: cached backbone features, the
/// prompts accumulated so far and the last results. Every later prompt reuses the features (the ViT is not rerun).
/// Dispose it to free the features; using it afterwards is a <see cref="Sam3StateException"/>.
/// </summary>
public sealed class Sam3ImageState : IDisposable
{
    private BackboneOutput? _backbone;
    private readonly List<BoxPrompt> _boxes = new();
    private readonly List<PointPrompt> _points = new();

    internal Sam3ImageState(BackboneOutput backbone, IReadOnlyList<(int Height, int Width)> originalSizes)
    {
        _backbone = backbone;
        OriginalSizes = originalSizes;
    }

    /// <summary>(height, width) of every image, in the order given.</summary>
    public IReadOnlyList<(int Height, int Width)> OriginalSizes { get; }
    public int BatchSize => OriginalSizes.Count;
    public bool IsDisposed => _backbone is null;

    /// <summary>The current text prompt (null when only geometric prompts were given).</summary>
    public string? TextPrompt { get; internal set; }
    public IReadOnlyList<BoxPrompt> Boxes => _boxes;
    public IReadOnlyList<PointPrompt> Points => _points;

    /// <summary>
    /// Results of the last prompt call, one entry per image (null before the first call and after a reset). The state
    /// owns them: the next prompt call, threshold change, reset or <see cref="Dispose"/> disposes them.
    /// </summary>
    public IReadOnlyList<Sam3Detections>? Results { get; private set; }

    /// <summary>Raw per-query outputs of the last call (all queries, before thresholding), for researchers.</summary>
    public GroundingOutput? RawOutput { get; private set; }

    internal BackboneOutput Backbone => _backbone ?? throw new Sam3StateException("this image state has been disposed");

    internal void AddBox(BoxPrompt box) => _boxes.Add(box);
    internal void AddPoint(PointPrompt point) => _points.Add(point);
    internal void RemoveLastBox() => _boxes.RemoveAt(_boxes.Count - 1);
    internal void RemoveLastPoint() => _points.RemoveAt(_points.Count - 1);

    internal void ClearPrompts()
    {
        TextPrompt = null;
        _boxes.Clear();
        _points.Clear();
        ClearResults();
    }

    internal void ClearResults()
    {
        if (Results is not null) foreach (var r in Results) r.Dispose();
        Results = null;
        RawOutput?.Dispose();
        RawOutput = null;
    }

    internal void SetRaw(GroundingOutput raw)
    {
        RawOutput?.Dispose();
        RawOutput = raw;
    }

    internal void SetResults(IReadOnlyList<Sam3Detections> results)
    {
        if (Results is not null) foreach (var r in Results) r.Dispose();
        Results = results;
    }

    public void Dispose()
    {
        ClearResults();
        _backbone?.Dispose();
        _backbone = null;
    }
}

/// <summary>
/// Detections of one image: boolean masks and mask probabilities at the original resolution, xyxy pixel boxes and
/// scores (sigmoid(logit)·sigmoid(presence)), in query order. Owns its tensors (CPU).
/// </summary>
public sealed class Sam3Detections : IDisposable
{
    public int ImageIndex { get; }
    public int Height { get; }
    public int Width { get; }
    /// <summary>bool [K,H,W]: probability &gt; 0.5.</summary>
    public Tensor Masks { get; }
    /// <summary>float [K,H,W]: sigmoid of the bilinearly upsampled mask logits (upstream's "masks_logits").</summary>
    public Tensor MaskProbabilities { get; }
    /// <summary>float [K,4]: xyxy in original pixels (not clamped to the image, as upstream).</summary>
    public Tensor Boxes { get; }
    /// <summary>float [K].</summary>
    public Tensor Scores { get; }
    /// <summary>Indices of the kept queries.</summary>
    public long[] QueryIndices { get; }
    public int Count => (int)Scores.shape[0];

    internal Sam3Detections(int imageIndex, int height, int width, Tensor masks, Tensor probabilities, Tensor boxes, Tensor scores, long[] queryIndices)
    {
        ImageIndex = imageIndex; Height = height; Width = width;
        Masks = masks.DetachFromDisposeScope();
        MaskProbabilities = probabilities.DetachFromDisposeScope();
        Boxes = boxes.DetachFromDisposeScope();
        Scores = scores.DetachFromDisposeScope();
        QueryIndices = queryIndices;
    }

    public float[] ScoreArray()
    {
        if (Count == 0) return []; // TorchSharp's data<T>().ToArray() throws on empty tensors
        using var scope = NewDisposeScope();
        return Scores.contiguous().data<float>().ToArray();
    }

    /// <summary>Boxes as K arrays of (x0, y0, x1, y1) pixels.</summary>
    public float[][] BoxArray()
    {
        if (Count == 0) return [];
        float[] flat;
        using (var scope = NewDisposeScope()) flat = Boxes.contiguous().data<float>().ToArray();
        return Enumerable.Range(0, Count).Select(i => flat.AsSpan(i * 4, 4).ToArray()).ToArray();
    }

    /// <summary>Mask k as a row-major byte array (0/1) of Height×Width.</summary>
    public byte[] MaskBytes(int k)
    {
        if (k < 0 || k >= Count) throw new ArgumentOutOfRangeException(nameof(k), k, $"mask index must be in [0,{Count})");
        using var scope = NewDisposeScope(); // the indexing / conversion temporaries are freed here
        return Masks[k].to(ScalarType.Byte).contiguous().data<byte>().ToArray();
    }

    public void Dispose()
    {
        Masks.Dispose(); MaskProbabilities.Dispose(); Boxes.Dispose(); Scores.Dispose();
    }
}
