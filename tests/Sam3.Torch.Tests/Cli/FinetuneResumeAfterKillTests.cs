using System.Diagnostics;
using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Tests.Training;
using Sam3.Torch.Training.Loop;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// <c>sam3 finetune</c> killed with SIGKILL (the CLI dll as a child process) after its first checkpoint and after it has
/// logged steps past it, then run again: the resumed run ends exactly where an uninterrupted run ends — the same loss
/// terms per step in losses.csv (the killed run's steps after the checkpoint replaced, not duplicated) and byte-identical
/// final weights — and no temporary file or folder is left.
/// </summary>
[TestFixture, Category("Slow")]
public class FinetuneResumeAfterKillTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("sam3-finetune-kill-").FullName;

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private string[] Args(string data, string outDir) =>
    [
        "finetune", "--checkpoint", FinetuneWorkflowTests.TinyCheckpoint, "--config", "tiny", "--vocab", FinetuneWorkflowTests.Vocab,
        "--data", data, "--out", outDir, "--epochs", "2", "--freeze", "backbones", "--eval-split", "none", "--threads", "2",
    ];

    [Test]
    public void ResumeAfterSigkillEqualsAnUninterruptedRun()
    {
        string data = SyntheticShapes.Write(Path.Combine(_dir, "data"), SyntheticShapes.Default.Take(2).ToList());
        string reference = Path.Combine(_dir, "reference"), killed = Path.Combine(_dir, "killed");
        const int steps = 4; // 2 images, batch 1, 2 epochs: one checkpoint (step 2) before the final one

        var r = FinetuneWorkflowTests.Run(Args(data, reference));
        Assert.That(r.Code, Is.EqualTo(0), r.Err);

        // the child: killed once the first checkpoint exists and at least one later step is logged
        string ckpt = Path.Combine(killed, "checkpoint"), csv = Path.Combine(killed, "losses.csv");
        var childErr = new System.Text.StringBuilder();
        using (var child = StartCli(Args(data, killed), childErr))
        try
        {
            var sw = Stopwatch.StartNew();
            bool ready = false;
            while (!child.HasExited && sw.Elapsed < TimeSpan.FromMinutes(5))
            {
                if (File.Exists(Path.Combine(ckpt, TrainerCheckpoint.StateFile)) && File.Exists(csv)
                    && File.ReadAllLines(csv).Length - 1 > CheckpointStep(ckpt)) { ready = true; break; }
                Thread.Sleep(20);
            }
            if (child.HasExited)
            {
                child.WaitForExit();
                Assert.Fail($"the child ended (exit code {child.ExitCode}) before it could be killed: {childErr}");
            }
            Assert.That(ready, "first checkpoint and a later step within 5 minutes");
            child.Kill(); // SIGKILL on Unix
            child.WaitForExit();
        }
        finally
        {
            if (!child.HasExited) { child.Kill(); child.WaitForExit(); } // never leave the child running
        }
        int atKill = CheckpointStep(ckpt);
        int logged = File.ReadAllLines(csv).Length - 1;
        Assert.That(atKill, Is.EqualTo(2), "killed in the second epoch: the first epoch's checkpoint");
        Assert.That(logged, Is.GreaterThan(atKill), "the killed run logged steps the checkpoint does not hold");
        Assert.That(Directory.GetFiles(ckpt).Select(Path.GetFileName),
            Is.SupersetOf(new[] { TrainerCheckpoint.ModelFile, TrainerCheckpoint.OptimizerFile, TrainerCheckpoint.StateFile }));

        var resumed = FinetuneWorkflowTests.Run(Args(data, killed));
        Assert.That(resumed.Code, Is.EqualTo(0), resumed.Err);
        Assert.That(resumed.Err, Does.Contain($"at step {atKill} of {steps}"));

        // the same loss terms per step (steps_per_s, column 5, is a timing)
        string[] Rows(string dir) => File.ReadAllLines(Path.Combine(dir, "losses.csv"))
            .Select(l => string.Join(',', l.Split(',').Where((_, i) => i != 5))).ToArray();
        var expected = Rows(reference);
        Assert.That(expected, Has.Length.EqualTo(1 + steps));
        Assert.That(Rows(killed), Is.EqualTo(expected));
        // TensorBoard's view (its restart purge replayed): each step once, the uninterrupted run's values
        var board = TfEventReader.Accumulate(Path.Combine(reference, "tensorboard"))["loss/core"];
        Assert.That(board.Select(p => p.Step), Is.EqualTo(Enumerable.Range(1, steps).Select(i => (long)i)));
        Assert.That(TfEventReader.Accumulate(Path.Combine(killed, "tensorboard"))["loss/core"], Is.EqualTo(board));

        // byte-identical final weights (every tensor of the released layout)
        using (var a = SafetensorsFile.Open(Path.Combine(reference, "model.safetensors")))
        using (var b = SafetensorsFile.Open(Path.Combine(killed, "model.safetensors")))
        {
            Assert.That(b.Names, Is.EquivalentTo(a.Names));
            foreach (var name in a.Names)
                Assert.That(Bytes(b, name).AsSpan().SequenceEqual(Bytes(a, name)), $"{name} differs from the uninterrupted run");
        }
        var hidden = Directory.GetFileSystemEntries(killed, "*", SearchOption.AllDirectories).Where(p => Path.GetFileName(p).StartsWith('.'));
        Assert.That(hidden, Is.Empty, "no temporary file or folder left");
    }

    private static int CheckpointStep(string ckpt)
    {
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(ckpt, TrainerCheckpoint.StateFile)));
                return doc.RootElement.GetProperty("Step").GetInt32();
            }
            catch (IOException) when (attempt < 50) { Thread.Sleep(20); } // replaced between the check and the read
        }
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

    /// <summary><c>dotnet sam3.dll ARGS</c> (the CLI next to the tests, else in its project's output folder).</summary>
    private static Process StartCli(string[] args, System.Text.StringBuilder stderr)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "sam3.dll");
        if (!File.Exists(dll) && Directory.Exists(Path.Combine(SharedData.RepoRoot, "src", "Sam3.Cli", "bin")))
            dll = Directory.GetFiles(Path.Combine(SharedData.RepoRoot, "src", "Sam3.Cli", "bin"), "sam3.dll", SearchOption.AllDirectories)
                .OrderByDescending(File.GetLastWriteTimeUtc).FirstOrDefault() ?? dll;
        if (!File.Exists(dll)) TestPolicy.Missing("the built CLI (sam3.dll next to the tests or under src/Sam3.Cli/bin)");
        string host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h
            : Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";
        var psi = new ProcessStartInfo(host) { RedirectStandardOutput = false, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        var process = Process.Start(psi)!;
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        process.BeginErrorReadLine(); // drained continuously: a full pipe would stall the child
        return process;
    }
}
