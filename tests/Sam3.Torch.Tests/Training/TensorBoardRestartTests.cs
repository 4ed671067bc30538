using NUnit.Framework;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Loop;
using Sam3.Torch.Training.Optim;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// TensorBoard after a killed and resumed fine-tuning run: the resumed session's events file starts with
/// <c>SessionLog{START}</c> at the first step it logs, so TensorBoard's event accumulator (replayed by
/// <see cref="TfEventReader.Accumulate"/>) purges the killed session's events of the steps logged again, and every
/// step shows once with the resumed run's values. The files are read back record by record (CRC-checked, decoded by
/// event.proto's field numbers).
/// </summary>
[TestFixture, Category("Fast")]
public class TensorBoardRestartTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("sam3-tb-restart-").FullName;

    [TearDown]
    public void TearDown()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static TrainerStepReport Report(int step, double loss) =>
        new(step, 10, 0, step / 10.0, loss, [new("loss_bbox", loss / 2)], GradNorm: double.NaN, StepsPerSecond: 1);

    private static readonly IReadOnlyList<ParamGroup> NoGroups = [];

    [Test]
    public void EventFileHasVersionStartAndScalarsWithCheckedRecords()
    {
        // CRC-32C check value of "123456789" (the Castagnoli polynomial's standard test vector)
        Assert.That(TfEventFile.Crc32C("123456789"u8), Is.EqualTo(0xE3069283u));

        double before = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0 - 1;
        var log = new TensorBoardLog(_dir, sessionStartStep: 1);
        log.Append(Report(1, 0.5), NoGroups);
        log.AppendEvaluation(1, [new("box_AP", 0.25), new("nan", double.NaN)]);
        double after = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0 + 1;

        var events = TfEventReader.Read(log.FilePath);
        Assert.That(events[0].FileVersion, Is.EqualTo("brain.Event:2"), "the first record is the file version");
        Assert.That((events[1].SessionStatus, events[1].Step), Is.EqualTo(((int?)TfEventReader.Start, 1L)));
        var scalars = events.Skip(2).Select(e => (e.Step, e.Values.Single().Tag, e.Values.Single().Value)).ToList();
        Assert.That(scalars, Is.EqualTo(new (long, string, float?)[]
        {
            (1, "loss/core", 0.5f), (1, "loss/loss_bbox", 0.25f), (1, "eval/box_AP", 0.25f),
        }));
        Assert.That(events.All(e => e.WallTime >= before && e.WallTime <= after), "wall times are Unix seconds of now");
    }

    [Test]
    public void ResumedSessionPurgesTheStepsTheKilledSessionLoggedAfterItsCheckpoint()
    {
        // killed session: checkpoint at step 2, steps 1..4 logged before the kill
        var killed = new TensorBoardLog(_dir, sessionStartStep: 1);
        for (int s = 1; s <= 4; s++) killed.Append(Report(s, 10 + s), NoGroups);
        // resumed from the checkpoint (step 2): logs 3..5 in a new file, which sorts after the first
        var resumed = new TensorBoardLog(_dir, sessionStartStep: 3);
        for (int s = 3; s <= 5; s++) resumed.Append(Report(s, 20 + s), NoGroups);
        // the evaluation log of the finished run adds without purging
        new TensorBoardLog(_dir).AppendEvaluation(0, [new("box_AP", 0.1)]);

        var files = TfEventReader.RunFiles(_dir);
        Assert.That(files, Has.Length.EqualTo(3));
        Assert.That(files.Take(2), Is.EqualTo(new[] { killed.FilePath, resumed.FilePath }), "each session's file sorts after the earlier ones");
        var raw = files.SelectMany(f => TfEventReader.Read(f)).Where(e => e.SessionStatus is not null).ToList();
        Assert.That(raw.Select(e => (e.SessionStatus, e.Step)), Is.EqualTo(new[] { ((int?)TfEventReader.Start, 1L), (TfEventReader.Start, 3L) }));

        var view = TfEventReader.Accumulate(_dir);
        Assert.That(view["loss/core"], Is.EqualTo(new (long, float)[] { (1, 11), (2, 12), (3, 23), (4, 24), (5, 25) }));
        Assert.That(view["loss/loss_bbox"].Select(p => p.Step), Is.EqualTo(new long[] { 1, 2, 3, 4, 5 }));
        Assert.That(view["eval/box_AP"], Is.EqualTo(new (long, float)[] { (0, 0.1f) }));
    }

}

/// <summary>The trainer's side of <see cref="TensorBoardRestartTests"/> (tiny model, 6 optimizer steps, about a minute).</summary>
[TestFixture, Category("Slow")]
public class TensorBoardRestartTrainerTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("sam3-tb-trainer-").FullName;

    [TearDown]
    public void TearDown()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>
    /// The trainer end to end on the tiny model: a session that checkpoints after step 1 and is "killed" after step 3, then
    /// a new trainer resumed from the checkpoint that runs to the end (step 4): TensorBoard shows steps 1–4 once each, the
    /// resumed run's losses for 2–4.
    /// </summary>
    [Test]
    public void KilledAndResumedTrainerShowsEveryStepOnce()
    {
        string data = SyntheticShapes.Write(Path.Combine(_dir, "data"), SyntheticShapes.Default.Take(2).ToList());
        string board = Path.Combine(_dir, "tb"), ckpt = Path.Combine(_dir, "ckpt");
        var options = new TrainerOptions
        {
            Epochs = 2, BatchSize = 1, Freeze = FreezePreset.AllButHeads, ModelOptions = TrainingModelOptions.DeterministicRun,
            TensorBoardDirectory = board,
        };
        var tokenizer = TrainingFixture.Tokenizer();
        var resumedLosses = new List<(long, float)>();
        using (var model = TrainingFixture.LoadTinyModel())
        {
            var a = new Sam3Trainer(model, tokenizer, TrainerTests.Dataset(data, 5), TrainingConfig.Default, options);
            Assert.That(a.Run(maxSteps: 1), Is.EqualTo(1));
            a.SaveCheckpoint(ckpt);
            Assert.That(a.Run(maxSteps: 2), Is.EqualTo(2)); // logged, then lost with the process
        }
        using (var model = TrainingFixture.LoadTinyModel())
        {
            var b = new Sam3Trainer(model, tokenizer, TrainerTests.Dataset(data, 5), TrainingConfig.Default, options);
            b.Resume(ckpt);
            Assert.That(b.Step, Is.EqualTo(1));
            b.Run(new TrainerTests.SyncProgress<TrainerStepReport>(r => resumedLosses.Add((r.Step, (float)r.CoreLoss))));
            Assert.That(b.Finished);
        }

        var files = TfEventReader.RunFiles(board);
        Assert.That(files, Has.Length.EqualTo(2));
        var raw = files.SelectMany(f => TfEventReader.Read(f)).SelectMany(e => e.Values.Where(v => v.Tag == "loss/core").Select(_ => e.Step)).ToList();
        Assert.That(raw, Is.EqualTo(new long[] { 1, 2, 3, 2, 3, 4 }), "both sessions' points are in the files");
        var view = TfEventReader.Accumulate(board);
        Assert.That(view["loss/core"].Select(p => p.Step), Is.EqualTo(new long[] { 1, 2, 3, 4 }), "each step once after TensorBoard's purge");
        Assert.That(view["loss/core"].Skip(1), Is.EqualTo(resumedLosses), "steps 2-4 are the resumed run's");
        Assert.That(view["lr/group0"].Select(p => p.Step), Is.EqualTo(new long[] { 1, 2, 3, 4 }));
    }
}
