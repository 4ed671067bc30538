using Sam3.Torch.Loading;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Text;
using Sam3.Torch.Visualization;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// <c>sam3 segment</c> and <c>sam3 parity</c> in process through <see cref="Program.Run"/>. The segment outputs are
/// checked against the library's own API run on the same image / prompt / threshold (Sam3ImagePredictor,
/// Sam3InteractivePredictor), the COCO RLE strings with the library's <see cref="CocoRle"/> and with an independent
/// decoder written here from the pycocotools string format. Expensive CLI runs happen once and are shared.
/// </summary>
[TestFixture, Category("Fast")]
public class SegmentParityCliTests
{
    private const string Threshold = "0.2";
    private const string TextPrompt = "person";
    // interactive prompts, in pixels of truck.jpg (1800 x 1200)
    private const float ClickX = 900, ClickY = 700;
    private static readonly Box[] TwoBoxes = [Box.FromXyxy(100, 200, 700, 800), Box.FromXyxy(900, 300, 1500, 1000)];

    private string _dir = null!;
    private Sam3Model _model = null!;
    private Sam3ImagePredictor _processor = null!;
    private Sam3ImageState _state = null!;
    private RgbImage _image = null!;
    private Dictionary<string, string> _inputHashesBefore = null!;
    private Result? _textRun, _pointRun, _boxesRun;

    private static string Tiny => SharedData.Parity("tiny", "model.safetensors");
    private static string Vocab => SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz");
    private static string Truck => SharedData.Parity("inputs", "truck.jpg");
    private static string Reference => Path.GetDirectoryName(SharedData.Parity("README.md"))!;
    private string TextOut => Path.Combine(_dir, "text", "not", "yet", "there");
    private string PointOut => Path.Combine(_dir, "point");
    private string BoxesOut => Path.Combine(_dir, "boxes");

    private static string[] Common(string outDir, params string[] more) =>
        ["segment", "--checkpoint", Tiny, "--config", "tiny", "--vocab", Vocab, "--image", Truck, "--out", outDir, .. more];

