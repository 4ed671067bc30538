using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Tests.Training;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// <c>sam3 finetune</c> on a small COCO folder made by the test (synthetic shapes): the run writes its checkpoint, loss
/// log and model; a second run of the same command resumes from the checkpoint instead of starting over.
/// </summary>
[TestFixture, Category("Slow")]
public class FinetuneCliTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("sam3-finetune-cli-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Test]
    public void FinetuneWritesCheckpointLogAndModelAndResumes()
    {
        string data = SyntheticShapes.Write(Path.Combine(_dir, "data"));
        string outDir = Path.Combine(_dir, "out");
        string[] common =
        [
            "finetune", "--checkpoint", SharedData.Parity("tiny", "model.safetensors"), "--config", "tiny",
            "--vocab", SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"),
            "--data", data, "--out", outDir, "--batch", "2", "--freeze", "backbones",
        ];
        string[] args = [.. common, "--epochs", "1"];
        var first = Run(args);
        Assert.That(first.Code, Is.EqualTo(0), first.Err);
        Assert.That(File.Exists(Path.Combine(outDir, "model.safetensors")));
        Assert.That(Directory.Exists(Path.Combine(outDir, "checkpoint")));
        var csv = File.ReadAllLines(Path.Combine(outDir, "losses.csv"));
        int steps = SyntheticShapes.Default.Count / 2;
        Assert.That(csv, Has.Length.EqualTo(1 + steps), "a header and one row per optimizer step");
        Assert.That(Directory.GetFileSystemEntries(outDir).Where(p => Path.GetFileName(p).StartsWith('.')), Is.Empty, "no temporary left");

        var again = Run(args);
        Assert.That(again.Code, Is.EqualTo(0), again.Err);
        Assert.That(again.Err, Does.Contain($"resumed from {Path.Combine(outDir, "checkpoint")} at step {steps} of {steps}"));
        Assert.That(File.ReadAllLines(Path.Combine(outDir, "losses.csv")), Has.Length.EqualTo(1 + steps), "nothing trained twice");

        // another schedule cannot continue this checkpoint: refused with one line naming what differs
        var refused = Run([.. common, "--epochs", "3"]);
        Assert.That(refused.Code, Is.EqualTo(1), refused.Err);
        var errLines = refused.Err.Trim().Split('\n');
        Assert.That(errLines, Has.Length.EqualTo(1), refused.Err);
        Assert.That(errLines[0], Does.StartWith("sam3: ").And.Contain("epoch"));
    }
}
