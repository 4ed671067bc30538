using System.Diagnostics;
using System.Text.Json;
using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// <c>sam3 label</c> on the shared images with the tiny model: COCO results format, 2 shards merged = one run (byte for
/// byte), a run killed halfway (a child process that SIGKILLs itself between writing an image and journaling it) and
/// re-run = one uninterrupted run, a queries file checked against scenario g's detection counts, and the errors that name
/// a bad query before the model loads.
/// </summary>
[TestFixture, Category("Slow")]
public class LabelCommandTests
{
    private string _dir = null!;
    private string _images = null!;
    private byte[] _reference = null!, _referenceCategories = null!;

    private static string TinyModel => SharedData.Parity("tiny", "model.safetensors");
    private static string Vocab => SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz");

    private string[] Common(string outPath, params string[] extra) =>
    [
        "label", "--checkpoint", TinyModel, "--config", "tiny", "--vocab", Vocab, "--images", _images, "--prompts", "car,tire",
        "--threshold", "0.2", "--max-dets", "5", "--out", outPath, .. extra,
    ];

    private sealed record Result(int ExitCode, string Out, string Err)
    {
        public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Out}\n--- stderr\n{Err}";
    }

    private static Result Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(args, o, e);
        return new Result(code, o.ToString(), e.ToString());
    }

    [OneTimeSetUp]
    public void SetUp()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sam3-label-tests-" + Guid.NewGuid().ToString("N"));
        _images = Path.Combine(_dir, "images");
        Directory.CreateDirectory(_images);
        foreach (var name in new[] { "truck.jpg", "groceries.jpg", "test_image.jpg" })
            File.Copy(SharedData.Parity("inputs", name), Path.Combine(_images, name));
        string reference = Path.Combine(_dir, "reference", "results.json");
        var r = Run(Common(reference));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        _reference = File.ReadAllBytes(reference);
        _referenceCategories = File.ReadAllBytes(Path.Combine(_dir, "reference", "results.categories.json"));
        Assert.That(Directory.Exists(reference + ".work"), Is.False, "the work folder is removed when the run completes");
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    [Test]
    public void ResultsAreCocoResultsWithACategoriesFile()
    {
        using var cats = JsonDocument.Parse(_referenceCategories);
        var categories = cats.RootElement.GetProperty("categories").EnumerateArray()
            .Select(c => (c.GetProperty("id").GetInt32(), c.GetProperty("name").GetString())).ToList();
        Assert.That(categories, Is.EqualTo(new[] { (1, "car"), (2, "tire") }));
        var images = cats.RootElement.GetProperty("images").EnumerateArray().ToDictionary(
            i => i.GetProperty("id").GetInt64(), i => (File: i.GetProperty("file_name").GetString(), W: i.GetProperty("width").GetInt32(), H: i.GetProperty("height").GetInt32()));
        // sorted file names, ids 1.. in that order; sizes of the decoded files
        Assert.That(images.Keys, Is.EqualTo(new long[] { 1, 2, 3 }));
        Assert.That(images.Values.Select(v => v.File), Is.EqualTo(new[] { "groceries.jpg", "test_image.jpg", "truck.jpg" }));
        Assert.That(images[1].W, Is.EqualTo(800));
        Assert.That(images[1].H, Is.EqualTo(534));
        Assert.That(images[3].W, Is.EqualTo(1800));
        Assert.That(images[3].H, Is.EqualTo(1200));

        using var results = JsonDocument.Parse(_reference);
        var list = results.RootElement.EnumerateArray().ToList();
        Assert.That(list, Is.Not.Empty);
        long previous = 0;
        foreach (var d in list)
        {
            Assert.That(d.EnumerateObject().Select(p => p.Name), Is.EqualTo(new[] { "image_id", "category_id", "segmentation", "bbox", "score" }));
            long id = d.GetProperty("image_id").GetInt64();
            Assert.That(id, Is.GreaterThanOrEqualTo(previous), "ordered by image id");
            previous = id;
            Assert.That(d.GetProperty("category_id").GetInt32(), Is.AnyOf(1, 2));
            Assert.That(d.GetProperty("score").GetDouble(), Is.GreaterThan(0.2).And.LessThanOrEqualTo(1));
            var size = d.GetProperty("segmentation").GetProperty("size").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            Assert.That(size, Is.EqualTo(new[] { images[id].H, images[id].W }));
            var rle = Sam3.Torch.CocoRle.FromJson(d.GetProperty("segmentation").GetRawText());
            Assert.That(rle.Area(), Is.GreaterThanOrEqualTo(0));
            var bbox = d.GetProperty("bbox").EnumerateArray().Select(x => x.GetDouble()).ToArray();
            Assert.That(bbox, Has.Length.EqualTo(4));
            Assert.That(bbox[2], Is.GreaterThan(0));
            Assert.That(bbox[3], Is.GreaterThan(0));
        }
        Assert.That(list.GroupBy(d => d.GetProperty("image_id").GetInt64()).Max(g => g.Count()), Is.LessThanOrEqualTo(5), "--max-dets 5 per image");
    }

    [Test]
    public void TwoShardsMergedEqualOneRun()
    {
        string s0 = Path.Combine(_dir, "shards", "results.shard-0.json"), s1 = Path.Combine(_dir, "shards", "results.shard-1.json");
        var r0 = Run(Common(s0, "--shard", "0/2"));
        Assert.That(r0.ExitCode, Is.EqualTo(0), r0.ToString());
        var r1 = Run(Common(s1, "--shard", "1/2"));
        Assert.That(r1.ExitCode, Is.EqualTo(0), r1.ToString());
        // positions 0 and 2 of the sorted list in shard 0, position 1 in shard 1
        using (var c0 = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(_dir, "shards", "results.shard-0.categories.json"))))
            Assert.That(c0.RootElement.GetProperty("images").EnumerateArray().Select(i => i.GetProperty("id").GetInt64()), Is.EqualTo(new long[] { 1, 3 }));

        string merged = Path.Combine(_dir, "shards", "results.json");
        var missing = Run("label", "merge", "--out", merged, s1);
        Assert.That(missing.ExitCode, Is.EqualTo(1));
        Assert.That(missing.Err, Does.Contain("shard(s) 0/2 missing"));
        var twice = Run("label", "merge", "--out", merged, s0, s0);
        Assert.That(twice.ExitCode, Is.EqualTo(1));
        Assert.That(twice.Err, Does.Contain("given twice"));

        var m = Run("label", "merge", "--out", merged, s1, s0);
        Assert.That(m.ExitCode, Is.EqualTo(0), m.ToString());
        Assert.That(File.ReadAllBytes(merged), Is.EqualTo(_reference), "merged shards = one unsharded run");
        Assert.That(File.ReadAllBytes(Path.Combine(_dir, "shards", "results.categories.json")), Is.EqualTo(_referenceCategories));
    }

    [Test]
    public void KilledRunResumesWithNoDuplicateOrMissingImage()
    {
        string outPath = Path.Combine(_dir, "killed", "results.json");
        string work = outPath + ".work";
        // the child writes image 1 (journaled), writes image 2 and is SIGKILLed before journaling it
        var child = RunExecutable(new Dictionary<string, string> { [LabelCommand.KillAfterImagesVariable] = "2" }, Common(outPath));
        Assert.That(child.ExitCode, Is.Not.EqualTo(0), child.ToString());
        Assert.That(File.Exists(outPath), Is.False, "no results file from a killed run");
        Assert.That(File.ReadAllLines(Path.Combine(work, "journal.jsonl")), Has.Length.EqualTo(1));
        Assert.That(Directory.GetFiles(Path.Combine(work, "images")).Select(Path.GetFileName).Order(), Is.EqualTo(new[] { "1.json", "2.json" }));
        // and a journal line torn by the kill (no newline) must not break the resume...
        File.AppendAllText(Path.Combine(work, "journal.jsonl"), "{\"image_id\":2,\"detec");
        // ...nor a second kill after the resume has appended behind it (the child redoes image 2, journals it, then dies
        // on image 3 before journaling it)
        var second = RunExecutable(new Dictionary<string, string> { [LabelCommand.KillAfterImagesVariable] = "2" }, Common(outPath));
        Assert.That(second.ExitCode, Is.Not.EqualTo(0), second.ToString());
        Assert.That(second.Err, Does.Contain("resuming: 1 of 3 image(s) already labelled"));
        Assert.That(File.Exists(outPath), Is.False);

        var resumed = Run(Common(outPath));
        Assert.That(resumed.ExitCode, Is.EqualTo(0), resumed.ToString());
        Assert.That(resumed.Err, Does.Contain("resuming: 2 of 3 image(s) already labelled"));
        Assert.That(File.ReadAllBytes(outPath), Is.EqualTo(_reference), "resumed run = uninterrupted run");
        using var cats = JsonDocument.Parse(File.ReadAllBytes(LabelCommand.CategoriesPath(outPath)));
        Assert.That(cats.RootElement.GetProperty("images").EnumerateArray().Select(i => i.GetProperty("id").GetInt64()), Is.EqualTo(new long[] { 1, 2, 3 }));
        Assert.That(Directory.Exists(work), Is.False);

        // a finished run is not overwritten without --force
        var again = Run(Common(outPath));
        Assert.That(again.ExitCode, Is.EqualTo(2), again.ToString());
        Assert.That(again.Err, Does.Contain("exists (use --force"));
    }

    [Test]
    public void QueriesFileMatchesScenarioGsDetectionCounts()
    {
        // scenario g's box-only query (7 detections above its threshold) and its text hint with a positive and a negative
        // box (1 detection), here as two lines of a queries file on one image
        using var g = JsonDocument.Parse(File.ReadAllText(SharedData.Parity("tiny", "g_batched_api.json")));
        var p = g.RootElement.GetProperty("parameters");
        double threshold = p.GetProperty("detection_threshold").GetDouble();
        var lines = new List<string>();
        var expected = new Dictionary<int, int>();
        foreach (var q in p.GetProperty("queries").EnumerateArray().Where(q => q.GetProperty("input_boxes_xyxy_px").ValueKind == JsonValueKind.Array))
        {
            lines.Add(JsonSerializer.Serialize(new Dictionary<string, object?>
            {
                ["image"] = "../images/groceries.jpg",
                ["text"] = q.GetProperty("query_text").GetString() == "visual" ? null : q.GetProperty("query_text").GetString(),
                ["boxes"] = JsonSerializer.Deserialize<float[][]>(q.GetProperty("input_boxes_xyxy_px").GetRawText()),
                ["box_labels"] = JsonSerializer.Deserialize<bool[]>(q.GetProperty("input_box_labels").GetRawText()),
            }));
            expected[lines.Count] = q.GetProperty("num_detections").GetProperty("all").GetInt32();
        }
        Assert.That(lines, Has.Count.EqualTo(2));
        string dir = Path.Combine(_dir, "queries");
        Directory.CreateDirectory(dir);
        string file = Path.Combine(dir, "queries.jsonl");
        File.WriteAllLines(file, lines);
        string outPath = Path.Combine(dir, "results.json");
        var r = Run("label", "--checkpoint", TinyModel, "--config", "tiny", "--vocab", Vocab, "--queries", file,
            "--threshold", threshold.ToString(System.Globalization.CultureInfo.InvariantCulture), "--out", outPath);
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        using var cats = JsonDocument.Parse(File.ReadAllBytes(LabelCommand.CategoriesPath(outPath)));
        Assert.That(cats.RootElement.GetProperty("categories").EnumerateArray().Select(c => c.GetProperty("name").GetString()),
            Is.EqualTo(new[] { "visual", "grocery bag" }));
        using var res = JsonDocument.Parse(File.ReadAllBytes(outPath));
        var perCategory = res.RootElement.EnumerateArray().GroupBy(d => d.GetProperty("category_id").GetInt32()).ToDictionary(x => x.Key, x => x.Count());
        Assert.That(perCategory, Is.EquivalentTo(expected));
    }

    // ---------------------------------------------------------------- bad input, before the model loads

    private Result RunQueries(params string[] jsonLines)
    {
        string dir = Path.Combine(_dir, "bad-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        string file = Path.Combine(dir, "q.jsonl");
        File.WriteAllLines(file, jsonLines);
        return Run("label", "--checkpoint", TinyModel, "--config", "tiny", "--vocab", Vocab, "--queries", file, "--out", Path.Combine(dir, "r.json"));
    }

    private static void AssertNamed(Result r, params string[] fragments)
    {
        Assert.That(r.ExitCode, Is.EqualTo(1), r.ToString());
        foreach (var f in fragments) Assert.That(r.Err, Does.Contain(f));
        Assert.That(r.Err, Does.Not.Contain("loaded"), "the model is not loaded for a bad query");
    }

    private string Img(string name) => Path.Combine(_images, name).Replace("\\", "/");

    [Test]
    public void QueryForAnImageThatDoesNotExistIsNamed() =>
        AssertNamed(RunQueries($"{{\"image\": \"{Img("truck.jpg")}\", \"text\": \"car\"}}", $"{{\"image\": \"{Img("nope.jpg")}\", \"text\": \"car\"}}"),
            "q.jsonl line 2", "image does not exist", "nope.jpg");

    [Test]
    public void BoxOutsideTheImageIsNamed() =>
        AssertNamed(RunQueries($"{{\"image\": \"{Img("groceries.jpg")}\", \"boxes\": [[700, 10, 801, 20]]}}"),
            "q.jsonl line 1", "outside the 800x534 image");

    [Test]
    public void EmptyTextWithoutBoxesIsNamed() =>
        AssertNamed(RunQueries($"{{\"image\": \"{Img("groceries.jpg")}\", \"text\": \"cat\"}}", "", $"{{\"image\": \"{Img("groceries.jpg")}\", \"text\": \" \"}}"),
            "q.jsonl line 3", "empty query text and no boxes");

    [Test]
    public void DuplicateIdsAreNamed() =>
        AssertNamed(RunQueries($"{{\"image\": \"{Img("groceries.jpg")}\", \"text\": \"cat\", \"id\": 5}}", $"{{\"image\": \"{Img("truck.jpg")}\", \"text\": \"dog\", \"id\": 5}}"),
            "q.jsonl line 2", "query id 5 repeats the id of line 1");

    [TestCase("2/2")]
    [TestCase("-1/2")]
    [TestCase("1")]
    [TestCase("0/0")]
    public void BadShardIsAUsageError(string shard)
    {
        var r = Run(Common(Path.Combine(_dir, "x.json"), "--shard", shard));
        Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
        Assert.That(r.Err, Does.Contain("--shard expects i/N"));
    }

    [Test]
    public void AWorkFolderOfAnotherRunIsNotMixedIn()
    {
        string outPath = Path.Combine(_dir, "other", "results.json");
        Directory.CreateDirectory(outPath + ".work");
        File.WriteAllText(Path.Combine(outPath + ".work", "run.json"), "{\"fingerprint\":\"0000\"}");
        var r = Run(Common(outPath));
        Assert.That(r.ExitCode, Is.EqualTo(1), r.ToString());
        Assert.That(r.Err, Does.Contain("belongs to a run with other inputs"));
    }

    /// <summary>Runs the built CLI (sam3.dll next to the tests) as a child process with extra environment variables.</summary>
    private static Result RunExecutable(Dictionary<string, string> env, string[] args)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "sam3.dll");
        if (!File.Exists(dll)) Assert.Ignore("built CLI not found next to the tests");
        string host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h
            : Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";
        var psi = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env) psi.Environment[k] = v;
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(120_000))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"sam3 {string.Join(' ', args)} did not finish within 120 s");
        }
        return new Result(process.ExitCode, stdout.Result, stderr.Result);
    }
}
