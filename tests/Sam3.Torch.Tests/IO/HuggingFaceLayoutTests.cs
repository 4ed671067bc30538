using Sam3.Torch.Loading;
using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.IO;

/// <summary>
/// The Hugging Face transformers layout (hub <c>model.safetensors</c> + <c>config.json</c>): key rules against the
/// authoritative <c>shared/parity/tiny_hf/mapping.json</c> and its full-size prediction, loading <c>tiny_hf/</c> against
/// <c>tiny/model.safetensors</c> (bit-identical), conversions both ways (byte-identical with the fixture files), the
/// config reader, strictness, and the missing detector point projections.
/// </summary>
[TestFixture, Category("Fast")]
public class HuggingFaceLayoutTests
{
    private static string TinyOriginal => SharedData.Parity("tiny", "model.safetensors");
    private static string TinyHfFolder => SharedData.Parity("tiny_hf");
    private static string TinyHf => SharedData.Parity("tiny_hf", "model.safetensors");
    private static string Sidecar => SharedData.Parity("tiny_hf", "hf_dropped.safetensors");
    private static JsonDocument Mapping() => JsonDocument.Parse(File.ReadAllText(SharedData.Parity("tiny_hf", "mapping.json")));

    private static List<(string, long[])> KeysAndShapes(ICheckpoint c) => c.Names.Select(n => (n, c.Info(n).Shape)).ToList();

    /// <summary>Same shape, dtype and bytes.</summary>
    private static bool BitEqual(Tensor a, Tensor b) =>
        a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.contiguous().bytes.SequenceEqual(b.contiguous().bytes);

    private string _tmp = "";

    [SetUp]
    public void MakeTemp() => _tmp = Directory.CreateTempSubdirectory("sam3-hf-").FullName;

    [TearDown]
    public void RemoveTemp()
    {
        try { Directory.Delete(_tmp, recursive: true); } catch (IOException) { }
    }

    // ------------------------------------------------------------------ key rules

    [Test]
    public void TinyPlanEqualsMappingJsonTensorByTensor()
    {
        using var orig = SafetensorsFile.Open(TinyOriginal);
        var plan = HuggingFaceLayout.PlanToHf(KeysAndShapes(orig));
        using var doc = Mapping();
        var expected = doc.RootElement.GetProperty("hf_tensors").EnumerateArray().ToList();
        Assert.That(plan.Tensors.Select(t => t.HfKey), Is.EqualTo(expected.Select(e => e.GetProperty("hf_key").GetString())));
        string[] names = ["copy", "split_qkv_dim0", "drop_cls_token", "stack_rows_dim0", "transpose", "duplicate"];
        HfTransform[] kinds = [HfTransform.Copy, HfTransform.SplitQkv, HfTransform.DropClsRow, HfTransform.StackRows, HfTransform.Transpose, HfTransform.Duplicate];
        for (int i = 0; i < expected.Count; i++)
        {
            var e = expected[i];
            var t = plan.Tensors[i];
            Assert.That(t.Shape, Is.EqualTo(e.GetProperty("hf_shape").EnumerateArray().Select(x => x.GetInt64())), t.HfKey);
            Assert.That(t.OriginalKeys, Is.EqualTo(e.GetProperty("original_keys").EnumerateArray().Select(x => x.GetString())), t.HfKey);
            Assert.That(t.Transform, Is.EqualTo(kinds[Array.IndexOf(names, e.GetProperty("transform").GetString())]), t.HfKey);
            if (t.Transform == HfTransform.SplitQkv)
                Assert.That(e.GetProperty("detail").GetString(), Does.EndWith($"({"qkv"[t.Part]})"), t.HfKey);
        }
        var originalOnly = doc.RootElement.GetProperty("original_only").EnumerateArray()
            .Select(x => (x.GetProperty("original_key").GetString(), x.GetProperty("shape").EnumerateArray().Select(s => s.GetInt64()).ToArray())).ToList();
        Assert.That(plan.Dropped.Select(d => d.OriginalKey).OrderBy(k => k, StringComparer.Ordinal),
            Is.EqualTo(originalOnly.Select(o => o.Item1).OrderBy(k => k, StringComparer.Ordinal)));
        foreach (var (key, shape) in originalOnly)
            Assert.That(plan.Dropped.Single(d => d.OriginalKey == key).Shape, Is.EqualTo(shape), key!);

        // ...and it is exactly the fixture file's key/shape list
        using var hf = SafetensorsFile.Open(TinyHf);
        Assert.That(plan.Tensors.Select(t => (t.HfKey, t.Shape)), Is.EqualTo(KeysAndShapes(hf)));
    }

