using NUnit.Framework;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.Infrastructure;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.IO;

[TestFixture, Category("Fast")]
public class CheckpointMappingAndInspectorTests
{
    [Test]
    public void ReleasedMappingReproducesTheReferenceQuirks()
    {
        string[] keys =
        [
            "detector.backbone.a",
            "detector.x.detector.y",          // every "detector." is removed (str.replace), not only the prefix
            "head.detector_proj.w",           // contains "detector" but not "detector.": kept unchanged
            "tracker.sam.w",
            "other.w",                        // neither: dropped
            "tracker.detector.z",             // both: detector rule gives "tracker.z", tracker rule "inst_interactive_predictor.model.detector.z"
        ];
        var noInst = StateDictMapper.ReleasedToImageModel(keys, enableInstInteractivity: false);
        Assert.That(noInst.Select(m => (m.Source, m.Target)), Is.EqualTo(new[]
        {
            ("detector.backbone.a", "backbone.a"),
            ("detector.x.detector.y", "x.y"),
            ("head.detector_proj.w", "head.detector_proj.w"),
            ("tracker.detector.z", "tracker.z"),
        }));
        var inst = StateDictMapper.ReleasedToImageModel(keys, enableInstInteractivity: true);
        Assert.That(inst.Select(m => m.Target), Is.EqualTo(new[]
        {
            "backbone.a", "x.y", "head.detector_proj.w", "tracker.z",
            "inst_interactive_predictor.model.sam.w", "inst_interactive_predictor.model.detector.z",
        }));
    }

    [Test]
    public void LaterSourceWinsATargetLikeADictUpdate()
    {
        // "detector.a.w" and "a.detector.w" both map to "a.w"; Python keeps the first position and the last value
        var m = StateDictMapper.ReleasedToImageModel(["detector.a.w", "b", "a.detector.w"], false);
        Assert.That(m.Select(x => (x.Source, x.Target)), Is.EqualTo(new[] { ("a.detector.w", "a.w") }));
    }

    [Test]
    public void FullCheckpointKeysMapOntoTheFullImageModelExactly()
    {
        var ckpt = ManifestFile.ReadCheckpointKeys(SharedData.Parity("full", "checkpoint_keys.json"));
        var image = ManifestFile.ReadFull(SharedData.Parity("full", "manifest.json"), "image_model");
        var mapping = StateDictMapper.ForImageModel(ckpt.Entries.Select(e => e.Key).ToList(), enableInstInteractivity: true);
        Assert.That(mapping.Select(m => m.Target), Is.EqualTo(image.Entries.Select(e => e.Key)), "same keys in the same order");

        // shapes agree through the mapping
        var shapes = ckpt.Entries.ToDictionary(e => e.Key);
        // complex entries as the readers expose them: float32 [..., 2] flagged complex-as-real
        CheckpointTensorInfo Info(string k) => CheckpointDTypes.IsComplex(shapes[k].DType)
            ? new CheckpointTensorInfo(k, [.. shapes[k].Shape, 2], ScalarType.Float32, true)
            : new CheckpointTensorInfo(k, shapes[k].Shape, shapes[k].DType, false);
        var cmp = StateDictComparison.Compare(Info, mapping, image.Entries.Where(e => !CheckpointDTypes.IsComplex(e.DType)).ToList());
        Assert.That(cmp.IsMatch, Is.True, () => cmp.Describe("full/checkpoint_keys.json"));
        Assert.That(cmp.ComplexBuffers, Has.Count.EqualTo(32));
        // and with the complex entries expected too (complex64 logical shapes)
        cmp = StateDictComparison.Compare(Info, mapping, image.Entries);
        Assert.That(cmp.IsMatch, Is.True, () => cmp.Describe("full/checkpoint_keys.json"));

        // without interactivity: the 22 sam2_convs keys are the only extra detector keys (1,156 = 1,134 + 22)
        var noInst = StateDictMapper.ForImageModel(ckpt.Entries.Select(e => e.Key).ToList(), enableInstInteractivity: false);
        Assert.That(noInst, Has.Count.EqualTo(1156));
        Assert.That(noInst.Count(m => StateDictMapper.IsSam2NeckKey(m.Target)), Is.EqualTo(22));
    }

