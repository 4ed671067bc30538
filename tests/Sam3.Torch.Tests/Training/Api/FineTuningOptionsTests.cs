using NUnit.Framework;
using Sam3.Torch.Tests.Cli;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;

namespace Sam3.Torch.Tests.Training.Api;

/// <summary>
/// The public fine-tuning and evaluation options: every bad value is refused before anything is loaded, with an
/// <see cref="ArgumentException"/> whose ParamName is the offending property and whose message shows the value.
/// </summary>
[TestFixture, Category("Fast")]
public class FineTuningOptionsTests
{
    private static Sam3FineTuningOptions Valid => new() { CheckpointPath = "sam3/", DataDirectory = "data/", OutputDirectory = "out/" };

    private static IEnumerable<TestCaseData> BadOptions()
    {
        TestCaseData Case(string param, string shown, Func<Sam3FineTuningOptions, Sam3FineTuningOptions> bad) =>
            new TestCaseData(bad, param, shown).SetName($"{param}: {shown}");
        yield return Case("CheckpointPath", "CheckpointPath", o => o with { CheckpointPath = " " });
        yield return Case("DataDirectory", "DataDirectory", o => o with { DataDirectory = "" });
        yield return Case("OutputDirectory", "OutputDirectory", o => o with { OutputDirectory = "" });
        yield return Case("Epochs", "0", o => o with { Epochs = 0 });
        yield return Case("MaxSteps", "-3", o => o with { MaxSteps = -3 });
        yield return Case("LearningRateScale", "0", o => o with { LearningRateScale = 0 });
        yield return Case("LearningRateScale", "NaN", o => o with { LearningRateScale = double.NaN });
        yield return Case("WarmupSteps", "-1", o => o with { WarmupSteps = -1 });
        yield return Case("CooldownSteps", "-2", o => o with { CooldownSteps = -2 });
        yield return Case("BatchSize", "0", o => o with { BatchSize = 0 });
        yield return Case("AccumulationSteps", "-1", o => o with { AccumulationSteps = -1 });
        yield return Case("Seed", "-5", o => o with { Seed = -5 });
        yield return Case("Freeze", "42", o => o with { Freeze = (Sam3FreezePreset)42 });
        yield return Case("EvaluationSplit", "../x", o => o with { EvaluationSplit = "../x" });
        yield return Case("FrozenModules", "empty", o => o with { FrozenModules = ["backbone", " "] });
        yield return Case("Lora", "at least one", o => o with { Lora = [] });
        yield return Case("Lora", "0", o => o with { Lora = [new Sam3LoraPart { Rank = 0 }] });
        yield return Case("Lora", "-1", o => o with { Lora = [new Sam3LoraPart { Target = Sam3LoraTarget.Mlp, Alpha = -1 }] });
        yield return Case("Lora", "Attention twice", o => o with { Lora = [new Sam3LoraPart(), new Sam3LoraPart { Rank = 4 }] });
        yield return Case("Freeze", "AllBackbones", o => o with { Lora = [new Sam3LoraPart()], Freeze = Sam3FreezePreset.AllBackbones });
        yield return Case("FrozenModules", "FrozenModules", o => o with { Lora = [new Sam3LoraPart()], FrozenModules = ["backbone"] });
    }

    [TestCaseSource(nameof(BadOptions))]
    public void BadOptionIsAnArgumentExceptionNamingIt(Func<Sam3FineTuningOptions, Sam3FineTuningOptions> bad, string param, string shown)
    {
        var options = bad(Valid);
        var e = Assert.Throws(Is.InstanceOf<ArgumentException>(), () => options.Validate()) as ArgumentException;
        Assert.That(e!.ParamName, Is.EqualTo(param));
        Assert.That(e.Message, Does.Contain(shown));
        // Run refuses it the same way, before touching the (non-existent) checkpoint or data
        var run = Assert.Throws(Is.InstanceOf<ArgumentException>(), () => Sam3FineTuning.Run(options)) as ArgumentException;
        Assert.That(run!.ParamName, Is.EqualTo(param));
    }