    [Test]
    public void FullSizePredictionEqualsMappingJson()
    {
        var full = ManifestFile.ReadCheckpointKeys(SharedData.Parity("full", "checkpoint_keys.json"));
        Assert.That(full.Entries, Has.Count.EqualTo(1465));
        var plan = HuggingFaceLayout.PlanToHf(full.Entries.Select(e => (e.Key, e.Shape)).ToList());
        using var doc = Mapping();
        var pred = doc.RootElement.GetProperty("full_size_prediction");
        Assert.That(plan.Tensors, Has.Count.EqualTo(pred.GetProperty("hf_keys").GetInt32()));
        Assert.That(plan.NumElements, Is.EqualTo(pred.GetProperty("hf_numel").GetInt64()));
        Assert.That(plan.Dropped.Select(d => d.OriginalKey).OrderBy(k => k, StringComparer.Ordinal),
            Is.EqualTo(pred.GetProperty("original_keys_without_hf_tensor").EnumerateArray().Select(x => x.GetString()).OrderBy(k => k, StringComparer.Ordinal)));

        // and back: the predicted HF list rebuilds every original key except the dropped ones
        var back = HuggingFaceLayout.PlanToOriginal(plan.Tensors.Select(t => (t.HfKey, t.Shape)).ToList());
        var expectedBack = full.Entries.Where(e => !e.Key.EndsWith(".freqs_cis") && !e.Key.StartsWith(HuggingFaceLayout.PointProjectionPrefix))
            .ToDictionary(e => e.Key, e => e.Shape);
        Assert.That(back.Select(b => b.OriginalKey).OrderBy(k => k, StringComparer.Ordinal), Is.EqualTo(expectedBack.Keys.OrderBy(k => k, StringComparer.Ordinal)));
        foreach (var b in back) Assert.That(b.Shape, Is.EqualTo(expectedBack[b.OriginalKey]), b.OriginalKey);
    }

    [Test]
    public void UnknownIncompleteOrMisshapedHfKeysAreErrorsNamingThem()
    {
        using var hf = SafetensorsFile.Open(TinyHf);
        var keys = KeysAndShapes(hf);
        const string q = "detector_model.detr_encoder.layers.0.self_attn.q_proj.weight";

        var unknown = keys.Append(("detector_model.something_new.weight", new long[] { 3 })).ToList();
        var e1 = Assert.Throws<Sam3CheckpointMismatchException>(() => HuggingFaceLayout.PlanToOriginal(unknown))!;
        Assert.That(e1.UnexpectedKeys, Is.EqualTo(new[] { "detector_model.something_new.weight" }));

        var noQ = keys.Where(k => k.Item1 != q).ToList();
        var e2 = Assert.Throws<Sam3CheckpointMismatchException>(() => HuggingFaceLayout.PlanToOriginal(noQ))!;
        Assert.That(e2.MissingKeys, Is.EqualTo(new[] { q }));
        Assert.That(e2.Message, Does.Contain(q));

        var misshaped = keys.Select(k => k.Item1 == q ? (k.Item1, new long[] { 31, 32 }) : k).ToList();
        var e3 = Assert.Throws<Sam3CheckpointMismatchException>(() => HuggingFaceLayout.PlanToOriginal(misshaped))!;
        Assert.That(e3.WrongShapeKeys, Does.Contain(q));
    }

    // ------------------------------------------------------------------ loading

    [Test]
    public void TinyHfLoadsBitIdenticalToTheOriginalExceptTheSixPointProjections()
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var fromHf = Sam3ModelLoader.LoadImageModel(TinyHf, Sam3Config.Tiny);
        double hfSeconds = sw.Elapsed.TotalSeconds;
        sw.Restart();
        using var fromOriginal = Sam3ModelLoader.LoadImageModel(TinyOriginal, Sam3Config.Tiny);
        TestContext.Out.WriteLine($"load: HF layout {hfSeconds:F2} s, original {sw.Elapsed.TotalSeconds:F2} s");

