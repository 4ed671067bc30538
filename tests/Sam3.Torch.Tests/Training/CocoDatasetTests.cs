using System.Text.Json.Nodes;
using NUnit.Framework;
using Sam3.Torch.Processing;
using Sam3.Torch.Training.Data;
using SixLabors.ImageSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>The COCO reader, the transforms' bookkeeping and the collate layout on small synthetic folders.</summary>
[TestFixture, Category("Fast")]
public class CocoDatasetTests
{
    private string _tmp = "";

    [SetUp]
    public void SetUp() => _tmp = Directory.CreateTempSubdirectory("sam3-coco-").FullName;

    [TearDown]
    public void TearDown()
    {
        try { Directory.Delete(_tmp, recursive: true); } catch (IOException) { }
    }

    private const int W = 40, H = 30;

    private static void WriteImage(string path, int w = W, int h = H)
    {
        var data = new byte[w * h * 3];
        for (int i = 0; i < data.Length; i++) data[i] = (byte)(i * 7 % 251);
        new RgbImage(w, h, data).ToImageSharp().SaveAsPng(path);
    }

    /// <summary>DIR/train/_annotations.coco.json with images a.png (id 1) and b.png (id 2) and the given categories / annotations.</summary>
    private string WriteRoboflow(JsonArray categories, JsonArray annotations, string split = "train")
    {
        string dir = Path.Combine(_tmp, split);
        Directory.CreateDirectory(dir);
        WriteImage(Path.Combine(dir, "a.png"));
        WriteImage(Path.Combine(dir, "b.png"));
        var coco = new JsonObject
        {
            ["images"] = new JsonArray(
                new JsonObject { ["id"] = 2, ["file_name"] = "b.png", ["width"] = W, ["height"] = H },
                new JsonObject { ["id"] = 1, ["file_name"] = "a.png", ["width"] = W, ["height"] = H }),
            ["annotations"] = annotations,
            ["categories"] = categories,
        };
        File.WriteAllText(Path.Combine(dir, CocoDataset.RoboflowAnnotationFile), coco.ToJsonString());
        return _tmp;
    }

    private static JsonObject Ann(int id, int image, int cat, double[]? bbox, JsonNode? seg = null, int crowd = 0)
    {
        var a = new JsonObject { ["id"] = id, ["image_id"] = image, ["category_id"] = cat, ["iscrowd"] = crowd };
        if (bbox != null) a["bbox"] = new JsonArray(bbox.Select(v => (JsonNode)JsonValue.Create(v)!).ToArray());
        if (seg != null) a["segmentation"] = seg;
        return a;
    }

    private static JsonArray Poly(params double[] xy) => new(new JsonArray(xy.Select(v => (JsonNode)JsonValue.Create(v)!).ToArray()));

    private static JsonArray Cats(params (int Id, string Name)[] cats) =>
        new(cats.Select(c => (JsonNode)new JsonObject { ["id"] = c.Id, ["name"] = c.Name }).ToArray());

    /// <summary>Mask of the pixels whose centre lies in [x0, x1] × [y0, y1].</summary>
    private static byte[] CentreRect(double x0, double y0, double x1, double y1, int w = W, int h = H)
    {
        var m = new byte[w * h];
        for (int r = 0; r < h; r++)
            for (int c = 0; c < w; c++)
                if (c + 0.5 >= x0 && c + 0.5 <= x1 && r + 0.5 >= y0 && r + 0.5 <= y1) m[r * w + c] = 1;
        return m;
    }

    [Test]
    public void AxisAlignedPolygonsCoverThePixelsWhoseCentreIsInside()
    {
        // integer corners: exactly the w·h pixels of the rectangle
        var r1 = CocoPolygon.FromPolygon([0, 0, 10, 0, 10, 10, 0, 10], H, W);
        Assert.That(r1.Decode(), Is.EqualTo(CentreRect(0, 0, 10, 10)));
        Assert.That(r1.Area(), Is.EqualTo(100));
        // fractional corners: columns 2..7, rows 4..8
        var r2 = CocoPolygon.FromPolygon([2.2, 3.7, 7.9, 3.7, 7.9, 9.2, 2.2, 9.2], H, W);
        Assert.That(r2.Decode(), Is.EqualTo(CentreRect(2.2, 3.7, 7.9, 9.2)));
        Assert.That(r2.ToBbox(), Is.EqualTo(new double[] { 2, 4, 6, 5 }));
    }

