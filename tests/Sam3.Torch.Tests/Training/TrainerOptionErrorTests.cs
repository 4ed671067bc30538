using NUnit.Framework;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Loop;
using Sam3.Torch.Training.Lora;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// A bad trainer / fine-tuning option is an <see cref="ArgumentException"/> whose ParamName is the option's property
/// (<c>options.X</c> for the internal trainer's records, the public property for <see cref="Sam3FineTuning.Run"/>) and whose
/// message shows the bad value, not a bare <c>options</c>.
/// </summary>
[TestFixture, Category("Fast")]
public class TrainerOptionErrorTests
{
    private string _dir = null!;
    private string _data = null!;
    private Sam3ImageModel _model = null!;

    [OneTimeSetUp]
    public void OneTimeSetUp()
    {
        _dir = Directory.CreateTempSubdirectory("sam3-trainer-options-").FullName;
        _data = SyntheticShapes.Write(Path.Combine(_dir, "data")); // 4 images
        _model = TrainingFixture.LoadTinyModel();
    }

    [OneTimeTearDown]
    public void OneTimeTearDown()
    {
        _model.Dispose();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static void AssertNames(Action call, string param, string value)
    {
        var e = Assert.Catch<ArgumentException>(() => call())!;
        Assert.That(e.ParamName, Is.EqualTo(param), e.Message);
        Assert.That(e.Message, Does.Contain(value), "the message shows the bad value");
    }

    private void Trainer(TrainerOptions options) =>
        _ = new Sam3Trainer(_model, TrainingFixture.Tokenizer(), TrainerTests.Dataset(_data, 1), TrainingConfig.Default, options);

    [Test]
    public void TrainerOptionsNameTheProperty()
    {
        AssertNames(() => new TrainerOptions { Epochs = 0 }.Validate(), "options.Epochs", "got 0");
        AssertNames(() => new TrainerOptions { BatchSize = -2 }.Validate(), "options.BatchSize", "got -2");
        AssertNames(() => Trainer(new TrainerOptions { BatchSize = 8 }), "options.BatchSize", "batches of 8");
        AssertNames(() => Trainer(new TrainerOptions { BatchSize = 2, AccumulationSteps = 3 }), "options.AccumulationSteps", "the 3 of one optimizer step");
        AssertNames(() => Trainer(new TrainerOptions { Trainable = _ => false }), "options.Trainable", "Trainable");
        AssertNames(() => Trainer(new TrainerOptions { ExtraFrozen = ["*"] }), "options.ExtraFrozen", "[*]");
        AssertNames(() => Trainer(new TrainerOptions { ModelOptions = TrainingModelOptions.Default with { DropPathRate = 1.5 } }), "options.DropPathRate", "1.5");
        AssertNames(() => Trainer(new TrainerOptions
        {
            ModelOptions = TrainingModelOptions.Default with { DropPathRate = 0.1, ActivationCheckpointing = true },
        }), "options.ActivationCheckpointing", "0.1");
    }

    [Test]
    public void DataAndLoraOptionsNameTheProperty()
    {
        AssertNames(() => CocoDataset.Open(_data, "train", new CocoDatasetOptions { CategoryChunkSize = 0 }), "options.CategoryChunkSize", "got 0");
        AssertNames(() => LoraModel.Attach(_model, new LoraOptions { Parts = [new LoraPart("none", ["no.such.module"], 4, 8)] }),
            "options.Parts", "no.such.module");
    }

    [Test]
    public void FineTuningRunNamesThePublicOption()
    {
        // 4 images in batches of 8: no batch at all (known only once the data is read, so the trainer finds it)
        AssertNames(() => Sam3FineTuning.Run(Api.FineTuningApiTests.Options(_data, Path.Combine(_dir, "out")) with { BatchSize = 8 }),
            nameof(Sam3FineTuningOptions.BatchSize), "batches of 8");
    }
}
