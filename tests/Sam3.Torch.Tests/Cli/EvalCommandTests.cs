using System.Text.Json;
using System.Text.Json.Nodes;
using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Cli;

/// <summary><c>sam3 eval</c> with the tiny model on a one-image Roboflow-layout folder: runs, prints the table, writes the JSON report.</summary>
[TestFixture, Category("Fast")]
public class EvalCommandTests
{
    [Test]
    public void EvalReportsBoxMaskApAndCgF1()
    {
        string dir = Directory.CreateTempSubdirectory("sam3-evalcli-").FullName;
        try
        {
            string valid = Path.Combine(dir, "valid");
            Directory.CreateDirectory(valid);
            File.Copy(SharedData.Parity("inputs", "truck.jpg"), Path.Combine(valid, "truck.jpg"));
            var coco = new JsonObject
            {
                ["images"] = new JsonArray(new JsonObject { ["id"] = 0, ["file_name"] = "truck.jpg", ["width"] = 1800, ["height"] = 1200 }),
                ["categories"] = new JsonArray(new JsonObject { ["id"] = 1, ["name"] = "wheel" }, new JsonObject { ["id"] = 2, ["name"] = "giraffe" }),
                ["annotations"] = new JsonArray(
                    new JsonObject { ["id"] = 0, ["image_id"] = 0, ["category_id"] = 1, ["bbox"] = new JsonArray(430, 620, 250, 230), ["area"] = 57500, ["iscrowd"] = 0,
                        ["segmentation"] = new JsonArray(new JsonArray(430, 620, 680, 620, 680, 850, 430, 850)) }),
            };
            File.WriteAllText(Path.Combine(valid, "_annotations.coco.json"), coco.ToJsonString());
            string report = Path.Combine(dir, "report.json");
            var o = new StringWriter();
            var e = new StringWriter();
            int code = Program.Run(["eval", "--checkpoint", SharedData.Parity("tiny", "model.safetensors"), "--config", "tiny",
                "--vocab", SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"), "--data", dir, "--out", report], o, e);
            TestContext.Out.WriteLine(o.ToString());
            Assert.That(code, Is.EqualTo(0), e.ToString());
            Assert.That(o.ToString(), Does.Contain("(valid)").And.Contain("box").And.Contain("mask").And.Contain("cgF1"));
            using var doc = JsonDocument.Parse(File.ReadAllText(report));
            var bbox = doc.RootElement.GetProperty("bbox");
            Assert.That(bbox.EnumerateObject().Count(), Is.EqualTo(12));
            foreach (var p in bbox.EnumerateObject()) Assert.That(p.Value.GetDouble(), Is.InRange(-1.0, 1.0), p.Name);
            // one ground truth, no small/medium one: those ranges are undefined (-1) whatever the model finds
            Assert.That(bbox.GetProperty("APs").GetDouble(), Is.EqualTo(-1.0));
            Assert.That(bbox.GetProperty("APm").GetDouble(), Is.EqualTo(-1.0));
            Assert.That(doc.RootElement.GetProperty("cgF1_segm").EnumerateObject().Count(), Is.EqualTo(26));
        }
        finally { Directory.Delete(dir, true); }
    }
}
