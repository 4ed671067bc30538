using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// The command line parsed by System.CommandLine: response files, completions, generated help with the declared
/// options, and the one-line error contract (usage errors on stderr, exit code 2) kept across the migration.
/// </summary>
[TestFixture, Category("Fast")]
public class CommandLineParsingTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => Directory.CreateDirectory(_dir = Path.Combine(Path.GetTempPath(), "sam3-cmdline-" + Guid.NewGuid().ToString("N")));

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    private static string[] Lines(string s) => s.Split('\n', StringSplitOptions.RemoveEmptyEntries);

    [Test]
    public void NoArgumentsPrintsTheUsageOnStderrWithExitCode2()
    {
        var r = Run();
        Assert.That(r.Code, Is.EqualTo(2));
        Assert.That(r.Out, Is.Empty);
        Assert.That(r.Err, Does.Contain("sam3 segment --checkpoint PATH"));
    }

    [Test]
    public void EveryCommandHasGeneratedHelpListingItsDeclaredOptions()
    {
        foreach (var spec in CliCommands.All)
        {
            var r = Run(spec.Name, "--help");
            Assert.That(r.Code, Is.EqualTo(0), spec.Name);
            Assert.That(r.Err, Is.Empty, spec.Name);
            foreach (var o in spec.Options)
                Assert.That(r.Out, Does.Contain("--" + o.Name), $"{spec.Name} --{o.Name}");
            foreach (var o in spec.Options.Where(o => o.Required))
                Assert.That(r.Out, Does.Match($@"--{o.Name}\b.*\(REQUIRED\)"), $"{spec.Name} --{o.Name} is marked required");
        }
    }

    [TestCase(new[] { "segment", "--image", "a.jpg", "--out", "o" }, "missing required option --checkpoint")]
    [TestCase(new[] { "segment", "--checkpoint" }, "option --checkpoint needs a value")]
    [TestCase(new[] { "segment", "--frobnicate", "1" }, "unknown option --frobnicate")]
    [TestCase(new[] { "inspect", "x.pt", "--bogus=3" }, "unknown option --bogus")]
    [TestCase(new[] { "frobnicate" }, "unknown command 'frobnicate'")]
    [TestCase(new[] { "segment", "--threshold", "0.5", "--threshold", "0.6" }, "--threshold")]
    [TestCase(new[] { "serve", "extra" }, "unexpected argument 'extra'")]
    public void UsageErrorsAreOneLineWithExitCode2(string[] args, string expected)
    {
        var r = Run(args);
        Assert.That(r.Code, Is.EqualTo(2), r.Err);
        Assert.That(r.Out, Is.Empty);
        var lines = Lines(r.Err);
        Assert.That(lines, Has.Length.EqualTo(1), r.Err);
        Assert.That(lines[0], Does.StartWith("sam3: ").And.Contain(expected));
    }

    [Test]
    public void ResponseFilesExpandIntoArguments()
    {
        // @FILE holds arguments one per line; they parse exactly as if typed (here: a usage error that names the value read from the file)
        string rsp = Path.Combine(_dir, "args.rsp");
        File.WriteAllLines(rsp, ["--checkpoint", Path.Combine(_dir, "from-response-file.pt"), "--image", "a.jpg"]);
        var r = Run("segment", "@" + rsp);
        Assert.That(r.Code, Is.EqualTo(2), r.Err);
        Assert.That(r.Err.Trim(), Is.EqualTo("sam3: missing required option --out"));
    }

    [Test]
    public void OptionOrderIsKeptForPromptsThatTakeTheFollowingObjectId()
    {
        // track: each --obj takes the prompts since the previous one; the order survives System.CommandLine's parse
        var spec = CliCommands.All.Single(c => c.Name == "track");
        var captured = new StringWriter();
        var root2 = CliSpec.Build([spec with { Run = (a, c) => { captured.Write(string.Join(" ", a.Ordered)); return 0; } }],
            new CliContext(TextWriter.Null, TextWriter.Null, false), "overview");
        root2.Parse(["track", "--checkpoint", "c", "--video", "v", "--out", "o", "--point", "1,2@0", "--obj", "3", "--box=0,0,5,5@1", "--obj", "4", "--reverse"]).Invoke();
        Assert.That(captured.ToString(), Is.EqualTo("--checkpoint c --video v --out o --point 1,2@0 --obj 3 --box 0,0,5,5@1 --obj 4 --reverse"));
    }

    [Test]
    public void CompletionsAreOfferedThroughTheSuggestDirective()
    {
        var r = Run("[suggest:12]", "sam3 segm");
        Assert.That(r.Code, Is.EqualTo(0), r.Err);
        Assert.That(Lines(r.Out).Select(l => l.Trim()), Does.Contain("segment"));
        var options = Run("[suggest:18]", "sam3 segment --thr");
        Assert.That(Lines(options.Out).Select(l => l.Trim()), Does.Contain("--threshold"));
    }
}
