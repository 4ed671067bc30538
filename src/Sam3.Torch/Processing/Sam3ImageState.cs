using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Heads;
using static TorchSharp.torch;

namespace Sam3.Torch;

/// <summary>
/// One image (or a batch of images) set on a predictor: the cached backbone features, and for the detector the prompts
/// accumulated so far. Every later prompt reuses the features (the image encoder is not rerun); both predictors of the
/// same model accept it. Dispose it to free the features; using it afterwards is an <see cref="ObjectDisposedException"/>.
/// </summary>
public sealed class Sam3ImageState : IDisposable
{
    private BackboneOutput? _backbone;
    private readonly List<BoxPrompt> _boxes = new();
    private readonly List<PointPrompt> _points = new();

    internal Sam3ImageState(Sam3Model model, BackboneOutput backbone, IReadOnlyList<(int Height, int Width)> originalSizes)
    {
        Model = model;
        _backbone = backbone;
        OriginalSizes = originalSizes;
        ImageSizes = originalSizes.Select(s => (s.Width, s.Height)).ToList();
    }

    internal Sam3Model Model { get; }

    /// <summary>(width, height) of every image, in the order given.</summary>
    public IReadOnlyList<(int Width, int Height)> ImageSizes { get; }
    /// <summary>Number of images.</summary>
    public int ImageCount => OriginalSizes.Count;
    /// <summary>True after <see cref="Dispose"/>.</summary>
    public bool IsDisposed => _backbone is null;

    /// <summary>The current text prompt of the detector (null when none was given).</summary>
    public string? TextPrompt { get; internal set; }
    /// <summary>The detector's box prompts, as given.</summary>
    public IReadOnlyList<BoxPrompt> Boxes => _boxes;
    /// <summary>The detector's point prompts, as given.</summary>
    public IReadOnlyList<PointPrompt> Points => _points;

    /// <summary>(height, width) per image, the order the model code uses.</summary>
    internal IReadOnlyList<(int Height, int Width)> OriginalSizes { get; }
    internal int BatchSize => OriginalSizes.Count;

    /// <summary>Raw per-query outputs of the last detector call (all queries, before thresholding).</summary>
    internal GroundingOutput? RawOutput { get; private set; }

    internal BackboneOutput Backbone => _backbone ?? throw new ObjectDisposedException(nameof(Sam3ImageState));

    /// <summary>
    /// The SAM2-neck features of the interactive heads (levels 0/1 projected by conv_s0/conv_s1), null when the model has
    /// none. A state set with the neck deferred computes them here on first use, from the kept trunk output (then freed).
    /// </summary>
    internal BackboneOutput? Sam2Features
    {
        get
        {
            var backbone = Backbone;
            if (backbone.Sam2 is null && backbone.DeferredTrunk is { } trunk)
            {
                backbone.Sam2 = Sam3ImagePredictor.ComputeDeferredSam2(Model, trunk);
                backbone.DeferredTrunk = null;
                trunk.Dispose();
            }
            return backbone.Sam2;
        }
    }

    /// <summary>Whether the SAM2-neck features are computed (false while deferred, or when the model has none).</summary>
    internal bool HasSam2Features => Backbone.Sam2 is not null;

    internal void AddBox(BoxPrompt box) => _boxes.Add(box);
    internal void AddPoint(PointPrompt point) => _points.Add(point);
    internal void RemoveLastBox() => _boxes.RemoveAt(_boxes.Count - 1);
    internal void RemoveLastPoint() => _points.RemoveAt(_points.Count - 1);

    internal void ClearPrompts()
    {
        TextPrompt = null;
        _boxes.Clear();
        _points.Clear();
        SetRaw(null);
    }

    internal void SetRaw(GroundingOutput? raw)
    {
        RawOutput?.Dispose();
        RawOutput = raw;
    }

    /// <summary>Frees the image features and the last raw outputs.</summary>
    public void Dispose()
    {
        SetRaw(null);
        _backbone?.Dispose();
        _backbone = null;
    }
}