    [OneTimeSetUp]
    public void SetUp()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sam3-segment-cli-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
        _inputHashesBefore = HashInputs();
        _model = Sam3Model.Load(Tiny, new Sam3ModelOptions { Config = Sam3Config.Tiny, TokenizerPath = Vocab });
        _processor = _model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = double.Parse(Threshold, CultureInfo.InvariantCulture) });
        _image = ImageLoader.Load(Truck);
        _state = _processor.SetImage(_image);
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        _state?.Dispose();
        _processor?.Dispose();
        _model?.Dispose();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static Dictionary<string, string> HashInputs() =>
        new[] { Truck, Tiny, Vocab }.ToDictionary(p => p, p => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(p))));

    private static Dictionary<string, string> HashFolder(string dir) =>
        Directory.GetFiles(dir).ToDictionary(Path.GetFileName, p => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(p))))!;

    /// <summary>The image, checkpoint and vocabulary have the bytes they had before the first run.</summary>
    private void AssertInputsUnchanged() =>
        Assert.That(HashInputs(), Is.EqualTo(_inputHashesBefore), "image, checkpoint and vocabulary unchanged");

    // ---------------------------------------------------------------- running the CLI

    private sealed record Result(int ExitCode, string Out, string Err, double Seconds)
    {
        public string[] ErrLines => Err.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToArray();
        public override string ToString() => $"exit {ExitCode} ({Seconds:F1} s)\n--- stdout\n{Out}\n--- stderr\n{Err}";
    }

    private static Result Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        var sw = Stopwatch.StartNew();
        int code = Program.Run(args, o, e);
        var r = new Result(code, o.ToString(), e.ToString(), sw.Elapsed.TotalSeconds);
        TestContext.Progress.WriteLine(string.Format(CultureInfo.InvariantCulture, "  sam3 {0} {1}: exit {2}, {3:F2} s",
            args[0], string.Join(' ', args.Skip(1).Where(a => !a.Contains('/'))), code, r.Seconds));
        return r;
    }

    private static Result Succeeds(Result r)
    {
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Err, Does.Not.Contain("   at "));
        return r;
    }

    private Result TextRun => _textRun ??= Succeeds(Run(Common(TextOut, "--text", TextPrompt, "--threshold", Threshold, "--masks")));
    private Result PointRun => _pointRun ??= Succeeds(Run(Common(PointOut, "--point", F(ClickX) + "," + F(ClickY))));
    private Result BoxesRun => _boxesRun ??= Succeeds(Run(Common(BoxesOut,
        "--box-xyxy", string.Join(',', new[] { TwoBoxes[0].A, TwoBoxes[0].B, TwoBoxes[0].C, TwoBoxes[0].D }.Select(F)),
        "--box-xyxy", string.Join(',', new[] { TwoBoxes[1].A, TwoBoxes[1].B, TwoBoxes[1].C, TwoBoxes[1].D }.Select(F)))));

    private static string F(float v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>A failure reported as exactly one "sam3: ..." line on stderr, no stack trace.</summary>
    private static void AssertOneLineError(Result r, int exitCode, string fragment)
    {
        Assert.That(r.ExitCode, Is.EqualTo(exitCode), r.ToString());
        Assert.That(r.ErrLines, Has.Length.EqualTo(1), r.ToString());
        Assert.That(r.ErrLines[0], Does.StartWith("sam3: ").And.Contain(fragment), r.ToString());
        Assert.That(r.Err, Does.Not.Contain("   at "), r.ToString());
        Assert.That(r.Err, Does.Not.Contain("internal error"), r.ToString());
    }

    // ---------------------------------------------------------------- the JSON file

    private sealed record JsonObject(float Score, float[] Box, long Area, int[] Size, string Counts, int? Prompt, int? Candidate);

    private static (JsonElement Root, List<JsonObject> Objects) ReadJson(string path, out JsonDocument doc)
    {
        doc = JsonDocument.Parse(File.ReadAllText(path));
        var list = new List<JsonObject>();
        foreach (var d in doc.RootElement.GetProperty("detections").EnumerateArray())
        {
            var seg = d.GetProperty("segmentation");
            list.Add(new JsonObject(
                d.GetProperty("score").GetSingle(),
                d.GetProperty("bbox_xyxy").EnumerateArray().Select(v => v.GetSingle()).ToArray(),
                d.GetProperty("area").GetInt64(),
                seg.GetProperty("size").EnumerateArray().Select(v => v.GetInt32()).ToArray(),
                seg.GetProperty("counts").GetString()!,
                d.TryGetProperty("prompt", out var p) ? p.GetInt32() : null,
                d.TryGetProperty("candidate", out var c) ? c.GetInt32() : null));
        }
        return (doc.RootElement, list);
    }

    /// <summary>
    /// An independent decoder of pycocotools' compressed counts (rleFrString), written from the format: each count is
    /// a run of characters c - 48 carrying 5 bits each, least significant first; bit 0x20 says "more follows"; on the
    /// last character bit 0x10 is the sign (the value is sign-extended). From the fourth count on (index &gt; 2) the
    /// stored value is the difference to the count two places before.
    /// </summary>
    private static long[] PycocoCounts(string s)
    {
        var counts = new List<long>();
        int p = 0;
        while (p < s.Length)
        {
            long x = 0;
            int k = 0;
            bool more;
            do
            {
                int c = s[p] - 48;
                Assert.That(c, Is.InRange(0, 63), $"character '{s[p]}' outside '0'..'o'");
                x |= (long)(c & 0x1f) << (5 * k);
                more = (c & 0x20) != 0;
                p++;
                k++;
                if (!more && (c & 0x10) != 0) x |= -1L << (5 * k);
            } while (more && p < s.Length);
            Assert.That(more, Is.False, "the string ends inside a count");
            if (counts.Count > 2) x += counts[^2];
            counts.Add(x);
        }
        return counts.ToArray();
    }

    [Test]
    public void IndependentRleDecoderReadsHandEncodedCounts()
    {
        // worked by hand from the format: 40 = 8 + 1·32 -> groups 8 (with the continuation bit: 40 -> 'X') and 1 ('1');
        // "254M": 2, 5, 4, then 'M' = 77 - 48 = 29 = 0b11101, sign bit set -> -3, stored relative to counts[1] = 5 -> 2
        Assert.That(PycocoCounts("X1"), Is.EqualTo(new long[] { 40 }));
        Assert.That(PycocoCounts("254M"), Is.EqualTo(new long[] { 2, 5, 4, 2 }));
        // 2 x 3 mask, column-major runs 1 background, 3 foreground, 2 background: pixels (y,x) = (1,0), (0,1), (1,1)
        Assert.That(DecodeRuns([1, 3, 2], 2, 3), Is.EqualTo(new byte[] { 0, 1, 0, 1, 1, 0 }));
        // and the library agrees on the hand-made string
        Assert.That(new CocoRle([2, 3], "132").Decode(), Is.EqualTo(new byte[] { 0, 1, 0, 1, 1, 0 }));
    }

    /// <summary>Row-major 0/1 mask from column-major runs that start with background.</summary>
    private static byte[] DecodeRuns(long[] runs, int height, int width)
    {
        var mask = new byte[height * width];
        long j = 0;
        for (int r = 0; r < runs.Length; r++)
        {
            Assert.That(runs[r], Is.GreaterThanOrEqualTo(0), $"run {r}");
            for (long e = j + runs[r]; j < e; j++)
            {
                Assert.That(j, Is.LessThan((long)height * width), "the runs exceed the mask");
                if (r % 2 == 1) mask[(j % height) * width + j / height] = 1;
            }
        }
        Assert.That(j, Is.EqualTo((long)height * width), "the runs cover the mask");
        return mask;
    }

    /// <summary>Both decoders must give <paramref name="expected"/> (row-major 0/1), and the area its pixel count.</summary>
    private static void AssertRleIs(JsonObject o, byte[] expected, int height, int width, string what)
    {
        Assert.That(o.Size, Is.EqualTo(new[] { height, width }), what);
        var library = new CocoRle(o.Size, o.Counts).Decode();
        Assert.That(library.AsSpan().SequenceEqual(expected), $"{what}: CocoRle decodes to the API's mask");
        var independent = DecodeRuns(PycocoCounts(o.Counts), height, width);
        Assert.That(independent.AsSpan().SequenceEqual(expected), $"{what}: the independent decoder gives the API's mask");
        Assert.That(o.Area, Is.EqualTo(expected.Count(b => b != 0)), $"{what}: area");
    }

    // ---------------------------------------------------------------- 1. text prompt

    [Test]
    public void TextPromptWritesOverlayJsonAndMasksEqualToTheApi()
    {
        var r = TextRun;
        string json = Path.Combine(TextOut, "truck.json"), overlayPath = Path.Combine(TextOut, "truck.png");
        Assert.That(r.Out, Does.Contain(Path.GetFullPath(json)));
        Assert.That(r.ErrLines, Has.Length.EqualTo(1).And.All.StartWith("loaded model.safetensors in "), "stderr is no terminal: no progress lines");
        Assert.That(File.ReadAllText(json), Does.Not.Contain("\\u00"), "RLE counts are written unescaped");

        var api = _processor.SetTextPrompt(_state, TextPrompt)[0];
        int h = api.Height, w = api.Width;
        Assert.That((h, w), Is.EqualTo((_image.Height, _image.Width)));
        Assert.That(api.Count, Is.GreaterThan(0), "the test needs detections at this threshold");
        var scores = api.Scores();
        var boxes = api.Boxes().Select(b => b.ToXyxy() is var (x0, y0, x1, y1) ? new[] { x0, y0, x1, y1 } : null!).ToArray();
        var masks = api.Select(d => d.Mask.Data).ToArray();

        var (root, objects) = ReadJson(json, out var doc);
        using (doc)
        {
            Assert.That(root.GetProperty("width").GetInt32(), Is.EqualTo(w));
            Assert.That(root.GetProperty("height").GetInt32(), Is.EqualTo(h));
            Assert.That(root.GetProperty("text_prompt").GetString(), Is.EqualTo(TextPrompt));
            Assert.That(root.GetProperty("threshold").GetDouble(), Is.EqualTo(0.2));
        }
        Assert.That(objects, Has.Count.EqualTo(api.Count));
        Assert.That(scores, Has.All.GreaterThan(0.2f));
        for (int k = 0; k < api.Count; k++)
        {
            Assert.That(objects[k].Score, Is.EqualTo(scores[k]), $"score {k}");
            Assert.That(objects[k].Box, Is.EqualTo(boxes[k]), $"box {k}");
            AssertRleIs(objects[k], masks[k], h, w, $"detection {k}");
        }

        // --masks: one PNG per detection, white exactly on the mask
        Assert.That(Directory.GetFiles(TextOut, "truck_mask*.png"), Has.Length.EqualTo(api.Count));
        for (int k = 0; k < api.Count; k++)
        {
            var png = ImageLoader.Load(Path.Combine(TextOut, $"truck_mask{k}.png"));
            Assert.That((png.Width, png.Height), Is.EqualTo((w, h)));
            bool same = true;
            for (int i = 0; i < h * w && same; i++)
            {
                byte expected = (byte)(masks[k][i] != 0 ? 255 : 0);
                same = png.Data[3 * i] == expected && png.Data[3 * i + 1] == expected && png.Data[3 * i + 2] == expected;
            }
            Assert.That(same, $"truck_mask{k}.png is white exactly on mask {k}");
        }

        // the overlay: the input's size; changed on (almost) every mask pixel; unchanged away from masks, boxes and labels
        var overlay = ImageLoader.Load(overlayPath);
        Assert.That((overlay.Width, overlay.Height), Is.EqualTo((w, h)));
        var union = new byte[h * w];
        foreach (var m in masks) for (int i = 0; i < m.Length; i++) union[i] |= m[i];
        long inMask = 0, inMaskChanged = 0, outside = 0, outsideChanged = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int i = y * w + x;
                bool changed = overlay.Data[3 * i] != _image.Data[3 * i] || overlay.Data[3 * i + 1] != _image.Data[3 * i + 1] || overlay.Data[3 * i + 2] != _image.Data[3 * i + 2];
                if (union[i] != 0) { inMask++; if (changed) inMaskChanged++; }
                else if (!NearDecoration(boxes, x, y, w, h)) { outside++; if (changed) outsideChanged++; }
            }
        Assert.That(inMask, Is.GreaterThan(0));
        Assert.That(inMaskChanged, Is.GreaterThan(0.99 * inMask), "mask pixels are tinted");
        Assert.That(outside, Is.GreaterThan(0));
        Assert.That(outsideChanged, Is.EqualTo(0), "pixels away from masks, boxes and labels keep the input's values");
    }

    /// <summary>
    /// Within a few pixels of a box outline, or where a box's label panel can be: at its top-left corner (above or
    /// below it), moved inside the image when the corner is near or beyond an edge.
    /// </summary>
    private static bool NearDecoration(float[][] boxes, int x, int y, int width, int height)
    {
        const int band = 6, labelW = 320, labelH = 40;
        foreach (var b in boxes)
        {
            int x0 = (int)Math.Floor(b[0]), y0 = (int)Math.Floor(b[1]), x1 = (int)Math.Floor(b[2]), y1 = (int)Math.Floor(b[3]);
            bool inX = x >= x0 - band && x <= x1 + band, inY = y >= y0 - band && y <= y1 + band;
            if (inX && inY && (Math.Abs(x - x0) <= band || Math.Abs(x - x1) <= band || Math.Abs(y - y0) <= band || Math.Abs(y - y1) <= band)) return true;
            int lx = Math.Min(Math.Max(x0, 0), width - labelW), ly = Math.Clamp(y0, 0, height);
            if (x >= lx - band && x <= lx + labelW && y >= ly - labelH && y <= ly + labelH) return true;
        }
        return false;
    }

    [Test]
    public void NoDetectionsWritesAnEmptyListAndTheUntouchedImage()
    {
        string image = SharedData.Parity("inputs", "test_image.jpg"), outDir = Path.Combine(_dir, "none");
        // scores are sigmoid products, below 1: nothing passes threshold 1
        var r = Succeeds(Run("segment", "--checkpoint", Tiny, "--config", "tiny", "--vocab", Vocab, "--image", image, "--out", outDir,
            "--text", TextPrompt, "--threshold", "1", "--masks"));
        Assert.That(r.Out, Does.Contain(": 0 detection(s)"));
        var (root, objects) = ReadJson(Path.Combine(outDir, "test_image.json"), out var doc);
        using (doc) Assert.That(root.GetProperty("mode").GetString(), Is.EqualTo("detector"));
        Assert.That(objects, Is.Empty);
        var input = ImageLoader.Load(image);
        var overlay = ImageLoader.Load(Path.Combine(outDir, "test_image.png"));
        Assert.That((overlay.Width, overlay.Height), Is.EqualTo((input.Width, input.Height)));
        Assert.That(overlay.Data.AsSpan().SequenceEqual(input.Data), "nothing drawn");
        Assert.That(Directory.GetFiles(outDir), Has.Length.EqualTo(2), "no mask PNGs");
    }

    // ---------------------------------------------------------------- 1b. interactive mode

    [Test]
    public void PointWithoutTextWritesTheBestMaskWithThePredictorsIou()
    {
        Assert.That(PointRun.Out, Does.Contain("1 mask(s)"));
        var predictor = _model.CreateInteractivePredictor();
        // a single click: upstream's default is multimask output, the CLI keeps the best candidate
        var p = predictor.Predict(_state, InteractivePrompt.FromPoints(PointPrompt.Pixel(ClickX, ClickY)));
        var iou = p.IouScores().ToArray();
        int best = p.BestIndex();
        Assert.That(iou, Has.Length.EqualTo(3));
        Assert.That(iou[best], Is.EqualTo(iou.Max()));

        var (root, objects) = ReadJson(Path.Combine(PointOut, "truck.json"), out var doc);
        using (doc) Assert.That(root.GetProperty("mode").GetString(), Is.EqualTo("interactive"));
        Assert.That(objects, Has.Count.EqualTo(1));
        Assert.That(objects[0].Score, Is.EqualTo(iou[best]));
        Assert.That(objects[0].Candidate, Is.EqualTo(best));
        AssertRleIs(objects[0], p.Masks()[best].Data, p.Height, p.Width, "point mask");
        Assert.That(File.Exists(Path.Combine(PointOut, "truck.png")));
        Assert.That(Directory.GetFiles(PointOut, "truck_mask*.png"), Is.Empty, "no mask PNGs without --masks");
        AssertInputsUnchanged();
    }

    [Test]
    public void TwoBoxesWithoutTextGiveOneMaskPerBox()
    {
        Assert.That(BoxesRun.Out, Does.Contain("2 mask(s)"));
        var predictor = _model.CreateInteractivePredictor();
        var p = predictor.PredictBoxes(_state, TwoBoxes, multimaskOutput: false);
        var (_, objects) = ReadJson(Path.Combine(BoxesOut, "truck.json"), out var doc);
        doc.Dispose();
        Assert.That(objects, Has.Count.EqualTo(2));
        for (int k = 0; k < 2; k++)
        {
            var iou = p.IouScores(k).ToArray();
            Assert.That(iou, Has.Length.EqualTo(1));
            Assert.That(objects[k].Prompt, Is.EqualTo(k));
            Assert.That(objects[k].Score, Is.EqualTo(iou[0]), $"box {k}");
            var mask = p.Masks(k)[0].Data;
            AssertRleIs(objects[k], mask, p.Height, p.Width, $"box {k}");
            // the box written is the mask's tight box (inclusive pixel ends)
            var bounds = BinaryMask.FromBytes(mask, p.Width, p.Height).Bounds();
            float[] expectedBox = bounds is { } b ? [b.X0, b.Y0, b.X1, b.Y1] : [0, 0, 0, 0];
            Assert.That(objects[k].Box, Is.EqualTo(expectedBox), $"box {k}");
        }
        AssertInputsUnchanged();
    }

    // ---------------------------------------------------------------- 2. files

    [Test]
    public void InputsStayUnchangedAndOutputsAreNotReplacedWithoutForce()
    {
        _ = TextRun; // created the nested --out folder
        Assert.That(Directory.Exists(TextOut));
        var first = HashFolder(TextOut);
        Assert.That(first.Keys, Does.Contain("truck.png").And.Contain("truck.json").And.Contain("truck_mask0.png"));

        var again = Run(Common(TextOut, "--text", TextPrompt, "--threshold", Threshold, "--masks"));
        AssertOneLineError(again, 2, "--force");
        Assert.That(again.Out, Is.Empty);
        Assert.That(HashFolder(TextOut), Is.EqualTo(first), "the first run's outputs are unchanged");

        // a mask PNG alone is an existing output too
        string maskOnly = Path.Combine(_dir, "mask-only");
        Directory.CreateDirectory(maskOnly);
        File.WriteAllText(Path.Combine(maskOnly, "truck_mask0.png"), "precious");
        var refused = Run(Common(maskOnly, "--text", TextPrompt, "--threshold", Threshold, "--masks"));
        AssertOneLineError(refused, 2, "--force");
        Assert.That(File.ReadAllText(Path.Combine(maskOnly, "truck_mask0.png")), Is.EqualTo("precious"));
        Assert.That(Directory.GetFiles(maskOnly), Has.Length.EqualTo(1), "nothing written");

        AssertInputsUnchanged();
    }

    [Test]
    public void OutputsThatWouldOverwriteAnInputAreRefused()
    {
        // the image as truck.png in the output folder: the overlay truck.png would replace it
        string dir = Path.Combine(_dir, "self");
        Directory.CreateDirectory(dir);
        string png = Path.Combine(dir, "truck.png");
        ImageWriter.Save(_image, png);
        byte[] before = File.ReadAllBytes(png);
        // with or without --force, and with the same folder spelled differently
        foreach (var (outDir, force) in new[] { (dir, false), (dir, true), (Path.Combine(dir, ".", "..", "self"), true) })
        {
            string[] args = ["segment", "--checkpoint", Tiny, "--config", "tiny", "--vocab", Vocab, "--image", png, "--out", outDir, "--text", TextPrompt];
            AssertOneLineError(Run(force ? [.. args, "--force"] : args), 2, "would overwrite an input");
        }
        // through a symbolic link to the folder
        string link = Path.Combine(_dir, "link-to-self");
        Directory.CreateSymbolicLink(link, dir);
        AssertOneLineError(Run("segment", "--checkpoint", Tiny, "--config", "tiny", "--vocab", Vocab, "--image", png, "--out", link, "--text", TextPrompt, "--force"),
            2, "would overwrite an input");
        // an input named like a mask PNG of another input
        string maskLike = Path.Combine(dir, "truck_mask0.png");
        File.Copy(png, maskLike);
        byte[] maskBefore = File.ReadAllBytes(maskLike);
        var r = Run("segment", "--checkpoint", Tiny, "--config", "tiny", "--vocab", Vocab, "--image", Truck, "--image", maskLike,
            "--out", dir, "--text", TextPrompt, "--masks", "--force");
        AssertOneLineError(r, 2, "would overwrite an input");
        Assert.That(File.ReadAllBytes(png), Is.EqualTo(before));
        Assert.That(File.ReadAllBytes(maskLike), Is.EqualTo(maskBefore));
        Assert.That(Directory.GetFiles(dir), Has.Length.EqualTo(2), "nothing written");
    }

    // ---------------------------------------------------------------- 3. errors

    [Test]
    public void BadInputsAreOneLineErrors()
    {
        string dir = Path.Combine(_dir, "errors");
        Directory.CreateDirectory(dir);
        string outDir = Path.Combine(dir, "out");
        string[] Args(string checkpoint, string image, string config, params string[] more) =>
            ["segment", "--checkpoint", checkpoint, "--config", config, "--vocab", Vocab, "--image", image, "--out", outDir, .. more];

        AssertOneLineError(Run(Args(Tiny, Path.Combine(dir, "no-such.jpg"), "tiny", "--text", TextPrompt)), 1, "not found");

        string textAsJpg = Path.Combine(dir, "notes.jpg");
        File.WriteAllText(textAsJpg, "these are not pixels\n");
        AssertOneLineError(Run(Args(Tiny, textAsJpg, "tiny", "--text", TextPrompt)), 1, "not an image");

        string truncated = Path.Combine(dir, "truncated.safetensors");
        var bytes = File.ReadAllBytes(Tiny);
        File.WriteAllBytes(truncated, bytes[..(bytes.Length / 2)]);
        AssertOneLineError(Run(Args(truncated, Truck, "tiny", "--text", TextPrompt)), 1, "truncated");

        var wrongConfig = Run(Args(Tiny, Truck, "full", "--text", TextPrompt));
        AssertOneLineError(wrongConfig, 1, "does not fit the 'full' configuration");

        foreach (var (box, fragment) in new[] { ("1,2,3", "expected 4"), ("a,b,c,d", "'a' is not a number"), ("0.5,0.5,0.2,0.2:maybe", "suffix"),
                     ("1.5,0.5,0.2,0.2", "[0,1]"), ("0.5,0.5,0,0.2", "positive") })
            AssertOneLineError(Run(Args(Tiny, Truck, "tiny", "--box", box)), 2, fragment);
        AssertOneLineError(Run(Args(Tiny, Truck, "tiny", "--box-xyxy", "300,10,100,200")), 2, "x0 < x1");
        AssertOneLineError(Run(Args(Tiny, Truck, "tiny", "--text", TextPrompt, "--threshold", "2")), 2, "--threshold");
        AssertOneLineError(Run(Args(Tiny, Truck, "tiny")), 2, "give a prompt");
        Assert.That(Directory.Exists(outDir), Is.False, "no run created the output folder");
    }

    // ---------------------------------------------------------------- 4. parity

    [Test, Category("Slow")]
    public void ParityScenarioAPasses()
    {
        var r = Run("parity", "--reference", Reference, "--scenario", "a");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        var lines = r.Out.Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        Assert.That(lines, Does.Contain("== a_image_text"));
        Assert.That(lines.Any(l => System.Text.RegularExpressions.Regex.IsMatch(l, @"^\s+tensor\s+max abs\s+max rel\s+result$")), r.Out);
        Assert.That(lines.Where(l => l.StartsWith("  output.")), Is.Not.Empty.And.All.Contain(" pass"), r.Out);
        Assert.That(lines.Where(l => l.Length > 0).Last(), Is.EqualTo("parity: 1 passed, 0 failed"));
    }

    [Test, Category("Slow")]
    public void ParityWithZeroToleranceFails()
    {
        // fp32 sums taken in another order differ in the last bits, so at atol = rtol = 0 some float tensors fail
        var r = Run("parity", "--reference", Reference, "--scenario", "a", "--atol", "0", "--rtol", "0");
        Assert.That(r.ExitCode, Is.EqualTo(1), r.ToString());
        Assert.That(r.Out, Does.Contain(" FAIL"));
        Assert.That(r.Out.TrimEnd().Split('\n')[^1].TrimEnd('\r'), Is.EqualTo("parity: 0 passed, 1 failed"));
    }

    [Test]
    public void ParityOfAnUnimplementedScenarioKindFailsWithTheReason()
    {
        // every shipped kind is implemented: a reference folder of the same schema with a scenario of a made-up kind
        string reference = Path.Combine(_dir, "reference");
        string model = Path.Combine(reference, "tiny");
        Directory.CreateDirectory(model);
        Directory.CreateSymbolicLink(Path.Combine(reference, "inputs"), Path.Combine(Reference, "inputs"));
        foreach (var f in new[] { "config.json", "model.safetensors" })
            File.CreateSymbolicLink(Path.Combine(model, f), Path.Combine(Reference, "tiny", f));
        File.Copy(Path.Combine(Reference, "tiny", "a_image_text.json"), Path.Combine(model, "z_made_up_kind.json"));
        File.Copy(Path.Combine(Reference, "tiny", "a_image_text.safetensors"), Path.Combine(model, "z_made_up_kind.safetensors"));
        var r = Run("parity", "--reference", reference, "--scenario", "z");
        Assert.That(r.ExitCode, Is.EqualTo(1), r.ToString());
        Assert.That(r.Out, Does.Contain("== z_made_up_kind").And.Contain("scenario kind 'made_up_kind' is not implemented"));
        Assert.That(r.Out.TrimEnd().Split('\n')[^1].TrimEnd('\r'), Is.EqualTo("parity: 0 passed, 1 failed"));
    }

    [Test]
    public void ParityUsageErrors()
    {
        var unknown = Run("parity", "--reference", Reference, "--scenario", "zz");
        AssertOneLineError(unknown, 2, "no scenario matches 'zz'");
        Assert.That(unknown.Out, Does.Not.Contain("parity:"));

        var missing = Run("parity", "--reference", Path.Combine(_dir, "no-such-folder"));
        AssertOneLineError(missing, 2, "no such folder");
        Assert.That(missing.Out, Is.Empty);

        AssertOneLineError(Run("parity", "--reference", Reference, "--scenario", ","), 2, "--scenario");
        AssertOneLineError(Run("parity", "--reference", _dir), 2, "no 'tiny' model folder"); // exists, but is no reference
        AssertOneLineError(Run("parity", "--reference", Reference, "--atol", "-1"), 2, "non-negative");
        AssertOneLineError(Run("parity"), 2, "--reference");
    }
}
