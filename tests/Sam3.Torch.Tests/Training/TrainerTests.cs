using NUnit.Framework;
using Sam3.Torch.Loading;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Loop;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// <see cref="Sam3Trainer"/> on the tiny model and a synthetic COCO folder (<see cref="SyntheticShapes"/>): exact resume
/// from a checkpoint, cancellation, the schedule position, the CSV log and the checkpoint's key layout. Slow: 16 training
/// micro-batches of the tiny model (about 20–30 s alone on 2 cores, up to 2 min when the machine is shared).
/// </summary>
[TestFixture, Category("Slow")]
public class TrainerTests
{
    private string _tmp = "";

    [SetUp]
    public void SetUp() => _tmp = Directory.CreateTempSubdirectory("sam3-trainer-").FullName;

    [TearDown]
    public void TearDown()
    {
        try { Directory.Delete(_tmp, recursive: true); } catch (IOException) { }
    }

    internal static TrainingDataset Dataset(string root, int seed) =>
        new(CocoDataset.Open(root, "train"), TransformPipelines.Train(new TrainTransformConfig { Resolution = 336, ResizeSizes = [336] }), seed);

    private static Dictionary<string, Tensor> Snapshot(Sam3ImageModel model) =>
        model.named_parameters().ToDictionary(x => x.name, x => x.parameter.detach().clone().DetachFromDisposeScope());

    /// <summary>
    /// 4 optimizer steps (2 epochs × 2 steps, 2 micro-batches each, dropout on) in one run versus 2 steps stopped by the
    /// cancellation token, a checkpoint, a new trainer on the original weights resumed from it, and 2 more steps: every
    /// parameter and every reported loss of steps 3–4 must be identical bit for bit (same ops on the same inputs with the
    /// same generator state; nothing in the loop depends on the process).
    /// </summary>
    [Test]
    public void Resume_from_checkpoint_continues_bit_exactly()
    {
        string data = SyntheticShapes.Write(Path.Combine(_tmp, "data"));
        var config = TrainingConfig.Default;
        var options = new TrainerOptions
        {
            Epochs = 2, BatchSize = 1, AccumulationSteps = 2, Freeze = FreezePreset.AllBackbones,
            ModelOptions = TrainingModelOptions.Default, TorchSeed = 3, CsvLogPath = Path.Combine(_tmp, "a.csv"),
        };
        var tokenizer = TrainingFixture.Tokenizer();

        // A: all 4 steps at once
        var reportsA = new List<TrainerStepReport>();
        Dictionary<string, Tensor> finalA;
        using (var modelA = TrainingFixture.LoadTinyModel())
        {
            var a = new Sam3Trainer(modelA, tokenizer, Dataset(data, 7), config, options);
            Assert.That(a.TotalSteps, Is.EqualTo(4));
            Assert.That(a.Run(new SyncProgress<TrainerStepReport>(reportsA.Add)), Is.EqualTo(4));
            Assert.That(a.Finished, Is.True);
            finalA = Snapshot(modelA);
        }
        // upstream's where = (epoch + data_iter / iters_per_epoch) / max_epochs
        Assert.That(reportsA.Select(r => r.Where), Is.EqualTo(new[] { 0.0, 0.25, 0.5, 0.75 }));
        Assert.That(reportsA.Select(r => r.Epoch), Is.EqualTo(new[] { 0, 0, 1, 1 }));
        var csv = File.ReadAllLines(options.CsvLogPath!);
        Assert.That(csv, Has.Length.EqualTo(5));
        Assert.That(csv[0], Does.StartWith("step,epoch,where,core_loss,grad_norm,steps_per_s,"));

        // B: stopped by cancellation after 2 steps, checkpointed
        string ckpt = Path.Combine(_tmp, "ckpt");
        Dictionary<string, Tensor> savedB;
        using (var modelB = TrainingFixture.LoadTinyModel())
        {
            var b = new Sam3Trainer(modelB, tokenizer, Dataset(data, 7), config, options with { CsvLogPath = null });
            using var cts = new CancellationTokenSource();
            int done = b.Run(new SyncProgress<TrainerStepReport>(r => { if (r.Step == 2) cts.Cancel(); }), cts.Token);
            Assert.That(done, Is.EqualTo(2));
            b.SaveCheckpoint(ckpt);
            b.SaveCheckpoint(ckpt); // replacing an existing checkpoint works and leaves no temporary folder
            savedB = Snapshot(modelB);
        }
        Assert.That(Directory.GetFileSystemEntries(_tmp).Select(Path.GetFileName), Is.EquivalentTo(new[] { "data", "ckpt", "a.csv" }));

        // the weights file is in the released layout and loads on its own
        using (var file = Sam3.Torch.IO.CheckpointFile.Open(Path.Combine(ckpt, TrainerCheckpoint.ModelFile)))
            Assert.That(file.Names.All(n => n.StartsWith("detector.", StringComparison.Ordinal)), Is.True);
        using (var loaded = Sam3ModelLoader.LoadImageModel(Path.Combine(ckpt, TrainerCheckpoint.ModelFile), TrainingFixture.Config,
                   new Sam3LoadOptions { EnableInstInteractivity = false }))
            AssertIdentical(Snapshot(loaded), savedB, "reloaded checkpoint");

        // C: a fresh trainer on the original weights, resumed
        var reportsC = new List<TrainerStepReport>();
        using (var modelC = TrainingFixture.LoadTinyModel())
        {
            var c = new Sam3Trainer(modelC, tokenizer, Dataset(data, 7), config, options with { CsvLogPath = null });
            c.Resume(ckpt);
            Assert.That(c.Step, Is.EqualTo(2));
            Assert.That(c.Run(new SyncProgress<TrainerStepReport>(reportsC.Add)), Is.EqualTo(2));
            AssertIdentical(Snapshot(modelC), finalA, "resumed");
        }
        Assert.That(reportsC.Select(r => r.CoreLoss), Is.EqualTo(reportsA.Skip(2).Select(r => r.CoreLoss)));
        Assert.That(reportsC.Select(r => r.GradNorm), Is.EqualTo(reportsA.Skip(2).Select(r => r.GradNorm)));

        // a resume with another schedule is refused
        using (var modelD = TrainingFixture.LoadTinyModel())
        {
            var d = new Sam3Trainer(modelD, tokenizer, Dataset(data, 7), config, options with { Epochs = 3, CsvLogPath = null });
            Assert.That(() => d.Resume(ckpt), Throws.InstanceOf<Sam3CheckpointException>().With.Message.Contains("epochs"));
        }
        foreach (var t in finalA.Values.Concat(savedB.Values)) t.Dispose();
    }