    [Test]
    public void ReadsPolygonsRleUncompressedRleAndMaskOnlyAnnotations()
    {
        var rect = CentreRect(2.2, 3.7, 7.9, 9.2);
        var rle = CocoRle.Encode(rect, H, W);
        var uncompressed = new JsonObject { ["size"] = new JsonArray(H, W), ["counts"] = new JsonArray(rle.GetCounts().Select(v => (JsonNode)JsonValue.Create(v)!).ToArray()) };
        var compressed = new JsonObject { ["size"] = new JsonArray(H, W), ["counts"] = rle.Counts };
        var twoPolys = new JsonArray(
            new JsonArray(new JsonNode[] { 0, 0, 4, 0, 4, 4, 0, 4 }),
            new JsonArray(new JsonNode[] { 20, 20, 30, 20, 30, 25, 20, 25 }));
        string root = WriteRoboflow(Cats((1, "cat")), new JsonArray(
            Ann(10, 1, 1, [2, 4, 6, 5], Poly(2.2, 3.7, 7.9, 3.7, 7.9, 9.2, 2.2, 9.2)),
            Ann(11, 1, 1, [2, 4, 6, 5], uncompressed),
            Ann(12, 1, 1, [2, 4, 6, 5], compressed),
            Ann(13, 1, 1, null, compressed.DeepClone()),
            Ann(14, 1, 1, [0, 0, 30, 25], twoPolys)));
        var ds = CocoDataset.Open(root);
        var anns = ds.Annotations.AnnotationsOf(1);
        Assert.That(anns.Select(a => a.Segmentation!.Decode()).Take(4), Has.All.EqualTo(rect));
        Assert.That(anns[3].BboxFromMask, Is.True);
        Assert.That(anns[3].Bbox, Is.EqualTo(new double[] { 2, 4, 6, 5 }));
        Assert.That(anns[4].Segmentation!.Area(), Is.EqualTo(16 + 50));
    }

    [Test]
    public void OneQueryPerCategoryInIdOrderWithNegatives()
    {
        string root = WriteRoboflow(Cats((5, "dog"), (2, "cat"), (9, "bird")), new JsonArray(
            Ann(1, 1, 5, [1, 1, 10, 10]), Ann(2, 1, 2, [5, 5, 10, 10]), Ann(3, 1, 5, [20, 10, 10, 10]), Ann(4, 2, 9, [0, 0, 5, 5])));
        var ds = CocoDataset.Open(root);
        Assert.That(ds.Count, Is.EqualTo(2));
        Assert.That(ds.ImageOf(0).Id, Is.EqualTo(1), "images sorted by id");
        using var dp = ds.Load(0);
        Assert.That(dp.FindQueries.Select(q => q.QueryText), Is.EqualTo(new[] { "cat", "dog", "bird" }));
        Assert.That(dp.FindQueries.Select(q => q.ObjectIdsOutput.ToArray()), Is.EqualTo(new[] { new[] { 0 }, new[] { 1, 2 }, Array.Empty<int>() }));
        // box of annotation 2 ([5,5,10,10]) → normalised by (40, 30) in float32 → xyxy pixels
        float x0 = 5f / 40f * 40f, y0 = 5f / 30f * 30f, x1 = (5f / 40f + 10f / 40f) * 40f, y1 = (5f / 30f + 10f / 30f) * 30f;
        Assert.That(dp.Images[0].Objects[0].Bbox, Is.EqualTo(new[] { x0, y0, x1, y1 }));

        var noNeg = CocoDataset.Open(root, options: new CocoDatasetOptions { IncludeNegatives = false });
        using var dp2 = noNeg.Load(1);
        Assert.That(dp2.FindQueries.Select(q => q.QueryText), Is.EqualTo(new[] { "bird" }));
        var chunked = CocoDataset.Open(root, options: new CocoDatasetOptions { CategoryChunkSize = 2 });
        Assert.That(chunked.Count, Is.EqualTo(4));
    }

