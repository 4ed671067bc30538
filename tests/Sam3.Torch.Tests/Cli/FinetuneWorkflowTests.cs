using System.Diagnostics;
using System.Text.Json.Nodes;
using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Tests.Training;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// <c>sam3 finetune</c> end to end on a synthetic COCO folder (train and valid splits): the zero-shot and fine-tuned figures
/// on the validation split (equal to what <c>sam3 eval</c> reports for the source checkpoint and for the result), the
/// released key layout of the result (tracker copied byte for byte), TensorBoard event files with the scalar tags.
/// </summary>
[TestFixture, Category("Slow")]
public class FinetuneWorkflowTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("sam3-finetune-wf-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    internal static string TinyCheckpoint => SharedData.Parity("tiny", "model.safetensors");
    internal static string Vocab => SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz");

    /// <summary>The synthetic shapes as train/ and (the same images) valid/.</summary>
    internal static string WriteData(string root)
    {
        SyntheticShapes.Write(root);
        string valid = Directory.CreateDirectory(Path.Combine(root, "valid")).FullName;
        foreach (var f in Directory.GetFiles(Path.Combine(root, "train"))) File.Copy(f, Path.Combine(valid, Path.GetFileName(f)));
        return root;
    }

    internal static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Test]
    public void ReportsBaselineAndFineTunedFiguresKeepsTheTrackerAndLogsTensorBoard()
    {
        string data = WriteData(Path.Combine(_dir, "data"));
        string outDir = Path.Combine(_dir, "out");
        var run = Run("finetune", "--checkpoint", TinyCheckpoint, "--config", "tiny", "--vocab", Vocab,
            "--data", data, "--out", outDir, "--batch", "2", "--epochs", "1", "--freeze", "backbones", "--lr", "1");
        Assert.That(run.Code, Is.EqualTo(0), run.Err);

        // --- the before/after figures are sam3 eval's on the source checkpoint and on the written model
        var summary = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, FinetuneEvaluation.SummaryFile)))!.AsObject();
        Assert.That((string?)summary["split"], Is.EqualTo("valid"));
        string before = Path.Combine(_dir, "before.json"), after = Path.Combine(_dir, "after.json");
        string model = Path.Combine(outDir, "model.safetensors");
        foreach (var (ckpt, report) in new[] { (TinyCheckpoint, before), (model, after) })
        {
            var e = Run("eval", "--checkpoint", ckpt, "--config", "tiny", "--vocab", Vocab, "--data", data, "--split", "valid", "--out", report);
            Assert.That(e.Code, Is.EqualTo(0), e.Err);
        }
        foreach (var (key, report) in new[] { ("zero_shot", before), ("fine_tuned", after) })
        {
            var expected = JsonNode.Parse(File.ReadAllText(report))!.AsObject();
            foreach (var section in new[] { "bbox", "segm", "cgF1_bbox", "cgF1_segm", "detections" })
                Assert.That(summary[key]![section]!.ToJsonString(), Is.EqualTo(expected[section]!.ToJsonString()), $"{key}.{section}");
        }
        Assert.That(File.Exists(Path.Combine(outDir, FinetuneEvaluation.BaselineFile)));
        // the table names both columns; the warning line appears exactly when a headline figure fell
        Assert.That(run.Out, Does.Contain("zero-shot").And.Contain("fine-tuned").And.Contain("box AP").And.Contain("mask cgF1"));
        bool fell = false;
        foreach (var (label, section, stat) in new[] { ("box AP", "bbox", "AP"), ("mask AP", "segm", "AP"), ("box cgF1", "cgF1_bbox", "cgF1"), ("mask cgF1", "cgF1_segm", "cgF1") })
        {
            double? b = FinetuneEvaluation.Value(summary["zero_shot"]!.AsObject(), section, stat);
            double? f = FinetuneEvaluation.Value(summary["fine_tuned"]!.AsObject(), section, stat);
            if (b is { } x && f is { } y && y < x) fell = true;
        }
        Assert.That((bool)summary["worse"]!, Is.EqualTo(fell));
        Assert.That(run.Out.Contains("warning: the fine-tuned model is worse"), Is.EqualTo(fell), run.Out);

        // --- released layout: the source's key set, tracker tensors byte-identical, detector weights trained
        using (var src = SafetensorsFile.Open(TinyCheckpoint))
        using (var dst = SafetensorsFile.Open(model))
        {
            Assert.That(dst.Names.OrderBy(n => n, StringComparer.Ordinal), Is.EqualTo(src.Names.OrderBy(n => n, StringComparer.Ordinal)));
            int tracker = 0, changed = 0;
            foreach (var name in src.Names)
            {
                bool same = RawBytes(src, name).AsSpan().SequenceEqual(RawBytes(dst, name));
                if (name.StartsWith("tracker.", StringComparison.Ordinal))
                {
                    tracker++;
                    Assert.That(same, $"{name} copied unchanged");
                }
                else if (!same) changed++;
            }
            Assert.That(tracker, Is.EqualTo(257));
            Assert.That(changed, Is.GreaterThan(50), "trained detector tensors differ from the source");
        }
        // ... so it loads with the interactive predictor (its weights are tracker.* keys)
        using (var loaded = Sam3Model.Load(model, new Sam3ModelOptions { Config = Sam3.Torch.Config.Sam3Config.Load(SharedData.Parity("tiny", "config.json")), TokenizerPath = Vocab, EnableInteractivePredictor = true }))
            Assert.That(loaded, Is.Not.Null);

        // --- TensorBoard: TFRecord framing with valid CRCs, scalar tags of every loss term, the lr and the evaluation
        var files = Directory.GetFiles(Path.Combine(outDir, "tensorboard"), "events.out.tfevents.*", SearchOption.AllDirectories);
        Assert.That(files, Is.Not.Empty);
        var tags = files.SelectMany(TensorBoardTags).ToHashSet();
        var csvTerms = File.ReadLines(Path.Combine(outDir, "losses.csv")).First().Split(',').Skip(6).ToList();
        Assert.That(csvTerms, Is.Not.Empty);
        Assert.That(tags, Does.Contain("loss/core").And.Contain("grad_norm").And.Contain("lr/group0").And.Contain("eval/box_AP").And.Contain("eval/mask_cgF1"));
        foreach (var t in csvTerms) Assert.That(tags, Does.Contain("loss/" + t));
    }

    /// <summary>The stored bytes of one tensor.</summary>
    private static byte[] RawBytes(SafetensorsFile f, string name)
    {
        var e = f.Entries[name];
        using var fs = File.OpenRead(f.Path);
        fs.Position = f.DataStart + e.Begin;
        var b = new byte[e.End - e.Begin];
        fs.ReadExactly(b);
        return b;
    }

    /// <summary>
    /// The tags of every summary value in a TensorBoard events file (<see cref="TfEventReader"/>: CRC-checked TFRecord
    /// records, <c>Event.summary.value.tag</c>).
    /// </summary>
    internal static IEnumerable<string> TensorBoardTags(string path) => TfEventReader.Read(path).SelectMany(e => e.Values.Select(v => v.Tag));
}