    [Test]
    public void DefaultsAreValidAndUpstreams()
    {
        Assert.DoesNotThrow(() => Valid.Validate());
        Assert.DoesNotThrow(() => (Valid with { Lora = [new Sam3LoraPart(), new Sam3LoraPart { Target = Sam3LoraTarget.Mlp }] }).Validate());
        var d = Sam3.Torch.Training.TrainingConfig.Default;
        Assert.That(Valid.LearningRateScale, Is.EqualTo(d.Optimizer.LrScale));
        Assert.That((Valid.WarmupSteps, Valid.CooldownSteps), Is.EqualTo((d.Schedule.WarmupSteps, d.Schedule.CooldownSteps)));
        Assert.That((new Sam3LoraPart().Rank, new Sam3LoraPart().Alpha), Is.EqualTo((8, 16.0)));
    }

    [Test]
    public void EvaluationOptionsNameTheBadValue()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new Sam3EvaluationOptions { MaxImages = 0 }.Validate());
        Assert.That(e!.ParamName, Is.EqualTo("MaxImages"));
        var s = Assert.Throws<ArgumentException>(() => new Sam3EvaluationOptions { Split = "a/b" }.Validate());
        Assert.That((s!.ParamName, s.Message.Contains("a/b")), Is.EqualTo(("Split", true)));
    }

    [Test]
    public void MissingDataSplitCheckpointAndAStaleCheckpointAreTypedErrors()
    {
        string dir = Directory.CreateTempSubdirectory("sam3-ftapi-opts-").FullName;
        try
        {
            string data = SyntheticShapes.Write(Path.Combine(dir, "data"), SyntheticShapes.Default.Take(1).ToList());
            string outDir = Path.Combine(dir, "out");
            var o = new Sam3FineTuningOptions
            {
                CheckpointPath = FinetuneWorkflowTests.TinyCheckpoint, DataDirectory = data, OutputDirectory = outDir,
                Config = Sam3.Torch.Config.Sam3Config.Tiny, TokenizerPath = FinetuneWorkflowTests.Vocab,
            };
            var noTrain = Assert.Throws<ArgumentException>(() => Sam3FineTuning.Run(o with { DataDirectory = dir }));
            Assert.That((noTrain!.ParamName, noTrain.Message.Contains("train/_annotations.coco.json")), Is.EqualTo(("DataDirectory", true)));
            var noSplit = Assert.Throws<ArgumentException>(() => Sam3FineTuning.Run(o with { EvaluationSplit = "test" }));
            Assert.That(noSplit!.ParamName, Is.EqualTo("EvaluationSplit"));
            Assert.Throws<Sam3CheckpointException>(() => Sam3FineTuning.Run(o with { CheckpointPath = Path.Combine(dir, "missing.pt") }));
            Assert.That(Directory.Exists(outDir), Is.False, "nothing written before the options and files are checked");

            // Resume = false refuses a folder that holds a training checkpoint (before loading anything)
            Directory.CreateDirectory(Path.Combine(outDir, "checkpoint"));
            File.WriteAllText(Path.Combine(outDir, "checkpoint", "trainer.json"), "{}");
            var stale = Assert.Throws<Sam3StateException>(() => Sam3FineTuning.Run(o with { Resume = false, Evaluate = false }));
            Assert.That(stale!.Message, Does.Contain("Resume"));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Test]
    public void ASecondRunOnTheSameOutputFolderIsRefusedWhileTheFirstHoldsIt()
    {
        string dir = Directory.CreateTempSubdirectory("sam3-ftapi-lock-").FullName;
        try
        {
            string data = SyntheticShapes.Write(Path.Combine(dir, "data"), SyntheticShapes.Default.Take(1).ToList());
            string outDir = Directory.CreateDirectory(Path.Combine(dir, "out")).FullName;
            var o = new Sam3FineTuningOptions
            {
                CheckpointPath = FinetuneWorkflowTests.TinyCheckpoint, DataDirectory = data, OutputDirectory = outDir,
                Config = Sam3.Torch.Config.Sam3Config.Tiny, TokenizerPath = FinetuneWorkflowTests.Vocab, Evaluate = false,
            };
            using (Sam3.Torch.IO.RunLock.ForFolder(outDir)) // another run (a CLI or an API call) holds the folder
            {
                var e = Assert.Throws<Sam3Exception>(() => Sam3FineTuning.Run(o));
                Assert.That(e!.Message, Does.Contain("in use"));
            }
            Assert.That(Directory.EnumerateFileSystemEntries(outDir), Is.Empty, "the refused run wrote nothing");
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