    [Test]
    public void TrainPipelineDropsCrowdsAndReindexesTargets()
    {
        string root = WriteRoboflow(Cats((1, "cat")), new JsonArray(
            Ann(1, 1, 1, [1, 1, 10, 10]), Ann(2, 1, 1, [5, 5, 10, 10], crowd: 1), Ann(3, 1, 1, [20, 10, 10, 10])));
        var ds = CocoDataset.Open(root);
        var pipeline = TransformPipelines.Train(new TrainTransformConfig { Resolution = 64, ResizeSizes = [48] });
        using var dp = pipeline.Apply(ds.Load(0), new Random(1));
        Assert.That(dp.Images[0].Objects, Has.Count.EqualTo(2));
        Assert.That(dp.FindQueries[0].ObjectIdsOutput, Is.EqualTo(new[] { 0, 1 }));
        Assert.That(dp.Images[0].Data!.shape, Is.EqualTo(new long[] { 3, 64, 64 }));
        // boxes: normalised cxcywh of the 48×48 resized box shifted by the random padding → w, h scale by 48/40, 48/30 over 64
        var b = dp.Images[0].Objects[0].Bbox;
        Assert.That(b[2], Is.EqualTo(10f * 48f / 40f / 64f).Within(1e-6));
        Assert.That(b[3], Is.EqualTo(10f * 48f / 30f / 64f).Within(1e-6));
    }

    [Test]
    public void PaddingMovesBoxesAndPixelsByTheSameOffset()
    {
        string root = WriteRoboflow(Cats((1, "cat")), new JsonArray(Ann(1, 1, 1, [4, 3, 10, 10], Poly(4, 3, 14, 3, 14, 13, 4, 13))));
        var ds = CocoDataset.Open(root);
        using var dp = ds.Load(0);
        new DecodeRle().Apply(dp, new Random(0));
        var before = (byte[])dp.Images[0].Rgb!.Data.Clone();
        PadToSize.Pad(dp, 0, (3, 5, 7, 2), shiftBoxes: true);
        var img = dp.Images[0];
        Assert.That((img.Rgb!.Width, img.Rgb.Height), Is.EqualTo((W + 10, H + 7)));
        Assert.That(img.Size, Is.EqualTo((H + 7, W + 10)));
        Assert.That(img.Rgb[3, 5], Is.EqualTo((before[0], before[1], before[2])));
        Assert.That(img.Rgb[0, 0], Is.EqualTo(((byte)0, (byte)0, (byte)0)));
        Assert.That(img.Objects[0].Bbox, Is.EqualTo(new[] { 7f, 8f, 17f, 18f }));
        var seg = img.Objects[0].Segment!;
        Assert.That(seg.shape, Is.EqualTo(new long[] { H + 7, W + 10 }));
        Assert.That(seg[8, 7].item<byte>(), Is.EqualTo(1));
        Assert.That(seg[7, 7].item<byte>(), Is.EqualTo(0));
    }

    [Test]
    public void RandomResizeScalesAndSeededDraws()
    {
        Assert.That(TrainTransformConfig.RandomResizeScales(1008, 480, false), Is.EqualTo(Enumerable.Range(0, 17).Select(i => 480 + 32 * i)));
        Assert.That(TrainTransformConfig.RandomResizeScales(1008, 480, true), Is.EqualTo(new[] { 512, 640, 768, 896 }));
        Assert.That(TrainTransformConfig.RandomResizeScales(336, 480, false), Is.Empty);
        // upstream get_size_with_aspect_ratio: shorter side 480, longer 480·40/30 = 640; capped by max_size
        Assert.That(RandomResize.SizeWithAspectRatio(40, 30, 480, null), Is.EqualTo((480, 640)));
        Assert.That(RandomResize.SizeWithAspectRatio(40, 30, 480, 600), Is.EqualTo((450, 600)));

        string root = WriteRoboflow(Cats((1, "cat")), new JsonArray(Ann(1, 1, 1, [1, 1, 10, 10])));
        var ds = CocoDataset.Open(root);
        var cfg = new TrainTransformConfig { Resolution = 96, MinResizeSize = 32 };
        var a = new TrainingDataset(ds, TransformPipelines.Train(cfg), seed: 7, withSegMasks: false);
        using var b1 = a.GetBatch([0, 1], epoch: 3);
        using var b2 = a.GetBatch([0, 1], epoch: 3);
        Assert.That(b1.ImgBatch.ne(b2.ImgBatch).any().item<bool>(), Is.False, "same seed, epoch and index → same sample");
        Assert.That(b1.Targets.Boxes.ne(b2.Targets.Boxes).any().item<bool>(), Is.False);
        Assert.That(a.EpochBatches(0, 2, dropLast: false).SelectMany(x => x).Order(), Is.EqualTo(new[] { 0, 1 }));
    }

