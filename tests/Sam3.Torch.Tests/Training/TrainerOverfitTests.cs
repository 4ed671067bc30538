using NUnit.Framework;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Loop;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// Issue 13 item 9, "proof it learns": the tiny model, trained on the four synthetic shape images (<see cref="SyntheticShapes"/>,
/// "circle" / "square" as text queries, one positive and one negative query per image) in one batch, must halve its total
/// loss within a bounded number of optimizer steps. Backbones frozen (the detector heads learn), no dropout, the
/// fine-tuning config's losses and optimizer with a larger lr scale and no warm-up / cool-down so few steps suffice.
/// </summary>
[TestFixture, Category("Slow")]
public class TrainerOverfitTests
{
    public const int Steps = 6;

    [Test]
    public void Total_loss_halves_when_overfitting_synthetic_shapes()
    {
        string tmp = Directory.CreateTempSubdirectory("sam3-overfit-").FullName;
        try
        {
            string data = SyntheticShapes.Write(Path.Combine(tmp, "data"));
            var defaults = TrainingConfig.Default;
            var config = defaults with
            {
                Optimizer = defaults.Optimizer with { LrScale = 1.0 },
                Schedule = defaults.Schedule with { WarmupSteps = 0, CooldownSteps = 0 },
            };
            var options = new TrainerOptions
            {
                Epochs = Steps, BatchSize = 4, Freeze = FreezePreset.AllBackbones, ModelOptions = TrainingModelOptions.DeterministicRun,
            };
            using var model = TrainingFixture.LoadTinyModel();
            var trainer = new Sam3Trainer(model, TrainingFixture.Tokenizer(), TrainerTests.Dataset(data, 11), config, options);
            Assert.That(trainer.TotalSteps, Is.EqualTo(Steps));
            var curve = new List<double>();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            trainer.Run(new TrainerTests.SyncProgress<TrainerStepReport>(r =>
            {
                curve.Add(r.CoreLoss);
                TestContext.Progress.WriteLine($"step {r.Step}: core_loss {r.CoreLoss:F4} grad_norm {r.GradNorm:F3} ({clock.Elapsed.TotalSeconds:F1} s)");
            }));
            Assert.That(curve, Has.Count.EqualTo(Steps));
            Assert.That(curve.All(double.IsFinite), Is.True);
            // the last two steps' mean against the first step's loss (before any update)
            double end = (curve[^1] + curve[^2]) / 2;
            Assert.That(end, Is.LessThanOrEqualTo(0.5 * curve[0]), $"loss curve: {string.Join(", ", curve.Select(v => v.ToString("F3")))}");
        }
        finally
        {
            try { Directory.Delete(tmp, recursive: true); } catch (IOException) { }
        }
    }
}
