using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Cli.Hostile;

/// <summary>
/// Library side of issue 17 on the tiny model: several threads on one model give the sequential results; all boxes
/// in one detector run (countable: the detector's text-encoder activation is offered once) with the result of adding
/// them one by one; the configuration validator names the field; path identity sees through links.
/// </summary>
[TestFixture, Category("Fast")]
public class HostileLibraryTests
{
    private Sam3Model _model = null!;
    private RgbImage _image = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        _model = Sam3Model.Load(SharedData.Parity("tiny", "model.safetensors"),
            new Sam3ModelOptions { Config = Sam3Config.Tiny, TokenizerPath = SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz") });
        _image = ImageLoader.Load(SharedData.Parity("inputs", "test_image.jpg"));
    }

    [OneTimeTearDown]
    public void TearDown() => _model?.Dispose();

    private static readonly string[] Prompts = ["cat", "person", "red car", "a dog on grass"];

    private float[][] RunPrompts(IEnumerable<string> prompts)
    {
        using var predictor = _model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = 0 });
        using var state = predictor.SetImage(_image);
        return prompts.Select(p => predictor.SetTextPrompt(state, p)[0].Scores()).ToArray();
    }

    [Test]
    public void FourThreadsOnOneModelGiveTheSequentialResults()
    {
        var sequential = RunPrompts(Prompts);
        Assert.That(sequential.Sum(s => s.Length), Is.GreaterThan(0), "threshold 0 keeps every query");
        var parallel = new float[4][][];
        var threads = Enumerable.Range(0, 4).Select(t => new Thread(() => parallel[t] = RunPrompts(Prompts.Skip(t).Concat(Prompts.Take(t))))).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        for (int t = 0; t < 4; t++)
            for (int k = 0; k < Prompts.Length; k++)
            {
                var expected = sequential[(k + t) % Prompts.Length];
                Assert.That(parallel[t][k], Has.Length.EqualTo(expected.Length), $"thread {t}, prompt {Prompts[(k + t) % Prompts.Length]}");
                Assert.That(parallel[t][k], Is.EqualTo(expected).Within(1e-5f), $"thread {t}, prompt {Prompts[(k + t) % Prompts.Length]}");
            }
    }

    [Test]
    public void ManyBoxesRunTheDetectorOnceWithTheResultOfAddingThemOneByOne()
    {
        var boxes = Enumerable.Range(0, 12).Select(i => BoxPrompt.Xyxy(5 + i * 9, 10 + i * 3, 60 + i * 9, 80 + i * 3, positive: i % 5 != 4)).ToList();
        using var predictor = _model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = 0 });
        using var one = predictor.SetImage(_image);
        float[] oneByOne = [];
        predictor.SetTextPrompt(one, "cat");
        foreach (var b in boxes) oneByOne = predictor.AddBox(one, b)[0].Scores();

        using var all = predictor.SetImage(_image);
        float[] together;
        int runs;
        using (var recorder = _model.Record(n => n.StartsWith("text.out.0", StringComparison.Ordinal)))
        {
            together = predictor.SetPrompts(all, "cat", boxes)[0].Scores();
            runs = recorder.Names.Count;
        }
        Assert.That(runs, Is.EqualTo(1), "one detector run for 12 boxes");
        Assert.That(together, Is.EqualTo(oneByOne).Within(1e-5f));
        Assert.That(all.Boxes, Has.Count.EqualTo(12));
    }

    [Test]
    public void ABadBoxAmongManyKeepsNoneOfThem()
    {
        using var predictor = _model.CreateImagePredictor();
        using var state = predictor.SetImage(_image);
        var boxes = new[] { BoxPrompt.Xyxy(1, 1, 20, 20), BoxPrompt.Xyxy(1, 1, 20_000, 20) };
        Assert.Throws<Sam3PromptException>(() => predictor.SetPrompts(state, "cat", boxes));
        Assert.That(state.Boxes, Is.Empty);
        Assert.That(state.TextPrompt, Is.Null);
    }

    [TestCase("vit.embed_dim", "-8")]
    [TestCase("decoder.num_queries", "0")]
    [TestCase("image_std", "[0.5, 0, 0.5]")]
    [TestCase("tracker.memory_attention.num_layers", "-2")]
    public void ConfigurationWithABadNumberNamesTheField(string field, string value)
    {
        var e = Assert.Throws<Sam3ConfigException>(() => Sam3Config.FromJson(HostileCorpus.TinyConfigWith(field, value)));
        Assert.That(e!.Message, Does.Contain(field.Split('.')[^1]));
        Assert.That(e.Message, Does.Not.Contain("\n"));
    }

    [Test]
    public void BuiltInConfigurationsAndTheTinyFixturePassTheValidator()
    {
        Assert.DoesNotThrow(() => ConfigValidation.Check(Sam3Config.Full));
        Assert.DoesNotThrow(() => ConfigValidation.Check(Sam3Config.Tiny));
        Assert.DoesNotThrow(() => Sam3Config.Load(SharedData.Parity("tiny", "config.json")));
    }

    [Test]
    public void PathIdentitySeesThroughLinksDotDotAndHardLinks()
    {
        Assume.That(PathIdentity.NativeAvailable, "inode identity needs Linux glibc");
        string dir = Path.Combine(Path.GetTempPath(), "sam3-identity-" + Guid.NewGuid().ToString("N"));
        try
        {
            Directory.CreateDirectory(Path.Combine(dir, "a", "b"));
            string file = Path.Combine(dir, "a", "f.bin");
            File.WriteAllBytes(file, new byte[42]);
            Directory.CreateSymbolicLink(Path.Combine(dir, "link"), Path.Combine(dir, "a"));
            File.CreateSymbolicLink(Path.Combine(dir, "flink"), file);
            HostileCorpus.HardLink(file, Path.Combine(dir, "hard.bin"));
            Assert.That(PathIdentity.SameFile(file, Path.Combine(dir, "link", "f.bin")), Is.True, "linked folder");
            Assert.That(PathIdentity.SameFile(file, Path.Combine(dir, "a", "b", "..", "f.bin")), Is.True, "..");
            Assert.That(PathIdentity.SameFile(file, Path.Combine(dir, "hard.bin")), Is.True, "hard link");
            Assert.That(PathIdentity.SameFile(file, Path.Combine(dir, "flink")), Is.True, "file link");
            Assert.That(PathIdentity.SameFile(file, Path.Combine(dir, "a", "g.bin")), Is.False);
            Assert.That(PathIdentity.Stat(Path.Combine(dir, "flink")).Size, Is.EqualTo(42), "the target's size, not the link's");
            Assert.That(FileLength.Of(Path.Combine(dir, "flink")), Is.EqualTo(42));
            Assert.That(PathIdentity.Stat("/dev/zero").Kind, Is.EqualTo(FileKind.Other));
            Assert.That(PathIdentity.Resolve(Path.Combine(dir, "link", "b", "..", "new.txt")), Is.EqualTo(Path.Combine(PathIdentity.Resolve(dir), "a", "new.txt")));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