    [Test]
    public void CollatePacksQueriesTargetsAndInputBoxesLikeCollateFnApi()
    {
        Datapoint Make(float[][] boxes, params (string Text, int[] Objects, float[][]? Input)[] queries)
        {
            var img = new DatapointImage { Data = zeros(3, 8, 8), Size = (8, 8) };
            foreach (var b in boxes) img.Objects.Add(new DatapointObject { Bbox = b, Area = 1, Segment = ones(8, 8, ScalarType.Byte) });
            return new Datapoint
            {
                Images = [img],
                FindQueries = queries.Select(q => new DatapointQuery { QueryText = q.Text, ObjectIdsOutput = [.. q.Objects], InputBbox = q.Input }).ToList(),
            };
        }
        float[] B(float v) => [v, v, 0.1f, 0.1f];
        using var d0 = Make([B(0.1f), B(0.2f)], ("a", [1, 0], null), ("b", [], [B(0.5f), B(0.6f)]));
        using var d1 = Make([B(0.3f)], ("b", [0], [B(0.7f)]));
        using var batch = TrainingCollator.Collate([d0, d1], withSegMasks: true);
        Assert.That(batch.FindTextBatch, Is.EqualTo(new[] { "a", "b" }));
        Assert.That(batch.FindTextIds.data<long>().ToArray(), Is.EqualTo(new long[] { 0, 1, 1 }));
        Assert.That(batch.FindImgIds.data<long>().ToArray(), Is.EqualTo(new long[] { 0, 0, 1 }));
        var t = batch.Targets;
        Assert.That(t.NumBoxes.data<long>().ToArray(), Is.EqualTo(new long[] { 2, 0, 1 }));
        Assert.That(t.ObjectIds.data<long>().ToArray(), Is.EqualTo(new long[] { 1, 0, 0 }));
        Assert.That(t.ObjectIdsPadded.data<long>().ToArray(), Is.EqualTo(new long[] { 1, 0, -1, -1, 0, -1 }));
        Assert.That(t.Boxes[0, 0].item<float>(), Is.EqualTo(0.2f));
        Assert.That(t.BoxesPadded.shape, Is.EqualTo(new long[] { 3, 2, 4 }));
        Assert.That(t.BoxesPadded[1].abs().sum().item<float>(), Is.EqualTo(0f));
        Assert.That(t.BoxesXyxy[0].data<float>().ToArray(), Is.EqualTo(new[] { 0.2f - 0.05f, 0.2f - 0.05f, 0.2f + 0.05f, 0.2f + 0.05f }));
        Assert.That(t.Segments!.shape, Is.EqualTo(new long[] { 3, 8, 8 }));
        Assert.That(t.Segments.dtype, Is.EqualTo(ScalarType.Bool));
        // input boxes: [K=2, B=3, 4], mask [B, K] True = padding, labels default 1
        Assert.That(batch.InputBoxes!.shape, Is.EqualTo(new long[] { 2, 3, 4 }));
        Assert.That(batch.InputBoxesMask!.data<bool>().ToArray(), Is.EqualTo(new[] { true, true, false, false, false, true }));
        Assert.That(batch.InputBoxes[1, 1, 0].item<float>(), Is.EqualTo(0.6f));
        Assert.That(batch.InputBoxes[0, 2, 0].item<float>(), Is.EqualTo(0.7f));
        Assert.That(batch.InputBoxesLabel!.data<long>().ToArray(), Is.EqualTo(new long[] { 0, 1, 1, 0, 1, 0 }));
    }