    [Test]
    public void Options_that_give_no_step_are_refused()
    {
        string data = SyntheticShapes.Write(Path.Combine(_tmp, "data"));
        using var model = TrainingFixture.LoadTinyModel();
        var tokenizer = TrainingFixture.Tokenizer();
        Assert.That(() => new Sam3Trainer(model, tokenizer, Dataset(data, 1), TrainingConfig.Default,
                new TrainerOptions { BatchSize = 2, AccumulationSteps = 3 }),
            Throws.ArgumentException.With.Message.Contains("2 micro-batches"));
        Assert.That(() => new TrainerOptions { AccumulationSteps = 0 }.Validate(), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => new Sam3Trainer(model, tokenizer, Dataset(data, 1), TrainingConfig.Default,
                new TrainerOptions { Trainable = _ => false }),
            Throws.ArgumentException.With.Message.Contains("no parameter"));
    }

    internal static void AssertIdentical(Dictionary<string, Tensor> actual, Dictionary<string, Tensor> expected, string what)
    {
        Assert.That(actual.Keys, Is.EquivalentTo(expected.Keys));
        double worst = 0;
        string worstName = "";
        foreach (var (name, t) in expected)
        {
            using var scope = NewDisposeScope();
            double d = (actual[name] - t).abs().max().item<float>();
            if (d > worst) { worst = d; worstName = name; }
        }
        foreach (var t in actual.Values) t.Dispose();
        Assert.That(worst, Is.EqualTo(0.0), $"{what}: max |Δ| {worst} at {worstName}");
    }

    internal sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
