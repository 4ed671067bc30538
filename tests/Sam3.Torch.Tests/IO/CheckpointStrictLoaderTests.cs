using NUnit.Framework;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static Sam3.Torch.Tests.IO.CheckpointTestFiles;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.IO;

[TestFixture, Category("Fast")]
public class CheckpointStrictLoaderTests
{
    private CheckpointTestFiles _files = null!;
    private string _released = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        _files = new CheckpointTestFiles();
        // a tiny checkpoint in the released layout
        using var scope = NewDisposeScope();
        _released = _files.File("released.safetensors");
        SafetensorsWriter.Write(_released, new Dictionary<string, Tensor>
        {
            ["detector.backbone.w"] = torch.arange(0, 6, dtype: ScalarType.Float32).reshape(2, 3),
            ["detector.backbone.blocks.0.attn.freqs_cis"] = torch.polar(torch.ones(4, 2), torch.arange(0, 8, dtype: ScalarType.Float32).reshape(4, 2)),
            ["detector.backbone.vision_backbone.sam2_convs.0.weight"] = torch.ones(2),
            ["detector.head.count"] = torch.tensor(new long[] { 3 }),
            ["tracker.sam.w"] = torch.full(3, 5.0f),
        });
    }

    [OneTimeTearDown] public void TearDown() => _files.Dispose();

    private static readonly ExpectedTensor[] ImageModel =
    [
        new("backbone.w", [2, 3], ScalarType.Float32),
        new("backbone.vision_backbone.sam2_convs.0.weight", [2], ScalarType.Float32),
        new("head.count", [1], ScalarType.Int64),
        new("inst_interactive_predictor.model.sam.w", [3], ScalarType.Float32),
    ];

    [Test]
    public void LoadsMappedTensorsAndHandsOverComplexBuffers()
    {
        using var ck = CheckpointFile.Open(_released);
        var seen = new List<string>();
        var progress = new List<(int done, int total, string key)>();
        using var loaded = StrictLoader.Load(ck, ImageModel, new StrictLoadOptions
        {
            Mapping = StateDictMapper.ForImageModel(ck.Names, enableInstInteractivity: true),
            OnComplexBuffer = b => seen.Add(b.Key),
            Progress = new SyncProgress<(int, int, string)>(p => progress.Add(p)),
        });
        Assert.That(loaded.Tensors.Keys, Is.EqualTo(ImageModel.Select(e => e.Key)));
        Assert.That(Floats(loaded.Tensors["backbone.w"]), Is.EqualTo(Range(6)));
        Assert.That(Floats(loaded.Tensors["inst_interactive_predictor.model.sam.w"]), Is.EqualTo(new float[] { 5, 5, 5 }));
        Assert.That(loaded.Tensors["head.count"].dtype, Is.EqualTo(ScalarType.Int64));

        Assert.That(seen, Is.EqualTo(new[] { "backbone.blocks.0.attn.freqs_cis" }));
        var buffer = loaded.ComplexBuffers.Single();
        Assert.That(buffer.SourceKey, Is.EqualTo("detector.backbone.blocks.0.attn.freqs_cis"));
        Assert.That(buffer.Shape, Is.EqualTo(new long[] { 4, 2 }));

        // verification against a recomputed table: exact for the same table, large for a different one
        using var scope = NewDisposeScope();
        var angles = torch.arange(0, 8, dtype: ScalarType.Float32).reshape(4, 2);
        Assert.That(buffer.MaxAbsDifference(torch.polar(torch.ones(4, 2), angles)), Is.LessThan(1e-6));
        Assert.That(buffer.MaxAbsDifference(torch.polar(torch.ones(4, 2), angles + 0.5f)), Is.GreaterThan(0.1));
        Assert.Throws<Sam3CheckpointException>(() => buffer.MaxAbsDifference(torch.ones(3, 2, 2)));

        Assert.That(progress.Select(p => p.done), Is.EqualTo(Enumerable.Range(1, 5)));
        Assert.That(progress.All(p => p.total == 5), Is.True);
    }

    [Test]
    public void EveryProblemIsListedInOneException()
    {
        using var ck = CheckpointFile.Open(_released);
        ExpectedTensor[] expected =
        [
            new("backbone.w", [3, 2], ScalarType.Float32),                 // wrong shape
            new("head.count", [1], ScalarType.Float32),                    // int64 in the checkpoint: wrong dtype kind
            new("neck.missing_a", [4], ScalarType.Float32),                // missing
            new("neck.missing_b", [4, 4], ScalarType.Float32),             // missing
            new("backbone.blocks.0.attn.freqs_cis", [5, 2], ScalarType.ComplexFloat32), // complex buffer, wrong shape
        ];
        var ex = Assert.Throws<Sam3CheckpointMismatchException>(() => StrictLoader.Load(ck, expected, new StrictLoadOptions
        {
            Mapping = StateDictMapper.ForImageModel(ck.Names, enableInstInteractivity: false),
        }));
        Assert.That(ex!.MissingKeys, Is.EqualTo(new[] { "neck.missing_a", "neck.missing_b" }));
        Assert.That(ex.UnexpectedKeys, Is.EqualTo(new[] { "backbone.vision_backbone.sam2_convs.0.weight" }));
        Assert.That(ex.WrongShapeKeys, Is.EquivalentTo(new[] { "backbone.w", "backbone.blocks.0.attn.freqs_cis" }));
        Assert.That(ex.WrongDTypeKeys, Is.EqualTo(new[] { "head.count" }));
        foreach (var k in ex.MissingKeys.Concat(ex.UnexpectedKeys).Concat(ex.WrongShapeKeys).Concat(ex.WrongDTypeKeys))
            Assert.That(ex.Message, Does.Contain(k));
        Assert.That(ex.Message, Does.Contain("2 missing, 1 unexpected, 2 wrongly shaped, 1 wrongly typed"));
        Assert.That(ex.Message, Does.Contain("checkpoint [2, 3], model [3, 2]"));
        Assert.That(ex, Is.InstanceOf<Sam3CheckpointException>());
    }

    [Test]
    public void LongListsAreCappedInTheMessageButCompleteInTheException()
    {
        using var ck = CheckpointFile.Open(_released);
        var expected = ImageModel.Concat(Enumerable.Range(0, 120).Select(i => new ExpectedTensor($"missing.{i}", [1], ScalarType.Float32))).ToList();
        var ex = Assert.Throws<Sam3CheckpointMismatchException>(() => StrictLoader.Load(ck, expected, new StrictLoadOptions
        {
            Mapping = StateDictMapper.ForImageModel(ck.Names, enableInstInteractivity: true),
        }));
        Assert.That(ex!.MissingKeys, Has.Count.EqualTo(120));
        Assert.That(ex.Message, Does.Contain("missing.49").And.Contain("... and 70 more"));
        Assert.That(ex.Message, Does.Not.Contain("missing.50\n"));
    }

    [Test]
    public void UnusedKeysCanBeAllowedExplicitly()
    {
        using var ck = CheckpointFile.Open(_released);
        var expected = ImageModel.Where(e => !e.Key.StartsWith("inst_") && !e.Key.Contains("sam2_convs")).ToList();
        using var loaded = StrictLoader.Load(ck, expected, new StrictLoadOptions
        {
            Mapping = StateDictMapper.ForImageModel(ck.Names, enableInstInteractivity: false),
            IgnoreUnexpected = StateDictMapper.IsSam2NeckKey,
        });
        Assert.That(loaded.IgnoredKeys, Is.EqualTo(new[] { "backbone.vision_backbone.sam2_convs.0.weight" }));
        Assert.That(loaded.Tensors.Keys, Is.EqualTo(new[] { "backbone.w", "head.count" }));
    }

    [Test]
    public void CastsOnRequest()
    {
        using var ck = CheckpointFile.Open(_released);
        using var loaded = StrictLoader.Load(ck, ImageModel, new StrictLoadOptions
        {
            Mapping = StateDictMapper.ForImageModel(ck.Names, enableInstInteractivity: true),
            CastTo = ScalarType.BFloat16,
        });
        Assert.That(loaded.Tensors["backbone.w"].dtype, Is.EqualTo(ScalarType.BFloat16));
        Assert.That(Floats(loaded.Tensors["backbone.w"]), Is.EqualTo(Range(6)));
        Assert.That(loaded.Tensors["head.count"].dtype, Is.EqualTo(ScalarType.Int64), "integer tensors are not cast");
        Assert.That(loaded.ComplexBuffers.Single().AsReal.dtype, Is.EqualTo(ScalarType.Float32), "complex buffers are not cast");
    }

    [Test]
    public void LoadsIntoATorchSharpModule()
    {
        using var scope = NewDisposeScope();
        var module = nn.Sequential(("0", nn.Linear(4, 3)), ("1", nn.LayerNorm(3)));
        string path = _files.File("module.safetensors");
        var w = torch.arange(0, 12, dtype: ScalarType.Float32).reshape(3, 4);
        SafetensorsWriter.Write(path, new Dictionary<string, Tensor>
        {
            ["0.weight"] = w.to(ScalarType.BFloat16),   // converted to the module's float32 on copy
            ["0.bias"] = torch.full(3, 0.5f),
            ["1.weight"] = torch.full(3, 2.0f),
            ["1.bias"] = torch.full(3, -1.0f),
            ["2.attn.freqs_cis"] = torch.polar(torch.ones(2, 2), torch.zeros(2, 2)),
        });
        using var ck = CheckpointFile.Open(path);
        var buffers = StrictLoader.LoadInto(module, ck);
        var sd = module.state_dict();
        Assert.That(Floats(sd["0.weight"]), Is.EqualTo(Floats(w)));
        Assert.That(sd["0.weight"].dtype, Is.EqualTo(ScalarType.Float32));
        Assert.That(Floats(sd["0.bias"]), Is.EqualTo(new[] { 0.5f, 0.5f, 0.5f }));
        Assert.That(Floats(sd["1.bias"]), Is.EqualTo(new[] { -1f, -1f, -1f }));
        Assert.That(buffers.Single().Key, Is.EqualTo("2.attn.freqs_cis"));
        Assert.That(buffers.Single().MaxAbsDifference(torch.polar(torch.ones(2, 2), torch.zeros(2, 2))), Is.EqualTo(0.0));
        foreach (var b in buffers) b.AsReal.Dispose();

        // a module with one more parameter than the checkpoint: strict failure naming it
        var bigger = nn.Sequential(("0", nn.Linear(4, 3)), ("1", nn.LayerNorm(3)), ("3", nn.Linear(3, 3)));
        var ex = Assert.Throws<Sam3CheckpointMismatchException>(() => StrictLoader.LoadInto(bigger, ck));
        Assert.That(ex!.MissingKeys, Is.EqualTo(new[] { "3.weight", "3.bias" }));
    }

    [Test]
    public void TinyFixtureLoadsStrictlyIntoTheImageModelLayout()
    {
        using var ck = CheckpointFile.Open(SharedData.Parity("tiny", "model.safetensors"));
        var manifest = ManifestFile.ReadTiny(SharedData.Parity("tiny", "model_manifest.json"), "image_model_state_dict");
        // the C# model will not hold complex buffers: expect everything else
        var expected = manifest.Entries.Where(e => !CheckpointDTypes.IsComplex(e.DType)).ToList();
        Assert.That(expected, Has.Count.EqualTo(619));
        using var loaded = StrictLoader.Load(ck, expected, new StrictLoadOptions
        {
            Mapping = StateDictMapper.ForImageModel(ck.Names, enableInstInteractivity: true),
        });
        Assert.That(loaded.Tensors, Has.Count.EqualTo(619));
        Assert.That(loaded.ComplexBuffers.Select(b => b.Key), Is.EqualTo(Enumerable.Range(0, 4).Select(i => $"backbone.vision_backbone.trunk.blocks.{i}.attn.freqs_cis")));
        foreach (var e in expected) Assert.That(loaded.Tensors[e.Key].shape, Is.EqualTo(e.Shape), e.Key);

        // with the complex entries in the expected list (as the manifest has them), it matches as well
        using var loaded2 = StrictLoader.Load(ck, manifest.Entries, new StrictLoadOptions
        {
            Mapping = StateDictMapper.ForImageModel(ck.Names, enableInstInteractivity: true),
        });
        Assert.That(loaded2.ComplexBuffers, Has.Count.EqualTo(4));
    }

    /// <summary>
    /// The full released key set (1,465 keys with their real shapes, incl. 32 complex64 freqs_cis) as a hand-built .pt
    /// whose tensors are stride-0 views of one-element storages, loaded strictly into the full image-model manifest.
    /// </summary>
    [Test]
    public void FullReleasedLayoutPtLoadsStrictlyIntoTheFullImageModel()
    {
        var keys = ManifestFile.ReadCheckpointKeys(SharedData.Parity("full", "checkpoint_keys.json")).Entries;
        var image = ManifestFile.ReadFull(SharedData.Parity("full", "manifest.json"), "image_model").Entries;
        var b = new TorchPtBuilder { WrapInModel = true };
        for (int i = 0; i < keys.Count; i++)
        {
            var e = keys[i];
            bool complex = CheckpointDTypes.IsComplex(e.DType);
            b.AddStorage($"{i}", complex ? "ComplexFloatStorage" : "FloatStorage", complex ? PolarBytes(0.5) : BitConverter.GetBytes((float)i), 1);
            b.AddTensor(e.Key, $"{i}", 0, e.Shape, new long[e.Shape.Length]);
        }
        string path = _files.File("sam3-layout.pt");
        b.Write(path);

        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var ck = CheckpointFile.Open(path);
        double openMs = sw.Elapsed.TotalMilliseconds;
        Assert.That(ck.Names, Is.EqualTo(keys.Select(e => e.Key)));
        var s = CheckpointInspector.Summarize(ck);
        Assert.That(s.KeyCount, Is.EqualTo(1465));
        Assert.That(s.ParameterCount, Is.EqualTo(860_055_224L));

        var expected = image.Where(e => !CheckpointDTypes.IsComplex(e.DType)).ToList();
        sw.Restart();
        using var loaded = StrictLoader.Load(ck, expected, new StrictLoadOptions
        {
            Mapping = StateDictMapper.ForImageModel(ck.Names, enableInstInteractivity: true),
        });
        TestContext.Progress.WriteLine($"1,465-key .pt: open {openMs:F0} ms, strict load (views) {sw.Elapsed.TotalMilliseconds:F0} ms");
        Assert.That(loaded.Tensors, Has.Count.EqualTo(1433));
        Assert.That(loaded.ComplexBuffers, Has.Count.EqualTo(32));
        Assert.That(loaded.Tensors["backbone.vision_backbone.trunk.pos_embed"].shape, Is.EqualTo(new long[] { 1, 577, 1024 }));
        Assert.That(loaded.Tensors["backbone.vision_backbone.trunk.pos_embed"][0, 576, 1023].ToSingle(), Is.EqualTo(0f));
        Assert.That(loaded.ComplexBuffers[31].Shape, Is.EqualTo(new long[] { 5184, 32 }));
        Assert.That(loaded.ComplexBuffers[31].AsReal[5183, 31, 1].ToSingle(), Is.EqualTo((float)Math.Sin(0.5)));
    }

    [Test]
    public void TinyFixtureWithoutInteractivityMissesTheTrackerKeys()
    {
        using var ck = CheckpointFile.Open(SharedData.Parity("tiny", "model.safetensors"));
        var manifest = ManifestFile.ReadTiny(SharedData.Parity("tiny", "model_manifest.json"), "image_model_state_dict");
        var ex = Assert.Throws<Sam3CheckpointMismatchException>(() => StrictLoader.Load(ck, manifest.Entries, new StrictLoadOptions
        {
            Mapping = StateDictMapper.ForImageModel(ck.Names, enableInstInteractivity: false),
        }));
        int trackerKeys = ck.Names.Count(n => n.StartsWith("tracker."));
        Assert.That(ex!.MissingKeys, Has.Count.EqualTo(trackerKeys));
        Assert.That(ex.MissingKeys.All(k => k.StartsWith("inst_interactive_predictor.model.")), Is.True);
        Assert.That(ex.UnexpectedKeys, Is.Empty);
    }
}