    [Test]
    public void TinyCheckpointLayoutMapsOntoTheTinyImageModel()
    {
        string path = SharedData.Parity("tiny", "model_manifest.json");
        var layout = ManifestFile.ReadTiny(path, "checkpoint_layout");
        var image = ManifestFile.ReadTiny(path, "image_model_state_dict");
        var mapping = StateDictMapper.ForImageModel(layout.Entries.Select(e => e.Key).ToList(), true);
        Assert.That(mapping.Select(m => m.Target), Is.EqualTo(image.Entries.Select(e => e.Key)));
    }

    [Test]
    public void LayoutDetection()
    {
        Assert.That(StateDictMapper.DetectLayout(["detector.backbone.x", "tracker.y"]), Is.EqualTo(CheckpointLayout.Released));
        Assert.That(StateDictMapper.DetectLayout(["backbone.vision_backbone.trunk.pos_embed"]), Is.EqualTo(CheckpointLayout.ImageModel));
        Assert.That(StateDictMapper.DetectLayout(["foo.bar"]), Is.EqualTo(CheckpointLayout.Unknown));
        string[] hf = ["detector_model.vision_encoder.backbone.layers.0.attention.q_proj.weight", "tracker_model.prompt_encoder.point_embed.weight"];
        Assert.That(StateDictMapper.DetectLayout(hf), Is.EqualTo(CheckpointLayout.HuggingFace));
        var ex = Assert.Throws<Sam3CheckpointException>(() => StateDictMapper.ForImageModel(hf, true));
        Assert.That(ex!.Message, Does.StartWith("Hugging Face transformers layout (detector_model.vision_encoder.backbone.layers.0.attention.q_proj.weight) is not a key renaming"));
        Assert.Throws<Sam3CheckpointException>(() => StateDictMapper.ForImageModel(["foo.bar"], true));
        Assert.That(StateDictMapper.ForImageModel(["backbone.a"], true).Single(), Is.EqualTo(new KeyMapping("backbone.a", "backbone.a")));
        Assert.That(StateDictMapper.ForVideoModel(["detector.a", "tracker.b"]).Select(m => m.Target), Is.EqualTo(new[] { "detector.a", "tracker.b" }));
        Assert.Throws<Sam3CheckpointException>(() => StateDictMapper.ForVideoModel(["backbone.a"]));
    }

    [Test]
    public void ReleasedCheckpointCountsFromTheManifests()
    {
        // 1,465 keys and 860,055,224 parameters (guide §1.1); buffers: 32 freqs_cis + the prompt encoder's gaussian matrix
        var ckpt = ManifestFile.ReadCheckpointKeys(SharedData.Parity("full", "checkpoint_keys.json"));
        var s = CheckpointInspector.Summarize(ckpt.Entries);
        Assert.That(s.KeyCount, Is.EqualTo(1465));
        Assert.That(s.ParameterCount, Is.EqualTo(860_055_224L));
        Assert.That(s.BufferKeyCount, Is.EqualTo(33));
        Assert.That(s.DTypeHistogram["float32"].Keys, Is.EqualTo(1433));
        Assert.That(s.DTypeHistogram["complex64"].Keys, Is.EqualTo(32));
        Assert.That(s.Layout, Is.EqualTo(CheckpointLayout.Released));

        foreach (var model in new[] { "image_model", "video_model" })
        {
            var m = ManifestFile.ReadFull(SharedData.Parity("full", "manifest.json"), model);
            Assert.That(m.Entries, Has.Count.EqualTo(1465));
            Assert.That(m.NumParameters, Is.EqualTo(860_055_224L));
            Assert.That(CheckpointInspector.Summarize(m.Entries).ParameterCount, Is.EqualTo(m.NumParameters), model);
        }

        // freqs_cis alone is not the buffer set: counting only those as buffers overshoots by the 2x128 gaussian matrix
        var onlyFreqs = CheckpointInspector.Summarize(ckpt.Entries, StateDictComparison.IsFreqsCis);
        Assert.That(onlyFreqs.ParameterCount, Is.EqualTo(860_055_224L + 256));
    }

