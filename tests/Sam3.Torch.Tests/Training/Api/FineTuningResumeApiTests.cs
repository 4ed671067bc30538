using NUnit.Framework;
using Sam3.Torch.IO;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Loop;

namespace Sam3.Torch.Tests.Training.Api;

/// <summary>
/// <see cref="Sam3FineTuning.Run"/> stopped by its cancellation token (mid-epoch, from the progress callback), then by
/// <see cref="Sam3FineTuningOptions.MaxSteps"/>, then run to the end, ends with the same loss per epoch and byte-identical
/// weights as one uninterrupted run (the CLI's SIGKILL counterpart: FinetuneResumeAfterKillTests).
/// </summary>
[TestFixture, Category("Slow")]
public class FineTuningResumeApiTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("sam3-ftapi-resume-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [Test]
    public void CancelledAndStepLimitedRunsResumeToTheUninterruptedWeights()
    {
        // 2 images, batch 1, 2 epochs: 4 steps
        string data = SyntheticShapes.Write(Path.Combine(_dir, "data"), SyntheticShapes.Default.Take(2).ToList());
        string reference = Path.Combine(_dir, "reference"), stopped = Path.Combine(_dir, "stopped");
        var common = FineTuningApiTests.Options(data, reference) with { Epochs = 2, Freeze = Sam3FreezePreset.AllBackbones, Seed = 3 };
        var whole = Sam3FineTuning.Run(common);
        Assert.That((whole.Completed, whole.Step, whole.TotalSteps), Is.EqualTo((true, 4, 4)));

        // 1) cancelled from the progress callback after step 1: saved mid-epoch, no exception, no result model
        var options = common with { OutputDirectory = stopped };
        using var cts = new CancellationTokenSource();
        var first = Sam3FineTuning.Run(options, new FineTuningApiTests.Sync<Sam3TrainingProgress>(p => { if (p.Step == 1) cts.Cancel(); }), cts.Token);
        Assert.That((first.Completed, first.Step, first.TotalSteps), Is.EqualTo((false, 1, 4)));
        Assert.That(first.CheckpointDirectory, Is.EqualTo(Path.Combine(stopped, "checkpoint")));
        Assert.That(first.ModelPath, Is.Null);
        Assert.That(File.Exists(Path.Combine(stopped, "model.safetensors")), Is.False);
        Assert.That(File.Exists(Path.Combine(first.CheckpointDirectory!, TrainerCheckpoint.StateFile)));
        // an already-cancelled token stops before any step and keeps the checkpoint as it was
        var none = Sam3FineTuning.Run(options, null, cts.Token);
        Assert.That((none.Completed, none.Step, none.TotalSteps), Is.EqualTo((false, 1, 4)));
        Assert.That(none.CheckpointDirectory, Is.EqualTo(first.CheckpointDirectory));

        // 2) continued for 2 steps only (MaxSteps): stopped at step 3, saved
        var steps = new List<int>();
        var second = Sam3FineTuning.Run(options with { MaxSteps = 2 }, new FineTuningApiTests.Sync<Sam3TrainingProgress>(p => steps.Add(p.Step)));
        Assert.That((second.Completed, second.Step), Is.EqualTo((false, 3)));
        Assert.That(steps, Is.EqualTo(new[] { 2, 3 }));

        // 3) continued to the end
        var third = Sam3FineTuning.Run(options);
        Assert.That((third.Completed, third.Step), Is.EqualTo((true, 4)));
        Assert.That(third.EpochLosses, Is.EqualTo(whole.EpochLosses), "the same loss per epoch as the uninterrupted run");
        using var a = SafetensorsFile.Open(whole.ModelPath!);
        using var b = SafetensorsFile.Open(third.ModelPath!);
        Assert.That(b.Names, Is.EquivalentTo(a.Names));
        foreach (var name in a.Names)
            Assert.That(Bytes(b, name).AsSpan().SequenceEqual(Bytes(a, name)), $"{name} differs from the uninterrupted run");
    }

    private static byte[] Bytes(SafetensorsFile f, string name)
    {
        var e = f.Entries[name];
        using var fs = File.OpenRead(f.Path);
        fs.Position = f.DataStart + e.Begin;
        var buf = new byte[e.End - e.Begin];
        fs.ReadExactly(buf);
        return buf;
    }
}
