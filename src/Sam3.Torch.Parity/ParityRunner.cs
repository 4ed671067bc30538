using System.Text.Json;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Loading;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Processing;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

/// <summary>Outcome of one scenario.</summary>
internal sealed record ScenarioReport(string Scenario, bool Passed, string? Failure, IReadOnlyList<ComparisonResult> Comparisons,
    IReadOnlyList<string> NotCompared, IReadOnlyList<(string Where, int Reference, int Ours)> Detections, double Seconds);

/// <summary>
/// Runs the reference scenarios of a fixture directory (the layout of shared/parity: <c>MODEL/config.json</c>,
/// <c>MODEL/model.safetensors</c>, <c>MODEL/&lt;x&gt;_&lt;name&gt;.json/.safetensors</c>, inputs resolved relative to the
/// fixture root) through this library's public API, comparing every tensor the scenario recorded. Everything —
/// configuration, images, prompts, boxes, points, thresholds — is read from the scenario JSON. A scenario kind this
/// runner does not implement fails with the reason; a recorded tensor that the run did not produce fails the scenario.
/// Shared by the test suite and <c>sam3 parity</c>.
/// </summary>
internal sealed partial class ParityRunner : IDisposable
{
    public string FixtureRoot { get; }
    public string ModelDirectory { get; }
    public Tolerance Tolerance { get; }
    public Sam3Config Config { get; }
    private ClipBpeTokenizer? _tokenizer;

    /// <param name="fixtureRoot">Folder holding <c>inputs/</c> and the model folder (e.g. shared/parity).</param>
    /// <param name="modelFolder">Model folder name below the root (default "tiny").</param>
    public ParityRunner(string fixtureRoot, string modelFolder = "tiny", Tolerance? tolerance = null)
    {
        FixtureRoot = Path.GetFullPath(fixtureRoot);
        ModelDirectory = Path.Combine(FixtureRoot, modelFolder);
        if (!Directory.Exists(ModelDirectory)) throw new Sam3Exception($"fixture model folder not found: {ModelDirectory}");
        Tolerance = tolerance ?? Tolerance.Default;
        Config = Sam3Config.Load(Path.Combine(ModelDirectory, "config.json"));
    }

    /// <summary>Scenario names (file names without extension) in the model folder, sorted.</summary>
    public IReadOnlyList<string> ScenarioNames =>
        Directory.GetFiles(ModelDirectory, "*.json")
            .Select(Path.GetFileNameWithoutExtension).OfType<string>()
            .Where(n => n is not ("config" or "model_manifest") && File.Exists(Path.Combine(ModelDirectory, n + ".safetensors")))
            .OrderBy(n => n, StringComparer.Ordinal).ToList();

    /// <summary>Scenarios whose name starts with any of <paramref name="prefixes"/> ("a" = a_image_text); all when empty.</summary>
    public IReadOnlyList<string> Select(IEnumerable<string> prefixes)
    {
        var list = prefixes.Where(p => !string.IsNullOrWhiteSpace(p)).ToList();
        if (list.Count == 0) return ScenarioNames;
        var result = new List<string>();
        foreach (var p in list)
        {
            var hits = ScenarioNames.Where(n => n == p || n.StartsWith(p + "_", StringComparison.Ordinal) || n.StartsWith(p, StringComparison.Ordinal)).ToList();
            if (hits.Count == 0) throw new Sam3Exception($"no scenario matches '{p}' in {ModelDirectory} (have: {string.Join(", ", ScenarioNames)})");
            result.AddRange(hits.Where(h => !result.Contains(h)));
        }
        return result;
    }

    private Sam3ImageModel Model => Api.Network;

    /// <summary>The model through the public API (loaded once, from the fixture's checkpoint and the shared vocabulary).</summary>
    private Sam3Model Api => _api ??= Sam3Model.FromNetwork(LoadModel(), Tokenizer);
    private Sam3Model? _api;

    private ClipBpeTokenizer Tokenizer => _tokenizer ??= ClipBpeTokenizer.FromBpeGz(Path.Combine(FixtureRoot, "inputs", "bpe_simple_vocab_16e6.txt.gz"),
        new ClipTokenizerOptions { Text = Config.Text });