    [Test]
    public void KnownBufferRuleAgreesWithTheReferenceParameterBufferTable()
    {
        var tsv = ManifestFile.ReadTsv(SharedData.Require("docs", "sam3-state-dict-video.tsv"));
        Assert.That(tsv.Entries, Has.Count.EqualTo(1465));
        foreach (var e in tsv.Entries) Assert.That(CheckpointInspector.IsKnownBuffer(e.Key), Is.EqualTo(e.IsBuffer), e.Key);
        var ckpt = ManifestFile.ReadCheckpointKeys(SharedData.Parity("full", "checkpoint_keys.json"));
        Assert.That(tsv.Entries.Select(e => (e.Key, string.Join(",", e.Shape), e.DType)),
            Is.EqualTo(ckpt.Entries.Select(e => (e.Key, string.Join(",", e.Shape), e.DType))));
    }

    [Test]
    public void TinyCheckpointSummaryAndComparison()
    {
        using var ck = CheckpointFile.Open(SharedData.Parity("tiny", "model.safetensors"));
        var s = CheckpointInspector.Summarize(ck);
        Assert.That(s.KeyCount, Is.EqualTo(623));
        Assert.That(s.ParameterCount, Is.EqualTo(2_810_328L), "tiny/config.json num_parameters");
        Assert.That(s.BufferKeyCount, Is.EqualTo(5));
        Assert.That(s.DTypeHistogram["complex64"].Keys, Is.EqualTo(4));
        TestContext.Progress.WriteLine(s.ToString());

        var layout = ManifestFile.ReadTiny(SharedData.Parity("tiny", "model_manifest.json"), "checkpoint_layout");
        var cmp = CheckpointInspector.Compare(ck, layout.Entries);
        Assert.That(cmp.IsMatch, Is.True, () => cmp.Describe(ck.Path));
        Assert.That(cmp.ComplexBuffers, Has.Count.EqualTo(4));

        // a doctored expectation: one key removed (-> unexpected), one reshaped, one added (-> missing)
        var doctored = layout.Entries.Skip(1).ToList();
        doctored[0] = doctored[0] with { Shape = [.. doctored[0].Shape, 1] };
        doctored.Add(new ExpectedTensor("detector.not_there", [1], ScalarType.Float32));
        var bad = CheckpointInspector.Compare(ck, doctored);
        Assert.That(bad.Unexpected.Select(m => m.Target), Is.EqualTo(new[] { layout.Entries[0].Key }));
        Assert.That(bad.WrongShape.Select(w => w.Key), Is.EqualTo(new[] { doctored[0].Key }));
        Assert.That(bad.Missing.Select(e => e.Key), Is.EqualTo(new[] { "detector.not_there" }));
    }

    [Test]
    public void MalformedManifestsAreTypedErrors()
    {
        using var files = new CheckpointTestFiles();
        string path = files.File("m.json");
        File.WriteAllText(path, "{\"keys\": [{\"key\": \"a\", \"shape\": [1], \"dtype\": \"float99\"}]}");
        Assert.Throws<Sam3CheckpointException>(() => ManifestFile.ReadCheckpointKeys(path));
        File.WriteAllText(path, "{not json");
        Assert.Throws<Sam3CheckpointException>(() => ManifestFile.ReadAny(path));
        File.WriteAllText(path, "{\"other\": 1}");
        Assert.Throws<Sam3CheckpointException>(() => ManifestFile.ReadFull(path));
        Assert.Throws<Sam3CheckpointException>(() => ManifestFile.ReadAny(files.File("absent.json")));
    }
}
