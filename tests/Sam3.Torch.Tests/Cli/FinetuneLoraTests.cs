using NUnit.Framework;
using Sam3.Torch.Loading;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Tests.Training;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Lora;
using Sam3.Torch.Training.Loop;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// <c>sam3 finetune --lora</c>: the trainer trains the adapters alone and writes them on their own (OUT/lora.safetensors;
/// the checkpoint holds them instead of the unchanged base); loaded on the base model they give outputs that the merged
/// model reproduces within float noise, and OUT/model.safetensors is that merged model.
/// </summary>
[TestFixture, Category("Slow")]
public class FinetuneLoraTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("sam3-finetune-lora-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [Test]
    public void TrainedAdaptersLoadOnTheBaseAndMergeToTheWrittenModel()
    {
        string data = SyntheticShapes.Write(Path.Combine(_dir, "data"));
        string outDir = Path.Combine(_dir, "out");
        var run = FinetuneWorkflowTests.Run("finetune", "--checkpoint", FinetuneWorkflowTests.TinyCheckpoint, "--config", "tiny",
            "--vocab", FinetuneWorkflowTests.Vocab, "--data", data, "--out", outDir, "--batch", "2", "--epochs", "1", "--lr", "1",
            "--lora", "attention:4:8,mlp:2:4", "--eval-split", "none", "--tensorboard", "off");
        Assert.That(run.Code, Is.EqualTo(0), run.Err);
        Assert.That(run.Err, Does.Contain("(110 LoRA adapters)"), "88 attention + 22 MLP projections of the tiny model");
        string adapters = Path.Combine(outDir, TrainerCheckpoint.LoraFile);
        Assert.That(File.Exists(adapters));
        Assert.That(File.Exists(Path.Combine(outDir, "checkpoint", TrainerCheckpoint.LoraFile)));
        Assert.That(File.Exists(Path.Combine(outDir, "checkpoint", TrainerCheckpoint.ModelFile)), Is.False, "the base is unchanged: not copied into the checkpoint");

        using var fx = Fixtures.Tiny(TrainingFixture.Scenario);
        using var batch = TrainingFixture.Batch(fx);
        var tokenizer = TrainingFixture.Tokenizer();
        using var model = TrainingFixture.LoadTinyModel();
        TrainingMode.Apply(model, TrainingModelOptions.DeterministicRun);
        Tensor[] Outputs(Sam3.Torch.Modeling.Detector.Sam3ImageModel m)
        {
            using var scope = NewDisposeScope();
            using var noGrad = torch.no_grad();
            using var o = Sam3TrainingForward.Forward(m, tokenizer, batch);
            return TrainingFixture.Named(o).Select(x => x.Value.detach().clone().DetachFromDisposeScope()).ToArray();
        }
        var baseOut = Outputs(model);
        var lora = LoraModel.Load(model, adapters);
        Tensor[] unmerged, merged;
        try
        {
            Assert.That(lora.Parameters().Where(p => p.Name.EndsWith(".lora_B")).Any(p => p.Parameter.abs().max().item<float>() > 0),
                "training moved the adapters away from B = 0");
            unmerged = Outputs(model);
            lora.MergeIntoBase();
            merged = Outputs(model);
        }
        finally { lora.Dispose(); }

        using var written = Sam3ModelLoader.LoadImageModel(Path.Combine(outDir, "model.safetensors"), TrainingFixture.Config,
            new Sam3LoadOptions { EnableInstInteractivity = false });
        TrainingMode.Apply(written, TrainingModelOptions.DeterministicRun);
        var fromFile = Outputs(written);

        double change = 0;
        for (int i = 0; i < unmerged.Length; i++)
        {
            double scale = unmerged[i].abs().max().item<float>();
            change = Math.Max(change, (unmerged[i] - baseOut[i]).abs().max().item<float>());
            Assert.That((merged[i] - unmerged[i]).abs().max().item<float>(), Is.LessThanOrEqualTo(1e-5 + 1e-5 * scale), $"merged output {i}");
            Assert.That((fromFile[i] - merged[i]).abs().max().item<float>(), Is.LessThanOrEqualTo(1e-5 + 1e-5 * scale), $"written model output {i}");
        }
        Assert.That(change, Is.GreaterThan(1e-4), "the trained adapters change the outputs");
        foreach (var t in baseOut.Concat(unmerged).Concat(merged).Concat(fromFile)) t.Dispose();
    }
}
