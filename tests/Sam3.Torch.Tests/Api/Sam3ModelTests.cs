using System.Reflection;
using System.Text.Json;
using System.Text.RegularExpressions;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Visualization;

namespace Sam3.Torch.Tests.Api;

/// <summary>
/// The entry point (<see cref="Sam3Model"/>): loading a file or a hub-like folder (checkpoint, config.json and tokenizer
/// found without being named), one-line errors for what is missing, predictors sharing one set of weights, the
/// activation recorder, and the README's program run on the tiny model (expected values from fixture a).
/// </summary>
[TestFixture, Category("Fast")]
public class Sam3ModelTests
{
    private string _dir = null!;

    [OneTimeSetUp]
    public void MakeFolder()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sam3-model-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [OneTimeTearDown]
    public void RemoveFolder()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>A folder laid out as a download: model.safetensors + config.json (tiny) + the BPE vocabulary (symlinks).</summary>
    private string HubFolder(string name, bool withTokenizer = true, bool withConfig = true)
    {
        string dir = Path.Combine(_dir, name);
        Directory.CreateDirectory(dir);
        File.CreateSymbolicLink(Path.Combine(dir, "model.safetensors"), SharedData.Parity("tiny", "model.safetensors"));
        if (withConfig) File.CreateSymbolicLink(Path.Combine(dir, "config.json"), SharedData.Parity("tiny", "config.json"));
        if (withTokenizer)
            File.CreateSymbolicLink(Path.Combine(dir, "bpe_simple_vocab_16e6.txt.gz"), SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"));
        return dir;
    }

    [Test]
    public void LoadsAFolderFindingCheckpointConfigAndTokenizer()
    {
        string dir = HubFolder("complete");
        using var model = Sam3Model.Load(dir);
        Assert.That(model.CheckpointPath, Is.EqualTo(Path.Combine(dir, "model.safetensors")));
        Assert.That(model.TokenizerPath, Is.EqualTo(Path.Combine(dir, "bpe_simple_vocab_16e6.txt.gz")));
        Assert.That(model.Config.SameArchitecture(Sam3Config.Tiny), "config.json beside the checkpoint is used");
        Assert.That(model.HasInteractivePredictor);
        // tiny/config.json's num_parameters: the image model with the interactive heads, as built by the reference
        using var cfg = JsonDocument.Parse(File.ReadAllText(SharedData.Parity("tiny", "config.json")));
        Assert.That(model.ParameterCount, Is.EqualTo(cfg.RootElement.GetProperty("num_parameters").GetInt64()));
    }

    [Test]
    public void LoadsAHuggingFaceSnapshotFolder()
    {
        // tiny_hf: model.safetensors in the transformers layout, its config.json, vocab.json + merges.txt
        using var model = Sam3Model.Load(SharedData.Parity("tiny_hf"));
        Assert.That(model.Config.SameArchitecture(Sam3Config.Tiny), "the transformers config.json describes the tiny architecture");
        Assert.That(model.TokenizerPath, Does.EndWith("vocab.json"));
        Assert.That(model.LoadNotes, Has.Some.Contains("point"), "the absent detector point projections are reported");
        Assert.That(model.LoadNotes, Has.Some.Contains("original value is kept"), "the ViT layer-norm eps difference is reported once");
        using var predictor = model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = 0.0 });
        using var state = predictor.SetImage(SharedData.Parity("inputs", "test_image.jpg"));
        Assert.That(predictor.SetTextPrompt(state, "person")[0].Count, Is.EqualTo(Sam3Config.Tiny.Decoder.NumQueries));
        var e = Assert.Throws<Sam3PromptException>(() => predictor.AddPoint(state, PointPrompt.Normalized(0.5f, 0.5f)))!;
        Assert.That(e.Message, Does.Contain("point"));
    }

    [Test]
    public void MissingTokenizerIsOneLineNamingWhatWasLookedFor()
    {
        string dir = HubFolder("no-tokenizer", withTokenizer: false);
        var e = Assert.Throws<Sam3VocabularyException>(() => Sam3Model.Load(dir))!;
        Assert.That(e.Message, Does.Not.Contain("\n"));
        Assert.That(e.Message, Does.Contain("bpe_simple_vocab_16e6.txt.gz").And.Contain("vocab.json").And.Contain(dir));
        // an explicit tokenizer path works
        using var model = Sam3Model.Load(dir, new Sam3ModelOptions { TokenizerPath = SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz") });
        Assert.That(model.Config.SameArchitecture(Sam3Config.Tiny));
    }

    [Test]
    public void MissingCheckpointAndEmptyPathAreClearErrors()
    {
        string empty = Path.Combine(_dir, "empty");
        Directory.CreateDirectory(empty);
        var e = Assert.Throws<Sam3CheckpointException>(() => Sam3Model.Load(empty))!;
        Assert.That(e.Message, Does.Contain("no checkpoint in").And.Contain("sam3.pt"));
        Assert.That(Assert.Throws<Sam3CheckpointException>(() => Sam3Model.Load(Path.Combine(_dir, "nowhere")))!.Message, Does.Contain("not found"));
        Assert.Throws<ArgumentException>(() => Sam3Model.Load(""));
        Assert.Throws<ArgumentNullException>(() => Sam3Model.Load(null!));
        Assert.Throws<ArgumentException>(() => Sam3Model.Load(HubFolder("bad-device"), new Sam3ModelOptions { Device = "toaster" }));
    }

    [Test]
    public void WithoutConfigTheReleasedArchitectureIsAssumedAndTheMismatchNamesKeys()
    {
        string dir = HubFolder("no-config", withConfig: false);
        var e = Assert.Throws<Sam3CheckpointMismatchException>(() => Sam3Model.Load(dir))!;
        Assert.That(e.WrongShapeKeys, Is.Not.Empty, "tiny weights do not fit the full architecture");
    }

    [Test]
    public async Task LoadAsyncReportsProgressAndHonoursCancellation()
    {
        string dir = HubFolder("async");
        var stages = new List<LoadProgress>();
        using (var model = await Sam3Model.LoadAsync(dir, progress: new SyncProgress(stages.Add)))
            Assert.That(model.Config.SameArchitecture(Sam3Config.Tiny));
        Assert.That(stages.Select(s => s.Stage), Does.Contain("reading checkpoint"));
        var last = stages.Last(s => s.Stage == "reading checkpoint");
        Assert.That(last.Done, Is.EqualTo(last.Total), "every tensor reported");

        using var cts = new CancellationTokenSource();
        int seen = 0;
        var cancelling = new SyncProgress(p => { if (p.Stage == "reading checkpoint" && ++seen == 10) cts.Cancel(); });
        Assert.That(async () => await Sam3Model.LoadAsync(dir, progress: cancelling, cancellationToken: cts.Token), Throws.InstanceOf<OperationCanceledException>());
    }

    private sealed class SyncProgress(Action<LoadProgress> report) : IProgress<LoadProgress>
    {
        public void Report(LoadProgress value) => report(value);
    }

    [Test]
    public void PredictorsShareTheWeightsAndAStateWorksWithBoth()
    {
        using var model = Sam3Model.Load(HubFolder("shared"));
        using var detector = model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = 0.0 });
        var interactive = model.CreateInteractivePredictor();
        var image = ImageLoader.Load(SharedData.Parity("inputs", "test_image.jpg"));
        using var state = detector.SetImage(image);
        var dets = detector.SetTextPrompt(state, "person")[0];
        Assert.That(dets.Count, Is.EqualTo(Sam3Config.Tiny.Decoder.NumQueries), "threshold 0 keeps every query");
        var p = interactive.Predict(state, InteractivePrompt.FromPoints(PointPrompt.Pixel(640, 360)));
        Assert.That((p.Width, p.Height, p.MaskCount), Is.EqualTo((image.Width, image.Height, 3)));

        // a state of one model is refused by another model's predictors
        using var other = Sam3Model.Load(HubFolder("other"));
        using var otherDetector = other.CreateImagePredictor();
        Assert.Throws<ArgumentException>(() => otherDetector.SetTextPrompt(state, "person"));
        Assert.Throws<ArgumentException>(() => other.CreateInteractivePredictor().Predict(state, InteractivePrompt.FromPoints(PointPrompt.Pixel(1, 1))));

        // disposing the model makes its predictors refuse work
        model.Dispose();
        Assert.Throws<ObjectDisposedException>(() => detector.SetImage(image));
        Assert.Throws<ObjectDisposedException>(() => model.CreateImagePredictor());
    }

    [Test]
    public void RecorderCapturesNamedIntermediatesOfThisFlowOnly()
    {
        using var model = Sam3Model.Load(HubFolder("recorder"));
        using var predictor = model.CreateImagePredictor();
        var image = ImageLoader.Load(SharedData.Parity("inputs", "test_image.jpg"));
        Sam3ImageState state;
        using (var rec = model.Record(n => n.StartsWith("grounding.out.", StringComparison.Ordinal) || n == "image_input"))
        {
            state = predictor.SetImage(image);
            predictor.SetTextPrompt(state, "person");
            Assert.That(rec.Names, Does.Contain("image_input").And.Contain("grounding.out.pred_logits"));
            Assert.That(rec.Names.All(n => n == "image_input" || n.StartsWith("grounding.out.", StringComparison.Ordinal)), "the filter applies");
            long q = Sam3Config.Tiny.Decoder.NumQueries;
            Assert.That(rec["grounding.out.pred_logits"].shape, Is.EqualTo(new long[] { 1, q, 1 }));
            Assert.That(rec["image_input"].shape, Is.EqualTo(new long[] { 1, 3, Sam3Config.Tiny.ImageSize, Sam3Config.Tiny.ImageSize }));
            predictor.SetTextPrompt(state, "car");
            Assert.That(rec.Names, Does.Contain("grounding.out.pred_logits#2"), "a repeated name gets a suffix");
            // calls of an unrelated flow (another request on a shared model) are not recorded by this recorder
            int before = rec.Names.Count;
            Task other;
            using (ExecutionContext.SuppressFlow())
                other = Task.Run(() => { using var p2 = model.CreateImagePredictor(); p2.SetTextPrompt(state, "dog"); });
            other.Wait();
            Assert.That(rec.Names, Has.Count.EqualTo(before));
        }
        using (state)
        {
            // after disposal nothing is recorded and no cost is paid
            using var rec2 = model.Record();
            rec2.Dispose();
            predictor.SetTextPrompt(state, "person");
            Assert.That(rec2.Names, Is.Empty);
        }
    }

    [Test]
    public void CliSegmentTakesAFolderWithoutVocab()
    {
        string dir = HubFolder("cli");
        string outDir = Path.Combine(_dir, "cli-out");
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Sam3.Cli.Program.Run(["segment", "--checkpoint", dir, "--image", SharedData.Parity("inputs", "test_image.jpg"),
            "--text", "person", "--threshold", "0.1", "--out", outDir], stdout, stderr);
        Assert.That(code, Is.EqualTo(0), stderr.ToString());
        Assert.That(File.Exists(Path.Combine(outDir, "test_image.json")) && File.Exists(Path.Combine(outDir, "test_image.png")));
        Assert.That(Directory.GetFiles(outDir, "*.tmp"), Is.Empty, "no temporary file left");

        // a folder without a tokenizer: one line naming what was looked for, exit code 1
        string bare = HubFolder("cli-bare", withTokenizer: false);
        stderr = new StringWriter();
        code = Sam3.Cli.Program.Run(["segment", "--checkpoint", bare, "--image", SharedData.Parity("inputs", "test_image.jpg"),
            "--text", "person", "--out", Path.Combine(_dir, "cli-out-2")], new StringWriter(), stderr);
        Assert.That(code, Is.EqualTo(1));
        var lines = stderr.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(1));
        Assert.That(lines[0], Does.StartWith("sam3: no tokenizer in ").And.Contain("bpe_simple_vocab_16e6.txt.gz"));
    }

    // ------------------------------------------------------------------ README program

    private static string RepoFile(params string[] parts) => Path.Combine([SharedData.RepoRoot, .. parts]);

    [Test]
    public void ReadmeProgramIsTheCompiledExample()
    {
        string readme = File.ReadAllText(RepoFile("README.md"));
        var m = Regex.Match(readme, @"## Use it from C#.*?```csharp\n(.*?)```", RegexOptions.Singleline);
        Assert.That(m.Success, "README has a 'Use it from C#' section with a csharp block");
        string program = File.ReadAllText(RepoFile("examples", "Quickstart", "Program.cs"));
        Assert.That(m.Groups[1].Value.ReplaceLineEndings("\n"), Is.EqualTo(program.ReplaceLineEndings("\n")));
        Assert.That(program.Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.LessThanOrEqualTo(16), "a short program");
    }

    [Test]
    public void ReadmeProgramRunsOnATinyModelFolder()
    {
        // fixture a: test_image.jpg, its prompt and threshold, and the scores the reference kept
        using var a = JsonDocument.Parse(File.ReadAllText(SharedData.Parity("tiny", "a_image_text.json")));
        var p = a.RootElement.GetProperty("parameters");
        string prompt = p.GetProperty("prompt").GetString()!;
        double threshold = p.GetProperty("confidence_threshold")[0].GetDouble();
        var scores = p.GetProperty("all_kept_scores")[0].EnumerateArray().Select(x => x.GetDouble()).ToArray();
        string image = SharedData.Parity("inputs", "test_image.jpg");
        string overlay = Path.Combine(_dir, "quickstart.png");

        var entry = Assembly.Load("Quickstart").EntryPoint!;
        var output = new StringWriter();
        var previous = Console.Out;
        Console.SetOut(output);
        try
        {
            entry.Invoke(null, [new[] { HubFolder("readme"), image, prompt, overlay, threshold.ToString("R", System.Globalization.CultureInfo.InvariantCulture) }]);
        }
        finally
        {
            Console.SetOut(previous);
        }
        var lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToArray();
        TestContext.Out.WriteLine(string.Join("\n", lines));
        Assert.That(lines[^1], Is.EqualTo($"{scores.Length} x '{prompt}' -> {overlay}"));
        for (int k = 0; k < scores.Length; k++)
            Assert.That(lines[k], Does.StartWith(scores[k].ToString("F2", System.Globalization.CultureInfo.InvariantCulture) + " xyxy("));
        var written = ImageLoader.Load(overlay);
        var input = ImageLoader.Load(image);
        Assert.That((written.Width, written.Height), Is.EqualTo((input.Width, input.Height)));
        Assert.That(written.Data.AsSpan().SequenceEqual(input.Data), Is.False, "masks were drawn");
    }
}
