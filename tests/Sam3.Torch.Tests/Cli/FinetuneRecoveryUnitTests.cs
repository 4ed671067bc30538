using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.Training.Loop;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// The pieces of a resume after a kill, one by one: the CSV log loses the rows after the checkpoint and a partial last
/// line; a checkpoint save cut between its two renames is put back, temporaries go; and the <c>--lora</c> syntax.
/// </summary>
[TestFixture, Category("Fast")]
public class FinetuneRecoveryUnitTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("sam3-ft-recovery-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [Test]
    public void CsvLogKeepsTheHeaderAndTheRowsUpToTheCheckpointStep()
    {
        string csv = Path.Combine(_dir, "losses.csv");
        const string header = "step,epoch,where,core_loss,grad_norm,steps_per_s,loss_bbox\n";
        var rows = Enumerable.Range(1, 5).Select(s => $"{s},0,0.{s},1.5,0.25,2,0.{s}\n").ToArray();
        File.WriteAllText(csv, header + string.Concat(rows) + "6,1,0.6,1.4"); // killed in the middle of row 6
        CsvLossLog.TruncateAfter(csv, 3);
        Assert.That(File.ReadAllText(csv), Is.EqualTo(header + rows[0] + rows[1] + rows[2]));
        CsvLossLog.TruncateAfter(csv, 3); // nothing more to drop
        Assert.That(File.ReadAllText(csv), Is.EqualTo(header + rows[0] + rows[1] + rows[2]));
        Assert.That(Directory.GetFiles(_dir).Select(Path.GetFileName), Is.EqualTo(new[] { "losses.csv" }), "no temporary left");
    }

    [Test]
    public void CheckpointMovedAsideButNotReplacedIsPutBackAndTemporariesGo()
    {
        string ckpt = Path.Combine(_dir, "checkpoint");
        string old = Directory.CreateDirectory(Path.Combine(_dir, ".checkpoint.0123.old")).FullName;
        File.WriteAllText(Path.Combine(old, TrainerCheckpoint.StateFile), "{\"Step\":4}");
        string tmp = Directory.CreateDirectory(Path.Combine(_dir, ".checkpoint.77.abcd.tmp")).FullName;
        File.WriteAllText(Path.Combine(tmp, TrainerCheckpoint.ModelFile), "half");

        TrainerCheckpoint.RecoverInterrupted(ckpt);
        Assert.That(File.ReadAllText(Path.Combine(ckpt, TrainerCheckpoint.StateFile)), Is.EqualTo("{\"Step\":4}"));
        Assert.That(Directory.GetFileSystemEntries(_dir).Select(Path.GetFileName), Is.EqualTo(new[] { "checkpoint" }));

        // with the new checkpoint in place, a leftover moved-aside one is just deleted
        Directory.CreateDirectory(old);
        File.WriteAllText(Path.Combine(old, TrainerCheckpoint.StateFile), "{\"Step\":2}");
        TrainerCheckpoint.RecoverInterrupted(ckpt);
        Assert.That(File.ReadAllText(Path.Combine(ckpt, TrainerCheckpoint.StateFile)), Is.EqualTo("{\"Step\":4}"));
        Assert.That(Directory.GetFileSystemEntries(_dir).Select(Path.GetFileName), Is.EqualTo(new[] { "checkpoint" }));
    }

    [Test]
    public void LoraOptionSyntax()
    {
        var o = FinetuneCommand.ParseLora("attention, mlp:2:4");
        Assert.That(o.Parts.Select(p => (p.Name, p.Rank, p.Alpha)), Is.EqualTo(new[] { ("attention", 8, 16.0), ("mlp", 2, 4.0) }));
        Assert.That(FinetuneCommand.ParseLora("mlp:4").Parts.Single().Alpha, Is.EqualTo(16.0));
        foreach (var bad in new[] { "", "conv", "attention:0", "attention:4:0", "attention:4:8:1", "attention,attention", "mlp:x" })
            Assert.Throws<UsageException>(() => FinetuneCommand.ParseLora(bad), bad);
    }
}