    /// <summary>Runs one scenario. Never throws for a parity failure; a broken fixture is reported as a failure too.</summary>
    public ScenarioReport Run(string scenario)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var ctx = new Context(this);
        string? failure = null;
        try
        {
            using var fx = ScenarioFixture.Open(Path.Combine(ModelDirectory, scenario + ".json"), FixtureRoot);
            ctx.Fixture = fx;
            string kind = scenario.Contains('_') ? scenario[(scenario.IndexOf('_') + 1)..] : scenario;
            switch (kind)
            {
                case "image_text": RunImageText(ctx); break;
                case "image_batch_text": RunImageBatchText(ctx); break;
                case "geometric_prompts": RunGeometricPrompts(ctx); break;
                case "predict_inst": RunPredictInst(ctx); break;
                case "batched_api": RunBatchedApi(ctx); break;
                case "tracker_video" or "tracker_interactive": RunTracker(ctx, kind); break;
                case "video_predictor_text" or "video_predictor_interactive": RunVideoPredictor(ctx, kind); break;
                case "training_step": RunTrainingStep(ctx); break;
                default: throw new NotSupportedException($"scenario kind '{kind}' is not implemented by this runner yet");
            }
            ctx.CheckAllCompared();
        }
        catch (Exception e) when (e is Sam3Exception or NotSupportedException or IOException or JsonException or KeyNotFoundException or InvalidOperationException)
        {
            failure = e.Message;
        }
        bool passed = failure is null && ctx.Comparisons.All(c => c.Passed) && ctx.NotCompared.Count == 0
                      && ctx.Detections.All(d => d.Reference == d.Ours);
        if (failure is null && !passed)
        {
            var bad = ctx.Comparisons.Where(c => !c.Passed).Select(c => c.Name).ToList();
            failure = bad.Count > 0 ? $"{bad.Count} tensor(s) outside tolerance: {string.Join(", ", bad.Take(8))}"
                    : ctx.NotCompared.Count > 0 ? $"{ctx.NotCompared.Count} recorded tensor(s) not produced: {string.Join(", ", ctx.NotCompared.Take(8))}"
                    : "detection counts differ";
        }
        return new ScenarioReport(scenario, passed, failure, ctx.Comparisons, ctx.NotCompared, ctx.Detections, sw.Elapsed.TotalSeconds);
    }

    // ------------------------------------------------------------------ scenario kinds

    private static double[] Doubles(JsonElement e) => e.ValueKind == JsonValueKind.Array ? e.EnumerateArray().Select(x => x.GetDouble()).ToArray() : [e.GetDouble()];
    private static float[] Floats(JsonElement e) => e.EnumerateArray().Select(x => (float)x.GetDouble()).ToArray();

    private void CheckResolution(ScenarioFixture fx)
    {
        if (fx.Parameters.TryGetProperty("resolution", out var r) && r.GetInt32() != Config.ImageSize)
            throw new Sam3Exception($"scenario resolution {r.GetInt32()} differs from the configuration's image_size {Config.ImageSize}");
    }

    /// <summary>Decode + resize + normalise, comparing the recorded input tensors.</summary>
    private (List<RgbImage> images, Tensor input) Inputs(Context ctx, IReadOnlyList<string> paths)
    {
        var fx = ctx.Fixture!;
        var images = paths.Select(p => ImageLoader.Load(fx.ResolvePath(p))).ToList();
        for (int i = 0; i < images.Count; i++)
        {
            using var t = images[i].ToTensor(ImageTensorLayout.Hwc);
            ctx.Offer(images.Count == 1 ? "input.image_rgb_uint8" : $"input.image{i}_rgb_uint8", t);
        }
        var pre = new ImagePreprocessor(Config);
        using var pp = pre.PreprocessWithIntermediates(images);
        if (images.Count == 1) ctx.Offer("input.resized_uint8", pp.ResizedUint8[0]);
        return (images, pp.Input.clone().DetachFromDisposeScope());
    }

    /// <summary>Tokenizer and text encoder for one prompt, comparing text.* (with a name prefix).</summary>
    private void OfferText(Context ctx, string prompt, string prefix)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var (ids, pad) = Tokenizer.TokenizeToTensors([prompt]);
        ctx.Offer(prefix + "text.token_ids", ids);
        ctx.Offer(prefix + "text.transformer_out", Model.backbone.language_backbone.encoder.forward(ids));
        var enc = Model.backbone.ForwardText(ids, pad);
        ctx.Offer(prefix + "text.out.0", enc.LanguageMask);
        ctx.Offer(prefix + "text.out.1", enc.LanguageFeatures);
        ctx.Offer(prefix + "text.out.2", enc.LanguageEmbeds);
    }

    private void OfferOutputs(Context ctx, string prefix, DetectionTensors det, int referenceCount)
    {
        ctx.Detections.Add((prefix.Length > 0 ? prefix.TrimEnd('.') : "output", referenceCount, det.Count));
        ctx.Offer(prefix + "output.scores", det.Scores);
        ctx.Offer(prefix + "output.boxes", det.Boxes);
        ctx.Offer(prefix + "output.masks", det.Masks.unsqueeze(1));
        ctx.Offer(prefix + "output.masks_logits", det.MaskProbabilities.unsqueeze(1));
    }

    /// <summary>Sets the preprocessed input, recording the backbone tensors.</summary>
    private Sam3ImageState SetState(Context ctx, Tensor input, IReadOnlyList<RgbImage> images)
    {
        using var recorder = Api.Record(ctx.Offer);
        return Sam3ImagePredictor.SetPreprocessed(Api, input, images.Select(i => (i.Height, i.Width)).ToList());
    }

    private static int[] DetectionCounts(JsonElement p) => p.TryGetProperty("num_detections", out var n)
        ? (n.ValueKind == JsonValueKind.Array ? n.EnumerateArray().Select(x => x.GetInt32()).ToArray() : [n.GetInt32()]) : [];

    private void RunImageText(Context ctx)
    {
        var fx = ctx.Fixture!;
        var p = fx.Parameters;
        CheckResolution(fx);
        string prompt = p.GetProperty("prompt").GetString()!;
        double threshold = Doubles(p.GetProperty("confidence_threshold"))[0];
        var (images, input) = Inputs(ctx, [p.GetProperty("image").GetString()!]);
        using var _ = input;
        OfferText(ctx, prompt, "");
        using var processor = Api.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = threshold });
        using var state = SetState(ctx, input, images);
        IReadOnlyList<DetectionTensors> results;
        using (Api.Record(ctx.OfferGrounding(""))) results = processor.SetTextPromptCore(state, prompt);
        OfferOutputs(ctx, "", results[0], DetectionCounts(p).FirstOrDefault());
        foreach (var r in results) r.Dispose();
    }

    private void RunImageBatchText(Context ctx)
    {
        var fx = ctx.Fixture!;
        var p = fx.Parameters;
        CheckResolution(fx);
        string prompt = p.GetProperty("prompt").GetString()!;
        var thresholds = Doubles(p.GetProperty("confidence_threshold"));
        var counts = DetectionCounts(p);
        var paths = p.GetProperty("images").EnumerateArray().Select(x => x.GetString()!).ToList();
        var (images, input) = Inputs(ctx, paths);
        using var _ = input;
        OfferText(ctx, prompt, "");
        using var processor = Api.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = thresholds[0] });
        using var state = SetState(ctx, input, images);

        // The reference runs forward_grounding per image (img_ids=[i]); do the same for the module-boundary tensors...
        using (var scope = NewDisposeScope())
        using (var noGrad = torch.no_grad())
        {
            var (ids, pad) = Tokenizer.TokenizeToTensors([prompt]);
            var text = Model.backbone.ForwardText(ids, pad);
            for (int i = 0; i < images.Count; i++)
            {
                using var o = Model.ForwardGrounding(state.Backbone, text.LanguageFeatures, text.LanguageMask,
                    torch.zeros(1, dtype: ScalarType.Int64), torch.tensor(new long[] { i }), Modeling.Geometry.Prompt.Empty(1), ctx.OfferGrounding($"img{i}."));
            }
        }
        // ...and the batched API (one grounding pass over all images) for the post-processed outputs, per image threshold.
        foreach (var r in processor.SetTextPromptCore(state, prompt)) r.Dispose();
        for (int i = 0; i < images.Count; i++)
        {
            var results = processor.SetConfidenceThresholdCore(thresholds[Math.Min(i, thresholds.Length - 1)], state)!;
            OfferOutputs(ctx, $"img{i}.", results[i], i < counts.Length ? counts[i] : -1);
            foreach (var r in results) r.Dispose();
        }
    }

    private void RunGeometricPrompts(Context ctx)
    {
        var fx = ctx.Fixture!;
        var p = fx.Parameters;
        CheckResolution(fx);
        var thresholds = Doubles(p.GetProperty("confidence_threshold"));
        var counts = DetectionCounts(p);
        var (images, input) = Inputs(ctx, [p.GetProperty("image").GetString()!]);
        using var _ = input;
        using var processor = Api.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = thresholds[0] });
        using var state = SetState(ctx, input, images);
        // No text prompt: the processor encodes the dummy text, as upstream's add_geometric_prompt.
        OfferText(ctx, Sam3ImagePredictor.DummyTextPrompt, "step1.");
        var pos = Floats(p.GetProperty("pos_box"));
        processor.SetConfidenceThreshold(thresholds[0]);
        IReadOnlyList<DetectionTensors> r1, r2;
        using (Api.Record(ctx.OfferGrounding("step1."))) r1 = processor.AddBoxCore(state, BoxPrompt.NormalizedCxcywh(pos[0], pos[1], pos[2], pos[3], true));
        OfferOutputs(ctx, "step1.", r1[0], counts.ElementAtOrDefault(0));
        foreach (var r in r1) r.Dispose();
        var neg = Floats(p.GetProperty("neg_box"));
        processor.SetConfidenceThreshold(thresholds[Math.Min(1, thresholds.Length - 1)]);
        using (Api.Record(ctx.OfferGrounding("step2."))) r2 = processor.AddBoxCore(state, BoxPrompt.NormalizedCxcywh(neg[0], neg[1], neg[2], neg[3], false));
        OfferOutputs(ctx, "step2.", r2[0], counts.ElementAtOrDefault(1));
        foreach (var r in r2) r.Dispose();
        if (p.TryGetProperty("step3_points_xy_normalised", out var pts))
        {
            var labels = p.GetProperty("step3_point_labels").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            int k = 0;
            foreach (var pt in pts.EnumerateArray())
            {
                var xy = Floats(pt);
                state.AddPoint(PointPrompt.Normalized(xy[0], xy[1], labels[k++] == 1));
            }
            using (Api.Record(ctx.OfferGrounding("step3.")))
                foreach (var r in processor.PredictCore(state)) r.Dispose();
        }
    }

    /// <summary>Scenario d (SAM1-style interactive prediction): implemented in ParityRunner.PredictInst.cs.</summary>
    private partial void RunPredictInst(Context ctx);

    public void Dispose()
    {
        _api?.Dispose();
        _api = null;
        DisposeVideoModel();
    }

    // ------------------------------------------------------------------ bookkeeping

    private sealed partial class Context(ParityRunner runner)
    {
        public ScenarioFixture? Fixture;
        public List<ComparisonResult> Comparisons { get; } = new();
        public List<(string Where, int Reference, int Ours)> Detections { get; } = new();
        public List<string> NotCompared { get; } = new();
        private readonly HashSet<string> _compared = new();
        private readonly Dictionary<string, int> _repeat = new();

        /// <summary>Compares a produced tensor with the recorded one of the same name (repeated names get "#k").</summary>
        public void Offer(string name, Tensor actual)
        {
            var fx = Fixture!;
            int k = _repeat.TryGetValue(name, out var c) ? c + 1 : 1;
            _repeat[name] = k;
            string key = k == 1 ? name : $"{name}#{k}";
            if (!fx.Has(key) || _compared.Contains(key)) return;
            _compared.Add(key);
            runner.Capture?.Invoke(key, actual);
            using var scope = NewDisposeScope();
            var info = fx.Tensors.TryGetValue(key, out var i) ? i : null;
            Comparisons.Add(runner.Tolerance.Compare(key, actual, fx.Get(key), info?.ObservedMaxAbsDiff));
        }

        /// <summary>A probe that prefixes names (and resets the repeat counters of that prefix).</summary>
        public Action<string, Tensor> OfferGrounding(string prefix) => (n, t) => Offer(prefix + n, t);

        public void CheckAllCompared()
        {
            foreach (var name in Fixture!.Tensors.Keys)
                if (!_compared.Contains(name)) NotCompared.Add(name);
        }
    }
}
