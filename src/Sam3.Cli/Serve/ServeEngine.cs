using System.Diagnostics;
using System.Security.Cryptography;
using Sam3.Torch;
using Sam3.Torch.Visualization;

namespace Sam3.Cli.Serve;

/// <summary>One uploaded image: its decoded pixels, cached features and the prompts/results of its session.</summary>
internal sealed class ImageSession : IDisposable
{
    public ImageSession(string id, RgbImage image, Sam3ImageState state, double threshold)
    {
        Id = id; Image = image; State = state; Threshold = threshold;
    }

    public string Id { get; }
    public RgbImage Image { get; }
    public Sam3ImageState State { get; }
    public double Threshold { get; set; }
    /// <summary>Best low-res logits of the last interactive call (mask input of a refinement).</summary>
    public MaskLogits? LastLogits { get; set; }
    /// <summary>The last answer (without its overlay) and what draws its overlay.</summary>
    public ResultDto? LastResult { get; set; }
    public Func<RgbImage>? LastOverlay { get; set; }

    public void Dispose() => State.Dispose();
}

/// <summary>
/// The model behind <c>sam3 serve</c>: one detector and one interactive predictor shared by all requests, serialised by one
/// gate (the model's modules are not re-entrant), and a bounded LRU of image sessions (features computed once per upload).
/// Sessions are only touched while holding the gate, so an eviction never disposes a state another request is using.
/// </summary>
internal sealed class ServeEngine : IDisposable
{
    private readonly Sam3Model _model;
    private readonly Sam3ImagePredictor _detector;
    private readonly Sam3InteractivePredictor? _interactive;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly LinkedList<ImageSession> _lru = new(); // most recent first
    private readonly Dictionary<string, LinkedListNode<ImageSession>> _byId = new(StringComparer.Ordinal);
    private bool _disposed;