        var a = fromHf.state_dict();
        var b = fromOriginal.state_dict();
        Assert.That(a.Keys, Is.EqualTo(b.Keys));
        var points = a.Keys.Where(k => k.StartsWith("geometry_encoder.points_")).ToList();
        Assert.That(points, Has.Count.EqualTo(6));
        int compared = 0;
        foreach (var key in a.Keys)
        {
            if (points.Contains(key))
            {
                Assert.That(a[key].count_nonzero().item<long>(), Is.Zero, $"{key}: zeroed, not random");
                continue;
            }
            if (key == "backbone.vision_backbone.trunk.pos_embed")
            {
                // the class row is not in the HF layout (zeros here); upstream drops it unused (retain_cls_token=False)
                Assert.That(a[key].narrow(1, 0, 1).count_nonzero().item<long>(), Is.Zero);
                Assert.That(BitEqual(a[key].narrow(1, 1, a[key].shape[1] - 1), b[key].narrow(1, 1, b[key].shape[1] - 1)), Is.True, key);
            }
            else Assert.That(BitEqual(a[key], b[key]), Is.True, $"{key} differs");
            compared++;
        }
        Assert.That(compared, Is.EqualTo(a.Count - 6));
    }

    [Test]
    public void DetectorPointPromptIsRefusedWithTheReasonWhileBoxesWork()
    {
        using var model = Sam3ModelLoader.LoadImageModel(TinyHf, Sam3Config.Tiny);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        int n = Sam3Config.Tiny.TokensPerSide, d = Sam3Config.Tiny.DModel;
        var feats = torch.randn(n * n, 1, d);
        var points = new Prompt(pointEmbeddings: torch.full(1, 1, 2, 0.5f));
        var e = Assert.Throws<Sam3PromptException>(() => model.geometry_encoder.forward(points, [feats], [(n, n)]))!;
        Assert.That(e.Message, Does.Contain("point projections").And.Contain("Hugging Face"));

        var boxes = new Prompt(boxEmbeddings: torch.tensor(new float[] { 0.5f, 0.5f, 0.2f, 0.2f }).view(1, 1, 4));
        var (embeds, _) = model.geometry_encoder.forward(boxes, [feats], [(n, n)]);
        Assert.That(embeds.shape[0], Is.EqualTo(2), "one box + cls token");
    }

    [Test]
    public void AMissingOrMisshapedTensorInTheHfFileIsAStrictError()
    {
        using var hf = SafetensorsFile.Open(TinyHf);
        const string dropped = "detector_model.mask_decoder.instance_projection.weight";
        string path = Path.Combine(_tmp, "broken.safetensors");
        SafetensorsWriter.Write(path, hf.Names.Where(n => n != dropped).Select(n => KeyValuePair.Create(n, hf.Load(n))).ToList());
        var e = Assert.Throws<Sam3CheckpointMismatchException>(() => Sam3ModelLoader.LoadImageModel(path, Sam3Config.Tiny))!;
        Assert.That(e.MissingKeys, Is.EqualTo(new[] { "segmentation_head.instance_seg_head.weight" }));

        // a configuration of another size: every misshaped key is named
        var other = Sam3Config.Tiny with { Text = Sam3Config.Tiny.Text with { Width = 64 } };
        var e2 = Assert.Throws<Sam3CheckpointMismatchException>(() => Sam3ModelLoader.LoadImageModel(TinyHf, other))!;
        Assert.That(e2.WrongShapeKeys, Does.Contain("backbone.language_backbone.encoder.transformer.resblocks.0.attn.in_proj_weight"));
    }

    [Test]
    public void LoadsWithoutTheInteractiveHeadsAndPartialPointProjectionsAreStillAnError()
    {
        using (var model = Sam3ModelLoader.LoadImageModel(TinyHf, Sam3Config.Tiny, new Sam3LoadOptions { EnableInstInteractivity = false }))
            Assert.That(model.inst_interactive_predictor, Is.Null);

        // a released-layout file missing only some of the point projections is not the HF case: strict error naming them
        using var orig = SafetensorsFile.Open(TinyOriginal);
        const string gone = "detector.geometry_encoder.points_pool_project.bias";
        string path = Path.Combine(_tmp, "partial.safetensors");
        SafetensorsWriter.Write(path, orig.Names.Where(n => n != gone && !orig.IsComplexAsReal(n)).Select(n => KeyValuePair.Create(n, orig.Load(n))).ToList());
        var e = Assert.Throws<Sam3CheckpointMismatchException>(() => Sam3ModelLoader.LoadImageModel(path, Sam3Config.Tiny))!;
        Assert.That(e.MissingKeys, Does.Contain("geometry_encoder.points_pool_project.bias"));
    }

    [Test, Category("Parity")]
    public void ScenariosAAndDPassFromTheHfFolder_CFailsOnlyAtItsPointStep()
    {
        using var runner = new ParityRunner(SharedData.Parity()) { CheckpointOverride = TinyHfFolder };
        foreach (var name in runner.Select(["a", "d"]))
        {
            var report = runner.Run(name);
            foreach (var c in report.Comparisons) TestContext.Out.WriteLine($"{name}: {c}");
            Assert.That(report.Passed, Is.True, $"{name}: {report.Failure}");
            Assert.That(report.Comparisons, Is.Not.Empty);
        }
        var c3 = runner.Run(runner.Select(["c"]).Single());
        Assert.That(c3.Passed, Is.False);
        Assert.That(c3.Failure, Does.Contain("point projections"));
    }

    // ------------------------------------------------------------------ conversion

    [Test]
    public void OriginalToHfIsByteIdenticalToTheFixture()
    {
        string outPath = Path.Combine(_tmp, "model.safetensors");
        using (var orig = SafetensorsFile.Open(TinyOriginal)) HuggingFaceConverter.ToHf(orig, outPath);
        Assert.That(File.ReadAllBytes(outPath), Is.EqualTo(File.ReadAllBytes(TinyHf)));
    }

    [Test]
    public void HfToOriginalToHfRoundTripIsByteIdentical()
    {
        var cfg = HuggingFaceFolder.LoadConfig(TinyHfFolder).Config;
        string original = Path.Combine(_tmp, "original.safetensors"), back = Path.Combine(_tmp, "back.safetensors");
        IReadOnlyList<string> missing;
        using (var hf = SafetensorsFile.Open(TinyHf)) missing = HuggingFaceConverter.ToOriginal(hf, cfg, original);
        Assert.That(missing, Has.Count.EqualTo(6));
        using (var o = SafetensorsFile.Open(original))
        {
            Assert.That(StateDictMapper.DetectLayout(o.Names), Is.EqualTo(CheckpointLayout.Released));
            Assert.That(o.Names, Has.Count.EqualTo(623 - 6));
            HuggingFaceConverter.ToHf(o, back);
        }
        Assert.That(File.ReadAllBytes(back), Is.EqualTo(File.ReadAllBytes(TinyHf)));

        // the converted original loads (RoPE tables verified) with detector point prompts disabled
        using var model = Sam3ModelLoader.LoadImageModel(original, Sam3Config.Tiny);
        Assert.That(model.geometry_encoder.PointProjectionsUnavailable, Is.Not.Null);
    }

    [Test]
    public void HfPlusSidecarRebuildsEveryOriginalTensorBitExactly()
    {
        var cfg = HuggingFaceFolder.LoadConfig(TinyHfFolder).Config;
        string original = Path.Combine(_tmp, "original.safetensors");
        using (var hf = SafetensorsFile.Open(TinyHf))
        using (var side = SafetensorsFile.Open(Sidecar))
            Assert.That(HuggingFaceConverter.ToOriginal(hf, cfg, original, side), Is.Empty);
        using var mine = SafetensorsFile.Open(original);
        using var reference = SafetensorsFile.Open(TinyOriginal);
        Assert.That(mine.Names.OrderBy(n => n, StringComparer.Ordinal), Is.EqualTo(reference.Names.OrderBy(n => n, StringComparer.Ordinal)));
        using var scope = NewDisposeScope();
        foreach (var name in reference.Names)
        {
            Assert.That(mine.Info(name), Is.EqualTo(reference.Info(name)).Using<CheckpointTensorInfo>((x, y) =>
                x.Shape.SequenceEqual(y.Shape) && x.DType == y.DType && x.ComplexAsReal == y.ComplexAsReal), name);
            Assert.That(BitEqual(mine.Load(name), reference.Load(name)), Is.True, $"{name} differs");
        }
    }

    [Test]
    public void TokenizerFilesOfTheFolderTokenizeLikeTheReferenceVocabulary()
    {
        var files = HuggingFaceFolder.TokenizerFiles(TinyHfFolder);
        Assert.That(files, Is.Not.Null);
        var options = new Sam3.Torch.Text.ClipTokenizerOptions { Text = Sam3Config.Tiny.Text };
        var hf = Sam3.Torch.Text.ClipBpeTokenizer.FromHuggingFace(files!.Value.Vocab, files.Value.Merges, options);
        var gz = Sam3.Torch.Text.ClipBpeTokenizer.FromBpeGz(SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"), options);
        using var scope = NewDisposeScope();
        string[] texts = ["a cat", "two dogs on a red couch", "Zebra's stripes!", ""];
        var (a, am) = hf.TokenizeToTensors(texts);
        var (b, bm) = gz.TokenizeToTensors(texts);
        Assert.That(BitEqual(a, b) && BitEqual(am, bm), Is.True);
    }

    // ------------------------------------------------------------------ config.json

    [Test]
    public void TinyHfConfigIsTheTinyArchitectureKeepingTheOriginalVitEps()
    {
        Assert.That(HuggingFaceFolder.IsHfFolder(TinyHfFolder), Is.True);
        Assert.That(HuggingFaceFolder.IsHfFolder(SharedData.Parity("tiny")), Is.False);
        var tiny = Sam3Config.Load(SharedData.Parity("tiny", "config.json"));

        var r = HuggingFaceFolder.LoadConfig(TinyHfFolder);
        Assert.That(r.Config.SameArchitecture(tiny), Is.True, r.Config.ToJson());
        Assert.That(r.Config.HardcodedInClasses.VitLayerNormEps, Is.EqualTo(1e-5));
        Assert.That(r.Differences, Has.Count.EqualTo(1));
        Assert.That(r.Differences[0], Does.Contain("layer_norm_eps").And.Contain("1E-06").And.Contain("1E-05"));

        var hfNumerics = HuggingFaceFolder.LoadConfig(TinyHfFolder, HfNumerics.HuggingFace);
        Assert.That(hfNumerics.Config.HardcodedInClasses.VitLayerNormEps, Is.EqualTo(1e-6));
        Assert.That(hfNumerics.Config.SameArchitecture(tiny), Is.False);
    }

    [Test]
    public void ConfigErrorsNameTheField()
    {
        var json = File.ReadAllText(SharedData.Parity("tiny_hf", "config.json"));
        var node = System.Text.Json.Nodes.JsonNode.Parse(json)!;
        node["detector_config"]!["detr_decoder_config"]!.AsObject().Remove("num_queries");
        var e = Assert.Throws<Sam3ConfigException>(() => HuggingFaceConfig.FromJson(node.ToJsonString()))!;
        Assert.That(e.Message, Does.Contain("detector_config.detr_decoder_config.num_queries"));

        node["model_type"] = "sam2_video";
        Assert.Throws<Sam3ConfigException>(() => HuggingFaceConfig.FromJson(node.ToJsonString()));
    }

    [Test]
    public void VitRopeTablesFromTheConfigAreBitExact()
    {
        using var reference = SafetensorsFile.Open(TinyOriginal);
        using var scope = NewDisposeScope();
        var tables = HuggingFaceConverter.VitRopeTables(HuggingFaceFolder.LoadConfig(TinyHfFolder).Config.Vit);
        Assert.That(tables, Has.Count.EqualTo(4));
        foreach (var (key, table) in tables)
            Assert.That(BitEqual(table, reference.Load("detector.backbone.vision_backbone.trunk." + key)), Is.True, key);
    }
}