    [TestCase("missing-image")]
    [TestCase("bbox-outside")]
    [TestCase("unknown-category")]
    [TestCase("unknown-image")]
    [TestCase("odd-polygon")]
    [TestCase("rle-size")]
    [TestCase("no-geometry")]
    public void BadInputRaisesATypedErrorNamingFileAndAnnotation(string kind)
    {
        var ann = kind switch
        {
            "bbox-outside" => Ann(77, 1, 1, [30, 5, 20, 5]),
            "unknown-category" => Ann(77, 1, 3, [1, 1, 5, 5]),
            "unknown-image" => Ann(77, 9, 1, [1, 1, 5, 5]),
            "odd-polygon" => Ann(77, 1, 1, [1, 1, 5, 5], Poly(1, 1, 5, 1, 5)),
            "rle-size" => Ann(77, 1, 1, [1, 1, 5, 5], new JsonObject { ["size"] = new JsonArray(10, 10), ["counts"] = "0" }),
            "no-geometry" => Ann(77, 1, 1, null),
            _ => Ann(77, 1, 1, [1, 1, 5, 5]),
        };
        string root = WriteRoboflow(Cats((1, "cat")), new JsonArray(ann));
        if (kind == "missing-image") File.Delete(Path.Combine(root, "train", "b.png"));
        var e = Assert.Throws<Sam3DatasetException>(() => CocoDataset.Open(root))!;
        TestContext.Out.WriteLine(e.Message);
        Assert.That(e.Message, Does.Contain(CocoDataset.RoboflowAnnotationFile));
        if (kind == "missing-image") Assert.That(e.Message, Does.Contain("b.png"));
        else Assert.That(e.AnnotationId, Is.EqualTo(77));
    }

    [Test]
    public void FindsRoboflowSplitsAndPlainCocoFiles()
    {
        string root = WriteRoboflow(Cats((1, "cat")), new JsonArray(Ann(1, 1, 1, [1, 1, 5, 5])), split: "valid");
        Assert.That(CocoDataset.HasSplit(root, "valid"), Is.True);
        Assert.That(CocoDataset.HasSplit(root, "train"), Is.False);
        Assert.That(CocoDataset.Open(root, "valid").Count, Is.EqualTo(2));
        Assert.Throws<Sam3DatasetException>(() => CocoDataset.Open(root, "train"));
        // a plain COCO json elsewhere, images in another folder
        string json = Path.Combine(_tmp, "instances.json");
        File.Copy(Path.Combine(root, "valid", CocoDataset.RoboflowAnnotationFile), json);
        Assert.That(CocoDataset.FromFile(json, Path.Combine(root, "valid")).Count, Is.EqualTo(2));
        Assert.Throws<Sam3DatasetException>(() => CocoDataset.FromFile(json));
    }

    [Test]
    public void EmptyRleBecomesTheFilledBox()
    {
        // upstream DecodeRle: an empty mask is approximated by its box, bbox.int() truncated: rows 3..12, columns 4..13
        var empty = new JsonObject { ["size"] = new JsonArray(H, W), ["counts"] = new JsonArray(H * W) };
        string root = WriteRoboflow(Cats((1, "cat")), new JsonArray(Ann(1, 1, 1, [4.7, 3.2, 9.5, 10.1], empty)));
        using var dp = CocoDataset.Open(root).Load(0);
        new DecodeRle().Apply(dp, new Random(0));
        var seg = dp.Images[0].Objects[0].Segment!;
        var b = dp.Images[0].Objects[0].Bbox;
        int x0 = (int)b[0], y0 = (int)b[1], x1 = (int)b[2], y1 = (int)b[3];
        Assert.That((x0, y0, x1, y1), Is.EqualTo((4, 3, 14, 13)));
        Assert.That(seg.sum().item<long>(), Is.EqualTo((long)(x1 - x0) * (y1 - y0)));
        Assert.That(seg[y0, x0].item<byte>(), Is.EqualTo(1));
        Assert.That(seg[y1, x1 - 1].item<byte>(), Is.EqualTo(0));
    }
}
