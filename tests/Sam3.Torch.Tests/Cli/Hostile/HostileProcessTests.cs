using System.Diagnostics;
using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.Infrastructure;
using static Sam3.Torch.Tests.Cli.Hostile.HostileSandbox;

namespace Sam3.Torch.Tests.Cli.Hostile;

/// <summary>
/// Corpus cases that need process isolation or the machine: the native stderr of a child process (libpng), a file-size
/// limit (<c>ulimit -f</c>, SIGXFSZ ignored, so writes fail with EFBIG as on a full disk), a full tmpfs (root only),
/// and runs on one output folder from two processes (the run lock).
/// </summary>
[TestFixture, Category("Fast"), NonParallelizable]
public class HostileProcessTests
{
    private string _root = null!;
    private HostileSandbox _sb = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        _root = Path.Combine(Path.GetTempPath(), "sam3-hostile-proc-" + Guid.NewGuid().ToString("N"));
        string shared = Path.Combine(_root, "shared");
        Directory.CreateDirectory(shared);
        File.Copy(SharedData.Parity("tiny", "model.safetensors"), Path.Combine(shared, "tiny.safetensors"));
        File.Copy(SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"), Path.Combine(shared, "bpe_simple_vocab_16e6.txt.gz"));
        File.WriteAllBytes(Path.Combine(shared, "img.png"), PngBytes(64, 48));
        File.WriteAllBytes(Path.Combine(shared, "img.jpg"), JpegBytes(40, 32));
        _sb = new HostileSandbox(shared, Path.Combine(_root, "case"));
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    private HostileSandbox Fresh(string name) => new(_sb.Shared, Path.Combine(_root, name));

    private static string CliDll()
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "sam3.dll");
        if (!File.Exists(dll)) TestPolicy.Missing("the built CLI (sam3.dll next to the tests)");
        return dll;
    }

    private static string DotnetHost() =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h
        : Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";

    /// <summary>Runs sam3 in a child process, optionally under bash with a file-size limit (KiB) and SIGXFSZ ignored.</summary>
    private static HostileResult RunChild(string[] args, int? fileSizeLimitKb = null)
    {
        ProcessStartInfo psi;
        if (fileSizeLimitKb is int kb)
        {
            psi = new ProcessStartInfo("bash");
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add($"trap '' XFSZ; ulimit -f {kb}; exec \"$0\" \"$@\"");
            psi.ArgumentList.Add(DotnetHost());
            // the runtime's W^X double mapping grows a memory file with ftruncate, which the limit would refuse
            psi.Environment["DOTNET_EnableWriteXorExecute"] = "0";
        }
        else psi = new ProcessStartInfo(DotnetHost());
        psi.RedirectStandardOutput = psi.RedirectStandardError = true;
        psi.UseShellExecute = false;
        psi.ArgumentList.Add(CliDll());
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(120_000))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"sam3 {string.Join(' ', args)} did not finish within 120 s");
        }
        return new HostileResult(process.ExitCode, stdout.Result, stderr.Result);
    }

    [Test]
    public void CorruptPngGivesOneLineAndNoLibpngText()
    {
        var s = Fresh("corrupt-png");
        string bad = s.Write("crc.png", HostileCorpus.CorruptIdat(PngBytes(64, 48)));
        var before = Snapshot(s.Shared, s.Root);
        var r = RunChild(s.Segment(bad, "--text", "cat"));
        HostileContract.AssertOneLineFailure(r, 1, "crc.png");
        Assert.That(r.Err, Does.Not.Contain("libpng"));
        HostileContract.AssertUnchanged(before, Snapshot(s.Shared, s.Root), "sandbox");
    }

    [Test]
    public void DevZeroImageInAChildProcessIsRefusedWithoutReadingIt()
    {
        var s = Fresh("devzero");
        var r = RunChild(s.Segment("/dev/zero", "--text", "cat"));
        HostileContract.AssertOneLineFailure(r, 1, "not a regular file");
    }

    [Test]
    public void FileSizeLimitOnForceLeavesTheOldPairIntactAndNoTemporaries()
    {
        var s = Fresh("ulimit");
        s.Write("out/img.png", "old overlay");
        s.Write("out/img.json", "{\"old\": true}");
        var before = Snapshot(s.Shared, s.Root);
        // the 64x48 noise overlay PNG is about 9 KiB: a 4 KiB limit fails its write (EFBIG), as a full disk would
        var r = RunChild(s.SegmentText("--force"), fileSizeLimitKb: 4);
        Assert.That(r.ExitCode, Is.EqualTo(1), r.ToString());
        var errors = r.ErrLines.Where(l => !l.StartsWith("loaded ")).ToList();
        Assert.That(errors, Has.Count.EqualTo(1), r.ToString());
        Assert.That(errors[0], Does.StartWith("sam3: cannot write ").And.Contain("img.png"));
        Assert.That(r.Err, Does.Not.Contain("   at "));
        HostileContract.AssertUnchanged(before, Snapshot(s.Shared, s.Root), "sandbox");
        HostileContract.AssertNoLeftovers(s.Root);
    }

    [Test]
    public void FileSizeLimitOnConvertLeavesNoOutput()
    {
        var s = Fresh("ulimit-convert");
        var before = Snapshot(s.Shared, s.Root);
        var r = RunChild(["convert", s.Model, s.P("copy.safetensors")], fileSizeLimitKb: 1024);
        Assert.That(r.ExitCode, Is.EqualTo(1), r.ToString());
        Assert.That(r.ErrLines.Where(l => l.StartsWith("sam3: ")).ToList(), Has.Count.EqualTo(1), r.ToString());
        Assert.That(r.Err, Does.Not.Contain("   at ").And.Not.Contain("internal error"));
        HostileContract.AssertUnchanged(before, Snapshot(s.Shared, s.Root), "sandbox");
    }

    [Test]
    public void FullTmpfsLeavesTheOldPairIntact()
    {
        if (!OperatingSystem.IsLinux() || Environment.UserName != "root") Assert.Ignore("mounting a tmpfs needs root (the file-size-limit test covers the same path)");
        var s = Fresh("tmpfs");
        string mount = s.Dir("small");
        if (!Sh($"mount -t tmpfs -o size=64k tmpfs '{mount}'")) Assert.Ignore("cannot mount a tmpfs here");
        try
        {
            string outDir = Path.Combine(mount, "out");
            Directory.CreateDirectory(outDir);
            File.WriteAllText(Path.Combine(outDir, "img.png"), "old overlay");
            File.WriteAllText(Path.Combine(outDir, "img.json"), "{\"old\": true}");
            // fill it, leaving about 4 KiB: the new overlay (about 9 KiB) does not fit
            long free = new DriveInfo(mount).AvailableFreeSpace;
            File.WriteAllBytes(Path.Combine(mount, "filler"), new byte[Math.Max(0, free - 4096)]);
            var before = Snapshot(mount);
            var o = new StringWriter();
            var e = new StringWriter();
            int code = Program.Run(["segment", "--checkpoint", s.Model, "--config", "tiny", "--vocab", s.Vocab, "--image", s.Png, "--out", outDir, "--text", "cat", "--force"], o, e);
            var r = new HostileResult(code, o.ToString(), e.ToString());
            Assert.That(r.ExitCode, Is.EqualTo(1), r.ToString());
            Assert.That(r.ErrLines.Where(l => l.StartsWith("sam3: ")).ToList(), Has.Count.EqualTo(1), r.ToString());
            Assert.That(r.Err, Does.Contain("No space left").Or.Contain("cannot write"));
            HostileContract.AssertUnchanged(before, Snapshot(mount), "tmpfs");
            Assert.That(File.ReadAllText(Path.Combine(outDir, "img.json")), Is.EqualTo("{\"old\": true}"));
        }
        finally
        {
            Sh($"umount '{mount}'");
        }
    }

    private static bool Sh(string command)
    {
        using var p = Process.Start(new ProcessStartInfo("bash", ["-c", command + " 2>/dev/null"]) { UseShellExecute = false })!;
        p.WaitForExit();
        return p.ExitCode == 0;
    }

    [Test]
    public void ASecondRunOnALockedOutputFolderFailsAtOnce()
    {
        var s = Fresh("lock");
        Directory.CreateDirectory(s.Out);
        // another process holds the folder: the child fails with one line and writes nothing
        using (RunLock.ForFolder(s.Out))
        {
            var before = Snapshot(s.Out).Where(kv => !kv.Key.EndsWith(RunLock.FolderLockName)).ToDictionary();
            var r = RunChild(s.SegmentText());
            HostileContract.AssertOneLineFailure(r, 1, "in use by another sam3 run");
            var after = Snapshot(s.Out).Where(kv => !kv.Key.EndsWith(RunLock.FolderLockName)).ToDictionary();
            HostileContract.AssertUnchanged(before, after, "out");
            // in process too (the lock is per open file, not per process)
            var o = new StringWriter();
            var e = new StringWriter();
            int code = Program.Run(s.SegmentText(), o, e);
            HostileContract.AssertOneLineFailure(new HostileResult(code, o.ToString(), e.ToString()), 1, "in use");
        }
        // released: the run goes through and removes its lock
        var ok = new StringWriter();
        Assert.That(Program.Run(s.SegmentText(), ok, new StringWriter()), Is.EqualTo(0));
        HostileCorpus.AssertPair(s.Out, "img");
        HostileContract.AssertNoLeftovers(s.Out);
    }

    [Test]
    public void TwoProcessesOnOneOutputNeverBothReplaceEachOther()
    {
        var s = Fresh("race");
        var tasks = Enumerable.Range(0, 2).Select(_ => Task.Run(() => RunChild(s.SegmentText()))).ToArray();
        Task.WaitAll(tasks);
        var results = tasks.Select(t => t.Result).ToList();
        Assert.That(results.Count(r => r.ExitCode == 0), Is.EqualTo(1), string.Join("\n", results));
        var loser = results.Single(r => r.ExitCode != 0);
        Assert.That(loser.ErrLines.Where(l => l.StartsWith("sam3: ")).ToList(), Has.Count.EqualTo(1), loser.ToString());
        Assert.That(loser.Err, Does.Contain("in use by another sam3 run").Or.Contain("exists (use --force"));
        HostileCorpus.AssertPair(s.Out, "img");
        HostileContract.AssertNoLeftovers(s.Out);
    }

    [Test]
    public void ConvertOntoALockedOutputFails()
    {
        var s = Fresh("lock-convert");
        string output = s.P("copy.safetensors");
        Directory.CreateDirectory(s.Root);
        using (RunLock.ForFile(output))
        {
            var r = RunChild(["convert", s.Model, output]);
            HostileContract.AssertOneLineFailure(r, 1, "in use by another sam3 run");
            Assert.That(File.Exists(output), Is.False);
        }
    }
}
