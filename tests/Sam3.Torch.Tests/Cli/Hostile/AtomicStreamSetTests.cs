using NUnit.Framework;
using Sam3.Cli;

namespace Sam3.Torch.Tests.Cli.Hostile;

/// <summary>Streamed outputs (track/video JSON lines, mp4) appear together at the end of a run, or not at all.</summary>
[TestFixture, Category("Fast")]
public class AtomicStreamSetTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("sam3-streamset-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    [Test]
    public void CommitRenamesEveryStagedFileAndLeavesNoTemporary()
    {
        string a = Path.Combine(_dir, "frames.jsonl"), b = Path.Combine(_dir, "overlay.mp4");
        using (var set = new AtomicStreamSet())
        {
            string ta = set.Stage(a), tb = set.Stage(b);
            Assert.That(Path.GetExtension(tb), Is.EqualTo(".mp4"), "the container is chosen by the extension");
            File.WriteAllText(ta, "{}\n");
            File.WriteAllText(tb, "video");
            Assert.That(File.Exists(a) || File.Exists(b), Is.False, "nothing visible before the commit");
            set.Commit(overwrite: false);
        }
        Assert.That(File.ReadAllText(a), Is.EqualTo("{}\n"));
        Assert.That(File.ReadAllText(b), Is.EqualTo("video"));
        Assert.That(Directory.GetFiles(_dir), Has.Length.EqualTo(2));
    }

    [Test]
    public void AFailedRunLeavesTheOldOutputsAndNoTemporary()
    {
        string a = Path.Combine(_dir, "frames.jsonl");
        File.WriteAllText(a, "old");
        using (var set = new AtomicStreamSet())
        {
            File.WriteAllText(set.Stage(a), "new, half written");
            // the run throws before its commit: dispose only
        }
        Assert.That(File.ReadAllText(a), Is.EqualTo("old"));
        Assert.That(Directory.GetFiles(_dir), Has.Length.EqualTo(1));
    }

    [Test]
    public void AnExistingOutputIsReplacedOnlyWithOverwrite()
    {
        string a = Path.Combine(_dir, "results.json");
        File.WriteAllText(a, "old");
        using (var set = new AtomicStreamSet())
        {
            File.WriteAllText(set.Stage(a), "new");
            Assert.Throws<Sam3Exception>(() => set.Commit(overwrite: false));
        }
        Assert.That(File.ReadAllText(a), Is.EqualTo("old"));
        using (var set = new AtomicStreamSet())
        {
            File.WriteAllText(set.Stage(a), "new");
            set.Commit(overwrite: true);
        }
        Assert.That(File.ReadAllText(a), Is.EqualTo("new"));
        Assert.That(Directory.GetFiles(_dir), Has.Length.EqualTo(1));
    }
}