    public ServeEngine(Sam3Model model, ServeOptions options)
    {
        _model = model;
        Options = options;
        _detector = model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = options.DefaultThreshold });
        _interactive = model.HasInteractivePredictor ? model.CreateInteractivePredictor() : null;
    }

    public ServeOptions Options { get; }
    public Sam3Model Model => _model;
    public int ImageCount { get { lock (_lru) return _lru.Count; } }

    /// <summary>Runs <paramref name="work"/> alone on the model.</summary>
    public async Task<T> RunAsync<T>(Func<T> work, CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return work();
        }
        finally
        {
            _gate.Release();
        }
    }

    // ------------------------------------------------------------------ sessions (call under the gate)

    public ImageDto Upload(byte[] data, string? name)
    {
        var sw = Stopwatch.StartNew();
        var image = ImageLoader.Decode(data, new ImageLoadOptions { MaxSide = Options.MaxImageSide, MaxPixels = Options.MaxImagePixels },
                                       string.IsNullOrWhiteSpace(name) ? "upload" : Path.GetFileName(name));
        var state = _detector.SetImage(image);
        var session = new ImageSession(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8)), image, state, Options.DefaultThreshold);
        lock (_lru)
        {
            _byId[session.Id] = _lru.AddFirst(session);
            while (_lru.Count > Options.MaxImages)
            {
                var old = _lru.Last!.Value;
                _lru.RemoveLast();
                _byId.Remove(old.Id);
                old.Dispose();
            }
        }
        return Describe(session, sw.Elapsed.TotalMilliseconds);
    }

    public ImageSession Get(string id)
    {
        lock (_lru)
        {
            if (!_byId.TryGetValue(id, out var node))
                throw new ApiException(404, $"unknown image id '{Shorten(id)}' (expired from the cache of {Options.MaxImages} images, or never uploaded)");
            _lru.Remove(node);
            _lru.AddFirst(node);
            return node.Value;
        }
    }

    public void Delete(string id)
    {
        var s = Get(id);
        lock (_lru)
        {
            _lru.Remove(_byId[id]);
            _byId.Remove(id);
        }
        s.Dispose();
    }

    public static ImageDto Describe(ImageSession s, double elapsedMs = 0) =>
        new(s.Id, s.Image.Width, s.Image.Height, s.Threshold, PromptOf(s), elapsedMs);

    // ------------------------------------------------------------------ detector

    public ResultDto Text(ImageSession s, string? text, bool overlay)
    {
        if (string.IsNullOrWhiteSpace(text)) throw new ApiException(400, "text: give a non-empty text prompt");
        if (text.Length > Options.MaxTextLength) throw new ApiException(400, $"text: {text.Length} characters, at most {Options.MaxTextLength}");
        return Detect(s, overlay, () => _detector.SetTextPrompt(s.State, text.Trim()));
    }

    public ResultDto AddBox(ImageSession s, BoxIn box, bool overlay)
    {
        CheckDetectorRoom(s);
        CheckBox(box, s);
        return Detect(s, overlay, () => _detector.AddBox(s.State, new BoxPrompt(Box.FromXyxy(box.X0, box.Y0, box.X1, box.Y1), box.Positive)));
    }

    public ResultDto AddPoint(ImageSession s, PointIn p, bool overlay)
    {
        CheckDetectorRoom(s);
        CheckPoint(p, s, "point");
        return Detect(s, overlay, () => _detector.AddPoint(s.State, PointPrompt.Pixel(p.X, p.Y, p.Positive)));
    }

    public ResultDto SetThreshold(ImageSession s, double? threshold, bool overlay)
    {
        if (threshold is not { } t || !double.IsFinite(t) || t < 0 || t > 1) throw new ApiException(400, $"threshold: must be a number in [0, 1], got {threshold?.ToString() ?? "nothing"}");
        s.Threshold = t;
        if (s.State.TextPrompt is null && s.State.Boxes.Count == 0 && s.State.Points.Count == 0)
            return new ResultDto(s.Id, "detector", s.Image.Width, s.Image.Height, t, PromptOf(s), [], null, null, false, 0, null);
        return Detect(s, overlay, () => _detector.SetConfidenceThreshold(t, s.State) ?? _detector.Predict(s.State));
    }

    public ResultDto Reset(ImageSession s)
    {
        _detector.ResetPrompts(s.State);
        s.LastLogits = null;
        return Empty(s, "reset");
    }

    private ResultDto Empty(ImageSession s, string mode)
    {
        var r = new ResultDto(s.Id, mode, s.Image.Width, s.Image.Height, s.Threshold, PromptOf(s), [], null, null, false, 0, null);
        s.LastResult = r;
        s.LastOverlay = () => s.Image;
        return r;
    }

    private ResultDto Detect(ImageSession s, bool overlay, Func<IReadOnlyList<ImageDetections>> run)
    {
        var sw = Stopwatch.StartNew();
        _detector.SetConfidenceThreshold(s.Threshold); // one predictor serves every image: each session keeps its own threshold
        var detections = run()[0];
        var objects = detections.Select(d =>
        {
            var (x0, y0, x1, y1) = d.Box.ToXyxy();
            var rle = d.ToRle();
            return new ObjectDto(d.Index, d.Score, [x0, y0, x1, y1], rle.Area(), new RleDto(rle.Size, rle.Counts));
        }).ToList();
        double ms = sw.Elapsed.TotalMilliseconds;
        var state = s.State;
        var points = state.Points.ToArray();
        Func<RgbImage> draw = () =>
        {
            var img = Plot.Results(s.Image, detections);
            if (points.Length == 0) return img;
            var px = points.Select(p => p.ToPixels(s.Image.Width, s.Image.Height)).ToArray();
            return Visualizer.DrawPoints(img, px.SelectMany(p => new[] { p.X, p.Y }).ToArray(), px.Select(p => p.Label).ToArray());
        };
        return Finish(s, new ResultDto(s.Id, "detector", s.Image.Width, s.Image.Height, s.Threshold, PromptOf(s), objects, null, null, false, ms, null), draw, overlay);
    }

    private void CheckDetectorRoom(ImageSession s)
    {
        int n = s.State.Boxes.Count + s.State.Points.Count;
        if (n >= Options.MaxDetectorPrompts)
            throw new ApiException(400, $"this image already has {n} box/point prompts (at most {Options.MaxDetectorPrompts}); reset it first");
    }

    // ------------------------------------------------------------------ interactive

    public ResultDto Interactive(ImageSession s, InteractiveRequest request, bool overlay)
    {
        if (_interactive is null) throw new ApiException(409, "the model was loaded without the interactive heads");
        var points = request.Points ?? [];
        if (points.Count > Options.MaxPoints) throw new ApiException(400, $"points: {points.Count} given, at most {Options.MaxPoints}");
        for (int i = 0; i < points.Count; i++)
            CheckPoint(points[i] ?? throw new ApiException(400, $"points[{i}]: null"), s, $"points[{i}]");
        if (request.Box is { } b)
        {
            CheckBox(b, s);
            if (!b.Positive) throw new ApiException(400, "box: the interactive heads take one positive box");
        }
        bool refine = request.Refine && s.LastLogits is not null;
        if (points.Count == 0 && request.Box is null && !refine)
            throw new ApiException(400, "give at least one point or a box (or refine a previous interactive result)");
        bool multimask = request.Multimask ?? (points.Count == 1 && request.Box is null);
        var sw = Stopwatch.StartNew();
        var prediction = _interactive.Predict(s.State, new InteractivePrompt
        {
            Points = points.Select(p => PointPrompt.Pixel(p.X, p.Y, p.Positive)).ToArray(),
            Box = request.Box is { } bx ? Box.FromXyxy(bx.X0, bx.Y0, bx.X1, bx.Y1) : null,
            MaskInput = refine ? s.LastLogits : null,
            MultimaskOutput = multimask,
        });
        int best = prediction.BestIndex();
        var masks = prediction.Masks();
        var ious = prediction.IouScores();
        var objects = new List<ObjectDto>(masks.Count);
        for (int k = 0; k < masks.Count; k++)
        {
            var m = masks[k];
            var rle = CocoRle.Encode(m.Data, m.Height, m.Width);
            float[] box = m.Bounds() is var (x0, y0, x1, y1) ? [x0, y0, x1 + 1, y1 + 1] : [0, 0, 0, 0];
            objects.Add(new ObjectDto(k, ious[k], box, rle.Area(), new RleDto(rle.Size, rle.Counts)));
        }
        s.LastLogits = prediction.BestLowResLogits();
        double ms = sw.Elapsed.TotalMilliseconds;
        var bestMask = masks[best];
        float[] bestBox = objects[best].Box;
        float bestIou = ious[best];
        var boxIn = request.Box;
        Func<RgbImage> draw = () =>
        {
            var img = Plot.Results(s.Image, [bestMask], bestMask.Bounds() is null ? null : bestBox, [bestIou]);
            if (boxIn is not null) img = Visualizer.DrawBoxes(img, [boxIn.X0, boxIn.Y0, boxIn.X1, boxIn.Y1]);
            if (points.Count == 0) return img;
            return Visualizer.DrawPoints(img, points.SelectMany(p => new[] { p.X, p.Y }).ToArray(), points.Select(p => p.Positive ? 1 : 0).ToArray());
        };
        var prompt = new PromptDto(null, boxIn is null ? [] : [boxIn], points);
        var result = new ResultDto(s.Id, "interactive", s.Image.Width, s.Image.Height, s.Threshold, prompt, objects, best,
                                   prediction.ObjectScoreLogit(), refine, ms, null);
        return Finish(s, result, draw, overlay);
    }

    private static ResultDto Finish(ImageSession s, ResultDto result, Func<RgbImage> draw, bool overlay)
    {
        s.LastResult = result;
        s.LastOverlay = draw;
        return overlay ? result with { OverlayPng = Convert.ToBase64String(draw().EncodePng()) } : result;
    }

    public byte[] OverlayPng(ImageSession s) => (s.LastOverlay?.Invoke() ?? s.Image).EncodePng();

    // ------------------------------------------------------------------ validation

    private static void CheckPoint(PointIn p, ImageSession s, string what)
    {
        if (!float.IsFinite(p.X) || !float.IsFinite(p.Y) || p.X < 0 || p.Y < 0 || p.X > s.Image.Width || p.Y > s.Image.Height)
            throw new ApiException(400, $"{what}: ({p.X}, {p.Y}) is outside the {s.Image.Width}x{s.Image.Height} image");
    }

    private static void CheckBox(BoxIn b, ImageSession s)
    {
        float[] v = [b.X0, b.Y0, b.X1, b.Y1];
        if (v.Any(x => !float.IsFinite(x))) throw new ApiException(400, "box: coordinates must be finite numbers");
        if (b.X1 <= b.X0 || b.Y1 <= b.Y0) throw new ApiException(400, $"box: expected x0 < x1 and y0 < y1, got ({b.X0}, {b.Y0}, {b.X1}, {b.Y1})");
        if (b.X0 < 0 || b.Y0 < 0 || b.X1 > s.Image.Width || b.Y1 > s.Image.Height)
            throw new ApiException(400, $"box: ({b.X0}, {b.Y0}, {b.X1}, {b.Y1}) is outside the {s.Image.Width}x{s.Image.Height} image");
    }

    private static PromptDto PromptOf(ImageSession s)
    {
        int w = s.Image.Width, h = s.Image.Height;
        var boxes = s.State.Boxes.Select(b =>
        {
            var (x0, y0, x1, y1) = b.Box.ToPixels(w, h).ToXyxy();
            return new BoxIn(x0, y0, x1, y1, b.Positive);
        }).ToList();
        var points = s.State.Points.Select(p => p.ToPixels(w, h)).Select(p => new PointIn(p.X, p.Y, p.Positive)).ToList();
        return new PromptDto(s.State.TextPrompt, boxes, points);
    }

    private static string Shorten(string s) => s.Length <= 40 ? s : s[..40] + "…";

    public void Dispose()
    {
        _gate.Wait();
        try
        {
            if (_disposed) return;
            _disposed = true;
            lock (_lru)
            {
                foreach (var s in _lru) s.Dispose();
                _lru.Clear();
                _byId.Clear();
            }
            _detector.Dispose();
        }
        finally
        {
            _gate.Release();
        }
    }
}
