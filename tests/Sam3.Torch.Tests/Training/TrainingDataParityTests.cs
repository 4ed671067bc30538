using System.Text.Json;
using System.Text.Json.Nodes;
using NUnit.Framework;
using Sam3.Torch.IO;
using Sam3.Torch.Parity;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Text;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// The data part of scenario h (tiny/h_training_step): a COCO folder per case of the json's <c>cases</c> (the images
/// copied from parity/inputs, the ellipse / rectangle masks drawn at the original resolution by the README's rule and
/// stored as RLE), read in the Roboflow layout, through upstream's train transforms with the single size S = 336, and
/// collated; every <c>data.*</c> tensor of the fixture is compared.
/// </summary>
[TestFixture, Category("Parity"), Category("Fast")]
public class TrainingDataParityTests
{
    private const int S = 336;
    private string _tmp = "";

    [SetUp]
    public void SetUp() => _tmp = Directory.CreateTempSubdirectory("sam3-traindata-").FullName;

    [TearDown]
    public void TearDown()
    {
        try { Directory.Delete(_tmp, recursive: true); } catch (IOException) { }
    }

    /// <summary>Writes case <paramref name="ci"/> as a Roboflow COCO folder, as the parity runner does (README-h's mask rule).</summary>
    private string WriteCase(JsonElement c, int ci, string inputs) =>
        ParityRunner.WriteTrainingCase(c, Path.Combine(_tmp, $"case{ci}"), Path.GetDirectoryName(inputs)!);

    [Test]
    public void BatchOfScenarioHMatchesTheOfficialPipeline()
    {
        using var fx = Fixtures.Tiny("h_training_step");
        using var doc = JsonDocument.Parse(File.ReadAllText(fx.JsonPath));
        string inputs = SharedData.Parity("inputs");
        var config = new TrainTransformConfig { Resolution = S, ResizeSizes = [S] };
        var pipeline = TransformPipelines.Train(config);

        var datapoints = new List<Datapoint>();
        var resized = new List<byte[]>();
        try
        {
            int ci = 0;
            foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
            {
                string root = WriteCase(c, ci++, inputs);
                var ds = CocoDataset.Open(root, "train");
                Assert.That(ds.Count, Is.EqualTo(1));
                var dp = ds.Load(0);
                var rng = new Random(0);
                foreach (var step in pipeline.Transforms)
                {
                    dp = step.Apply(dp, rng);
                    if (step is RandomResize) resized.Add((byte[])dp.Images[0].Rgb!.Data.Clone());
                }
                datapoints.Add(dp);
            }
            using var scope = NewDisposeScope();
            using var batch = TrainingCollator.Collate(datapoints, withSegMasks: true);

            // image after the PIL bilinear resize, and the normalised batch: bit-exact
            var resizedT = stack(resized.Select(r => tensor(r, [S, S, 3], ScalarType.Byte)).ToArray());
            AssertEqual(fx, "data.image_resized_uint8", resizedT);
            var imgDiff = (batch.ImgBatch - fx.Get("data.img_batch")).abs().max().item<float>();
            TestContext.Out.WriteLine($"data.img_batch max |diff| = {imgDiff}");
            Assert.That(imgDiff, Is.EqualTo(0f), "img_batch");

            // texts and their tokens
            Assert.That(batch.FindTextBatch, Is.EqualTo(new[] { "person", "giraffe", "wheel" }));
            var tokenizer = ClipBpeTokenizer.FromBpeGz(SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"));
            var (ids, _) = tokenizer.TokenizeToTensors(batch.FindTextBatch, 32);
            AssertEqual(fx, "data.text_token_ids", ids);
            AssertEqual(fx, "data.token_embedding_rows", ids.unique(sorted: true).Item1);

            AssertEqual(fx, "data.find.img_ids", batch.FindImgIds);
            AssertEqual(fx, "data.find.text_ids", batch.FindTextIds);
            var t = batch.Targets;
            AssertEqual(fx, "data.target.num_boxes", t.NumBoxes);
            AssertClose(fx, "data.target.boxes", t.Boxes);
            AssertClose(fx, "data.target.boxes_xyxy", t.BoxesXyxy);
            AssertClose(fx, "data.target.boxes_padded", t.BoxesPadded);
            AssertEqual(fx, "data.target.object_ids", t.ObjectIds);
            AssertEqual(fx, "data.target.object_ids_padded", t.ObjectIdsPadded);
            AssertEqual(fx, "data.target.is_exhaustive", t.IsExhaustive);
            AssertEqual(fx, "data.target.segments", t.Segments!);
            AssertEqual(fx, "data.target.is_valid_segment", t.IsValidSegment!);
            Assert.That(batch.InputBoxes, Is.Null, "text-only queries have no input boxes");
        }
        finally
        {
            foreach (var d in datapoints) d.Dispose();
        }
    }

    private static void AssertEqual(ScenarioFixture fx, string name, Tensor actual)
    {
        using var scope = NewDisposeScope();
        var expected = fx.Get(name);
        Assert.That(actual.shape, Is.EqualTo(expected.shape), $"{name} shape");
        Assert.That(actual.dtype, Is.EqualTo(expected.dtype), $"{name} dtype");
        long mismatches = actual.ne(expected).sum().item<long>();
        TestContext.Out.WriteLine($"{name}: {mismatches} of {expected.numel()} elements differ");
        Assert.That(mismatches, Is.EqualTo(0), name);
    }

    private static void AssertClose(ScenarioFixture fx, string name, Tensor actual)
    {
        using var scope = NewDisposeScope();
        var expected = fx.Get(name);
        Assert.That(actual.shape, Is.EqualTo(expected.shape), $"{name} shape");
        double diff = (actual - expected).abs().max().item<float>();
        TestContext.Out.WriteLine($"{name}: max |diff| = {diff:G3}");
        Assert.That(diff, Is.LessThanOrEqualTo(1e-6), name);
    }
}
