using System.Globalization;
using System.Text.Json.Nodes;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Tests.Cli;
using Sam3.Torch.Training;

namespace Sam3.Torch.Tests.Training.Api;

/// <summary>
/// <see cref="Sam3Evaluation"/> against <c>sam3 eval</c> on the same checkpoint and split: every number of the public
/// result equals the CLI's JSON report (all 12 COCO numbers per IoU type, all 26 cgF1 statistics, the counts) and the
/// printed table shows the same figures; the loaded-model and checkpoint-path overloads agree.
/// </summary>
[TestFixture, Category("Fast")]
public class EvaluationApiTests
{
    [Test]
    public void EvaluationApiEqualsWhatSam3EvalReports()
    {
        string dir = Directory.CreateTempSubdirectory("sam3-evalapi-").FullName;
        try
        {
            // two shape images as valid/ (and train/)
            string data = SyntheticShapes.Write(Path.Combine(dir, "data"), SyntheticShapes.Default.Take(2).ToList());
            string validDir = Directory.CreateDirectory(Path.Combine(data, "valid")).FullName;
            foreach (var f in Directory.GetFiles(Path.Combine(data, "train"))) File.Copy(f, Path.Combine(validDir, Path.GetFileName(f)));
            string report = Path.Combine(dir, "report.json");
            var cli = FinetuneWorkflowTests.Run("eval", "--checkpoint", FinetuneWorkflowTests.TinyCheckpoint, "--config", "tiny",
                "--vocab", FinetuneWorkflowTests.Vocab, "--data", data, "--split", "valid", "--out", report);
            Assert.That(cli.Code, Is.EqualTo(0), cli.Err);
            var json = JsonNode.Parse(File.ReadAllText(report))!.AsObject();

            var modelOptions = new Sam3ModelOptions { Config = Sam3Config.Tiny, TokenizerPath = FinetuneWorkflowTests.Vocab };
            var r = Sam3Evaluation.Evaluate(FinetuneWorkflowTests.TinyCheckpoint, data, new Sam3EvaluationOptions { Split = "valid" }, modelOptions);
            Assert.That((r.Split, r.Images, r.Categories, r.Detections), Is.EqualTo(("valid", (int)json["images"]!, (int)json["categories"]!, (int)json["detections"]!)));
            Assert.That(r.AnnotationFile, Is.EqualTo(Path.Combine(data, "valid", "_annotations.coco.json")));
            Assert.That(r.Detections, Is.GreaterThan(0));
            Assert.That(r.Mask, Is.Not.Null, "the shapes have masks");
            foreach (var (section, m) in new[] { ("bbox", r.Box), ("segm", r.Mask!) })
            {
                double[] api = [m.AP, m.AP50, m.AP75, m.APSmall, m.APMedium, m.APLarge, m.AR1, m.AR10, m.AR100, m.ARSmall, m.ARMedium, m.ARLarge];
                string[] keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"];
                var o = json[section]!.AsObject();
                Assert.That(o.Select(p => p.Key), Is.EqualTo(keys), section);
                for (int i = 0; i < keys.Length; i++) Assert.That(api[i], Is.EqualTo((double)o[keys[i]]!), $"{section}.{keys[i]}");
            }
            foreach (var (section, c) in new[] { ("cgF1_bbox", r.BoxCgF1), ("cgF1_segm", r.MaskCgF1!) })
            {
                var o = json[section]!.AsObject();
                Assert.That(c.Values.Keys, Is.EquivalentTo(o.Select(p => p.Key)), section);
                Assert.That(c.Values, Has.Count.EqualTo(26));
                foreach (var (key, v) in o)
                {
                    if (v is null) Assert.That(c.Values[key], Is.NaN, $"{section}.{key}");
                    else Assert.That(c.Values[key], Is.EqualTo((double)v), $"{section}.{key}");
                }
                Assert.That((c.CgF1, c.CgF1At50, c.CgF1At75, c.PositiveMicroF1, c.ImageLevelMcc),
                    Is.EqualTo((c.Values["cgF1"], c.Values["cgF1@0.5"], c.Values["cgF1@0.75"], c.Values["positive_micro_F1"], c.Values["IL_MCC"])), section);
            }
            // the printed table: the same figures
            string F(double v) => v.ToString("F3", CultureInfo.InvariantCulture).PadLeft(6);
            Assert.That(cli.Out, Does.Contain($"AP {F(r.Box.AP)}  AP50 {F(r.Box.AP50)}  AP75 {F(r.Box.AP75)}"));
            Assert.That(cli.Out, Does.Contain($"AP {F(r.Mask!.AP)}  AP50 {F(r.Mask.AP50)}  AP75 {F(r.Mask.AP75)}"));
            Assert.That(cli.Out, Does.Contain($"cgF1 {F(r.BoxCgF1.CgF1)}  cgF1@0.5 {F(r.BoxCgF1.CgF1At50)}  IL_MCC {F(r.BoxCgF1.ImageLevelMcc)}"));

            // the loaded-model overload with the default split (valid) equals the path overload
            using var model = Sam3Model.Load(FinetuneWorkflowTests.TinyCheckpoint, modelOptions);
            var all = Sam3Evaluation.Evaluate(model, data);
            Assert.That(all.Split, Is.EqualTo("valid"));
            Assert.That(all.Box, Is.EqualTo(r.Box));
            Assert.That(all.Mask, Is.EqualTo(r.Mask));
            Assert.That(all.BoxCgF1.Values, Is.EqualTo(r.BoxCgF1.Values));
            Assert.That(Sam3Evaluation.Evaluate(model, data, new Sam3EvaluationOptions { MaxImages = 1 }).Images, Is.EqualTo(1));
            Assert.Throws<OperationCanceledException>(() => Sam3Evaluation.Evaluate(model, data, null, new CancellationToken(true)));
        }
        finally { Directory.Delete(dir, true); }
    }
}
