using System.Text.Json.Nodes;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Tests.Cli;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;

namespace Sam3.Torch.Tests.Training.Api;

/// <summary>
/// The public fine-tuning API on the tiny model and synthetic shapes (<see cref="SyntheticShapes"/>): the loss falls over
/// a few steps and the progress reports are the logged ones; LoRA adapters merged into a loaded base equal the written
/// fine-tuned model. (Resuming: <see cref="FineTuningResumeApiTests"/>.)
/// </summary>
[TestFixture, Category("Slow")]
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
    internal sealed class Sync<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }

    [Test]
    public void LossFallsOverAFewStepsAndProgressMatchesTheLog()
    {
        // two shapes in one batch, backbones frozen, lr scale 1 without warm-up / cool-down (as TrainerOverfitTests)
        string data = SyntheticShapes.Write(Path.Combine(_dir, "data"), SyntheticShapes.Default.Take(2).ToList());
        string outDir = Path.Combine(_dir, "out");
        const int epochs = 3;
        var reports = new List<Sam3TrainingProgress>();
        var result = Sam3FineTuning.Run(Options(data, outDir) with
        {
            Epochs = epochs, BatchSize = 2, Freeze = Sam3FreezePreset.AllBackbones, LearningRateScale = 1, WarmupSteps = 0, CooldownSteps = 0, Seed = 11,
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
}
