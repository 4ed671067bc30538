using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Cli.Hostile;

/// <summary>
/// The hostile-input corpus (issue 17), in process through <see cref="Program.Run"/>: each case is its own test named
/// Hostile.KIND.NAME. Cases needing process isolation (native stderr, a file-size limit, two processes) are in
/// <see cref="HostileProcessTests"/>.
/// </summary>
[TestFixture, Category("Fast"), NonParallelizable]
public class HostileCorpusTests
{
    private static string? s_shared;
    private string _root = null!;

    public static IEnumerable<TestCaseData> Cases() =>
        HostileCorpus.All().Select(c => new TestCaseData(c).SetName($"Hostile.{c.Kind}.{c.Name}"));

    [OneTimeSetUp]
    public void SetUp()
    {
        _root = Path.Combine(Path.GetTempPath(), "sam3-hostile-" + Guid.NewGuid().ToString("N"));
        s_shared = Path.Combine(_root, "shared");
        Directory.CreateDirectory(s_shared);
        File.Copy(SharedData.Parity("tiny", "model.safetensors"), Path.Combine(s_shared, "tiny.safetensors"));
        File.Copy(SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"), Path.Combine(s_shared, "bpe_simple_vocab_16e6.txt.gz"));
        File.WriteAllBytes(Path.Combine(s_shared, "img.png"), HostileSandbox.PngBytes(64, 48));
        File.WriteAllBytes(Path.Combine(s_shared, "img.jpg"), HostileSandbox.JpegBytes(40, 32));
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    [TestCaseSource(nameof(Cases))]
    public void MeetsTheContract(HostileCase c)
    {
        var sb = new HostileSandbox(s_shared!, Path.Combine(_root, "cases", $"{c.Kind}.{c.Name}"));
        string[] args = c.Arrange(sb);
        var before = HostileSandbox.Snapshot(sb.Shared, sb.Root);
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(args, o, e);
        var r = new HostileResult(code, o.ToString(), e.ToString());
        var after = HostileSandbox.Snapshot(sb.Shared, sb.Root);
        if (c.Exit == 0)
        {
            Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
            var inputsAfter = after.Where(kv => !kv.Key.StartsWith(sb.Out)).ToDictionary();
            var inputsBefore = before.Where(kv => !kv.Key.StartsWith(sb.Out)).ToDictionary();
            HostileContract.AssertUnchanged(inputsBefore, inputsAfter, "inputs");
            c.Verify?.Invoke(sb, r);
        }
        else
        {
            HostileContract.AssertOneLineFailure(r, c.Exit, c.Fragment);
            HostileContract.AssertUnchanged(before, after, "sandbox");
            c.Verify?.Invoke(sb, r);
        }
        HostileContract.AssertNoLeftovers(sb.Shared, sb.Root);
    }
}
