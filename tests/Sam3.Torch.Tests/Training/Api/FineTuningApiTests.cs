using System.Text.Json.Nodes;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.Cli;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Loop;

namespace Sam3.Torch.Tests.Training.Api;

/// <summary>
/// The public fine-tuning API on the tiny model and synthetic shapes (<see cref="SyntheticShapes"/>): the loss falls over
/// a few steps and the progress reports are the logged ones; a run stopped by its cancellation token (and one stopped
/// by <see cref="Sam3FineTuningOptions.MaxSteps"/>) resumes to byte-identical final weights; LoRA adapters merged into a
/// loaded base equal the written fine-tuned model.
/// </summary>
[TestFixture, Category("Fast")]
public class FineTuningApiTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("sam3-ftapi-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    internal static Sam3FineTuningOptions Options(string data, string outDir) => new()
    {
        CheckpointPath = FinetuneWorkflowTests.TinyCheckpoint, Config = Sam3Config.Tiny, TokenizerPath = FinetuneWorkflowTests.Vocab,
        DataDirectory = data, OutputDirectory = outDir, Evaluate = false, TensorBoard = false,
    };

    /// <summary>Reports synchronously (unlike <see cref="Progress{T}"/>, which posts to the thread pool).</summary>
    private sealed class Sync<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }

    [Test]
    public void LossFallsOverAFewStepsAndProgressMatchesTheLog()
    {
        // the four shapes in one batch, backbones frozen, lr scale 1 without warm-up / cool-down (as TrainerOverfitTests)
        string data = SyntheticShapes.Write(Path.Combine(_dir, "data"));
        string outDir = Path.Combine(_dir, "out");
        const int epochs = 5;
        var reports = new List<Sam3TrainingProgress>();
        var result = Sam3FineTuning.Run(Options(data, outDir) with
        {
            Epochs = epochs, BatchSize = 4, Freeze = Sam3FreezePreset.AllBackbones, LearningRateScale = 1, WarmupSteps = 0, CooldownSteps = 0, Seed = 11,
        }, new Sync<Sam3TrainingProgress>(reports.Add));

        Assert.That(result.Completed);
        Assert.That((result.Step, result.TotalSteps), Is.EqualTo((epochs, epochs)));
        Assert.That(result.ModelPath, Is.EqualTo(Path.Combine(outDir, "model.safetensors")));
        Assert.That(File.Exists(result.ModelPath));
        Assert.That(result.LoraPath, Is.Null);
        Assert.That((result.Baseline, result.FineTuned, result.EvaluationSplit), Is.EqualTo(((Sam3EvaluationResult?)null, (Sam3EvaluationResult?)null, (string?)null)));
        Assert.That(reports.Select(r => (r.Step, r.TotalSteps, r.Epoch)), Is.EqualTo(Enumerable.Range(0, epochs).Select(i => (i + 1, epochs, i))));
        Assert.That(reports.All(r => r.LossTerms.ContainsKey("loss_bbox") && r.LossTerms.ContainsKey("loss_mask") && r.StepsPerSecond > 0));
        Assert.That(reports[^1].Eta, Is.EqualTo(TimeSpan.Zero));
        // one step per epoch: the epoch means are the steps' losses, as losses.csv holds them
        Assert.That(result.EpochLosses, Is.EqualTo(reports.Select(r => r.Loss)).Within(1e-12));
        var csv = File.ReadAllLines(Path.Combine(outDir, "losses.csv"));
        Assert.That(csv, Has.Length.EqualTo(1 + epochs));
        TestContext.Out.WriteLine($"loss per step: {string.Join(", ", result.EpochLosses.Select(l => l.ToString("F4")))}");
        Assert.That(result.EpochLosses[^1], Is.LessThan(0.75 * result.EpochLosses[0]), "the loss falls");
        // the result loads as a user would
        using var model = Sam3Model.Load(result.ModelPath!, new Sam3ModelOptions { Config = Sam3Config.Tiny, TokenizerPath = FinetuneWorkflowTests.Vocab });
        Assert.That(model.CheckpointPath, Is.EqualTo(result.ModelPath));
    }

    [Test]
    public void CancelledAndStepLimitedRunsResumeToTheUninterruptedWeights()
    {
        // 2 images, batch 1, 2 epochs: 4 steps
        string data = SyntheticShapes.Write(Path.Combine(_dir, "data"), SyntheticShapes.Default.Take(2).ToList());
        string reference = Path.Combine(_dir, "reference"), stopped = Path.Combine(_dir, "stopped");
        var common = Options(data, reference) with { Epochs = 2, Freeze = Sam3FreezePreset.AllBackbones, Seed = 3 };
        var whole = Sam3FineTuning.Run(common);
        Assert.That((whole.Completed, whole.Step, whole.TotalSteps), Is.EqualTo((true, 4, 4)));

        // 1) cancelled from the progress callback after step 1: saved mid-epoch, no exception, no result model
        var options = common with { OutputDirectory = stopped };
        using var cts = new CancellationTokenSource();
        var first = Sam3FineTuning.Run(options, new Sync<Sam3TrainingProgress>(p => { if (p.Step == 1) cts.Cancel(); }), cts.Token);
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
        var second = Sam3FineTuning.Run(options with { MaxSteps = 2 }, new Sync<Sam3TrainingProgress>(p => steps.Add(p.Step)));
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

    [Test]
    public void LoraAdaptersMergedIntoALoadedBaseEqualTheWrittenModel()
    {
        string data = SyntheticShapes.Write(Path.Combine(_dir, "data"), SyntheticShapes.Default.Take(2).ToList());
        var result = Sam3FineTuning.Run(Options(data, Path.Combine(_dir, "out")) with
        {
            BatchSize = 2, LearningRateScale = 1, WarmupSteps = 0, CooldownSteps = 0,
            Lora = [new Sam3LoraPart { Target = Sam3LoraTarget.Attention, Rank = 2, Alpha = 4 }],
        });
        Assert.That(result.Completed);
        Assert.That(result.LoraPath, Is.EqualTo(Path.Combine(_dir, "out", "lora.safetensors")));

        var modelOptions = new Sam3ModelOptions { Config = Sam3Config.Tiny, TokenizerPath = FinetuneWorkflowTests.Vocab, EnableInteractivePredictor = false };
        using var written = Sam3Model.Load(result.ModelPath!, modelOptions);
        using var merged = Sam3Model.Load(FinetuneWorkflowTests.TinyCheckpoint, modelOptions);
        using var untouched = Sam3Model.Load(FinetuneWorkflowTests.TinyCheckpoint, modelOptions);
        var trainable = merged.Network.parameters().Select(p => p.requires_grad).ToList();
        Assert.That(Sam3LoraAdapters.Merge(merged, result.LoraPath!), Is.EqualTo(88), "the tiny model's 88 attention projections");
        Assert.That(merged.Network.parameters().Select(p => p.requires_grad), Is.EqualTo(trainable), "requires_grad as before");
        var w = written.Network.state_dict();
        var m = merged.Network.state_dict();
        var u = untouched.Network.state_dict();
        int changed = 0;
        foreach (var (key, t) in w)
        {
            double diff = (m[key] - t).abs().max().item<float>();
            Assert.That(diff, Is.LessThanOrEqualTo(1e-6 + 1e-6 * t.abs().max().item<float>()), key);
            if ((u[key] - t).abs().max().item<float>() > 0) changed++;
        }
        Assert.That(changed, Is.GreaterThan(0), "the adapters changed some weights");
        Assert.Throws<Sam3Exception>(() => Sam3LoraAdapters.Merge(untouched, result.ModelPath!), "a model file is not an adapter file");
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
