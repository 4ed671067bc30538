using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Tests.IO;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// The sam3 command-line tool, in process through <see cref="Program.Run"/> (exit codes, stdout, stderr), plus one
/// end-to-end run of the built executable as a child process.
/// </summary>
[TestFixture, Category("Fast")]
public class CliTests
{
    private string _dir = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        _dir = Path.Combine(Path.GetTempPath(), "sam3-cli-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private sealed record Result(int ExitCode, string Out, string Err)
    {
        public string[] ErrLines => Err.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToArray();
        public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Out}\n--- stderr\n{Err}";
    }

    private static Result Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(args, o, e);
        return new Result(code, o.ToString(), e.ToString());
    }

    private static string TinyModel => SharedData.Parity("tiny", "model.safetensors");

    private static long TinyNumParameters()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(SharedData.Parity("tiny", "config.json")));
        return doc.RootElement.GetProperty("num_parameters").GetInt64();
    }

    private static string N0(long v) => v.ToString("N0", CultureInfo.InvariantCulture);

    /// <summary>A one-line error: exit 1, exactly one stderr line starting "sam3:", no stack trace.</summary>
    private static void AssertOneLineError(Result r, string expectedFragment)
    {
        Assert.That(r.ExitCode, Is.EqualTo(1), r.ToString());
        Assert.That(r.ErrLines, Has.Length.EqualTo(1), r.ToString());
        Assert.That(r.ErrLines[0], Does.StartWith("sam3: ").And.Contain(expectedFragment));
        Assert.That(r.Err, Does.Not.Contain("   at "));
        Assert.That(r.Err, Does.Not.Contain("internal error"));
    }

    private static void AssertUsageError(Result r, string expectedFragment)
    {
        Assert.That(r.ExitCode, Is.EqualTo(2), r.ToString());
        Assert.That(r.ErrLines, Has.Length.EqualTo(1), r.ToString());
        Assert.That(r.ErrLines[0], Does.StartWith("sam3: ").And.Contain(expectedFragment));
        Assert.That(r.Out, Is.Empty);
    }

    private static string Line(string stdout, string label) =>
        stdout.Split('\n').Select(l => l.TrimEnd('\r')).SingleOrDefault(l => l.StartsWith(label + ":"))
        ?? throw new AssertionException($"no '{label}:' line in\n{stdout}");

    // ---------------------------------------------------------------- inspect

    [Test]
    public void InspectTinyCheckpointWithTinyConfigMatches()
    {
        var r = Run("inspect", TinyModel, "--config", "tiny");
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(r.Err, Is.Empty);
        Assert.That(Line(r.Out, "format"), Does.Contain("safetensors"));
        Assert.That(Line(r.Out, "layout"), Does.Contain("released"));
        Assert.That(Line(r.Out, "keys"), Does.Match(@"^keys:\s+623 \("));
        // the reference's sum(p.numel() for p in model.parameters()), recorded by the fixture generator
        Assert.That(Line(r.Out, "parameters"), Does.Match($@"^parameters:\s+{Regex.Escape(N0(TinyNumParameters()))} "));
        Assert.That(r.Out, Does.Contain("float32").And.Contain("complex64"));
        Assert.That(Line(r.Out, "match"), Does.Contain("yes"));
    }

    [Test]
    public void InspectTinyCheckpointWithFullConfigListsTheMismatchingKeys()
    {
        var r = Run("inspect", TinyModel); // default configuration: full
        Assert.That(r.ExitCode, Is.EqualTo(1), r.ToString());
        Assert.That(r.ErrLines, Has.Length.EqualTo(1));
        Assert.That(r.ErrLines[0], Does.Contain("does not fit").And.Contain("full"));
        Assert.That(Line(r.Out, "keys"), Does.Match(@"^keys:\s+623 \(")); // the summary is still printed
        Assert.That(Line(r.Out, "match"), Does.Contain("NO"));

        // What must differ, from the reference manifests of the two image models (RoPE tables included).
        var tiny = ReadManifest(SharedData.Parity("tiny", "model_manifest.json"), "image_model_state_dict");
        var full = ReadManifest(SharedData.Parity("full", "manifest.json"), "image_model", "state_dict");
        var missing = full.Keys.Except(tiny.Keys).ToHashSet();
        var unexpected = tiny.Keys.Except(full.Keys).ToHashSet();
        var wrongShape = tiny.Keys.Intersect(full.Keys).Where(k => !tiny[k].SequenceEqual(full[k])).ToHashSet();
        Assert.That(r.Out, Does.Contain($"{missing.Count} missing, {unexpected.Count} unexpected, {wrongShape.Count} wrongly shaped, 0 wrongly typed"));

        var sections = ParseSections(r.Out);
        Assert.That(sections.Keys, Is.EquivalentTo(new[] { "missing keys", "wrongly shaped keys" }.Concat(unexpected.Count > 0 ? ["unexpected keys"] : Array.Empty<string>())));
        foreach (var (title, (count, lines, more)) in sections)
        {
            var truth = title switch { "missing keys" => missing, "wrongly shaped keys" => wrongShape, _ => unexpected };
            Assert.That(count, Is.EqualTo(truth.Count), title);
            Assert.That(lines, Has.Count.EqualTo(Math.Min(InspectCommand.MaxListedPerKind, truth.Count)), title);
            Assert.That(more, Is.EqualTo(Math.Max(0, truth.Count - InspectCommand.MaxListedPerKind)), title);
            foreach (var line in lines) Assert.That(truth, Does.Contain(line.Split(' ')[0].TrimEnd(':')), $"{title}: {line}");
        }
        // a listed wrong shape shows both shapes, the checkpoint's from the tiny manifest and the model's from the full one
        string pos = sections["wrongly shaped keys"].Lines.Single(l => l.StartsWith("backbone.vision_backbone.trunk.pos_embed "));
        Assert.That(pos, Does.Contain($"checkpoint [{string.Join(", ", tiny["backbone.vision_backbone.trunk.pos_embed"])}], model [{string.Join(", ", full["backbone.vision_backbone.trunk.pos_embed"])}]"));
    }

    private static Dictionary<string, long[]> ReadManifest(string path, params string[] route)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var node = doc.RootElement;
        foreach (var step in route) node = node.GetProperty(step);
        return node.EnumerateArray().ToDictionary(e => e.GetProperty("key").GetString()!,
            e => e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray());
    }

    /// <summary>"title (count):" followed by "  item" lines and an optional "  ... and N more".</summary>
    private static Dictionary<string, (int Count, List<string> Lines, int More)> ParseSections(string stdout)
    {
        var result = new Dictionary<string, (int, List<string>, int)>();
        var header = new Regex(@"^(missing keys|unexpected keys|wrongly shaped keys|wrongly typed keys) \((\d+)\):$");
        var more = new Regex(@"^  \.\.\. and (\d+) more$");
        string? current = null;
        foreach (var raw in stdout.Split('\n'))
        {
            string line = raw.TrimEnd('\r');
            if (header.Match(line) is { Success: true } h)
            {
                current = h.Groups[1].Value;
                result[current] = (int.Parse(h.Groups[2].Value), new List<string>(), 0);
            }
            else if (current is not null && more.Match(line) is { Success: true } m)
                result[current] = (result[current].Item1, result[current].Item2, int.Parse(m.Groups[1].Value));
            else if (current is not null && line.StartsWith("  ")) result[current].Item2.Add(line[2..]);
            else current = null;
        }
        return result;
    }

    [Test]
    public void InspectOfATruncatedFileIsOneLineError()
    {
        string path = Path.Combine(_dir, "truncated.safetensors");
        var bytes = File.ReadAllBytes(TinyModel);
        File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        var r = Run("inspect", path, "--config", "tiny");
        AssertOneLineError(r, "truncated");
        Assert.That(r.Out, Is.Empty);
    }

    [Test]
    public void InspectOfATextFileNamedPtIsOneLineError()
    {
        string path = Path.Combine(_dir, "notes.pt");
        File.WriteAllText(path, "these are not weights\n");
        AssertOneLineError(Run("inspect", path), "unrecognised checkpoint format");
    }

    [Test]
    public void InspectOfAMissingFileIsOneLineError()
    {
        string path = Path.Combine(_dir, "does-not-exist.pt");
        AssertOneLineError(Run("inspect", path), "not found");
    }

    [Test]
    public void UsageErrorsExitWithTwo()
    {
        AssertUsageError(Run("inspect", TinyModel, "--bogus"), "unknown option --bogus");
        AssertUsageError(Run("inspect"), "missing CHECKPOINT");
        AssertUsageError(Run("inspect", TinyModel, "extra"), "unexpected argument 'extra'");
        AssertUsageError(Run("inspect", TinyModel, "--config"), "--config needs a value");
        AssertUsageError(Run("inspect", TinyModel, "--config", Path.Combine(_dir, "no-such-config.json")), "--config expects full, tiny or a configuration file");
        AssertUsageError(Run("convert", TinyModel), "missing OUT");
        AssertUsageError(Run("convert"), "missing IN and OUT");
        AssertUsageError(Run("convert", TinyModel, Path.Combine(_dir, "x.pt")), "must be a .safetensors");
        AssertUsageError(Run("frobnicate"), "unknown command 'frobnicate'");
    }

    [Test]
    public void HelpAndVersion()
    {
        var help = Run("--help");
        Assert.That(help.ExitCode, Is.EqualTo(0));
        Assert.That(help.Out, Does.Contain("sam3 inspect CHECKPOINT").And.Contain("sam3 convert IN OUT.safetensors"));
        Assert.That(help.Err, Is.Empty);
        foreach (var command in new[] { "inspect", "convert" })
        {
            var r = Run(command, "--help");
            Assert.That(r.ExitCode, Is.EqualTo(0), command);
            // the usage line names the executable (sam3; testhost under the test runner)
            Assert.That(r.Out, Does.Contain($" {command} [<").And.Contain("Usage:").And.Contain("--config <"), command);
            Assert.That(r.Err, Is.Empty, command);
        }

        var version = Run("--version");
        Assert.That(version.ExitCode, Is.EqualTo(0));
        var expected = typeof(Sam3Exception).Assembly.GetName().Version!;
        Assert.That(version.Out.Trim(), Does.Match(@"^sam3 \d+\.\d+\.\d+$"));
        Assert.That(version.Out.Trim(), Is.EqualTo($"sam3 {expected.Major}.{expected.Minor}.{expected.Build}"));
    }

    // ---------------------------------------------------------------- convert

    [Test]
    public void ConvertWritesAnEquivalentFileThatInspects()
    {
        string output = Path.Combine(_dir, "converted", "nested", "tiny.safetensors"); // folder does not exist yet
        var r = Run("convert", TinyModel, output);
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        Assert.That(File.Exists(output));
        Assert.That(r.Out, Does.Contain("623 tensors").And.Contain(N0(new FileInfo(output).Length) + " bytes"));

        // stderr is not a terminal: one progress line per 10 % reached, ending at 100 %
        var progress = r.ErrLines;
        Assert.That(progress, Has.Length.InRange(1, 10), r.Err);
        Assert.That(progress, Has.All.Match(@"^convert: +\d+% \("));
        Assert.That(r.Err, Does.Not.Contain("\r"));
        var percents = progress.Select(l => int.Parse(Regex.Match(l, @"(\d+)%").Groups[1].Value)).ToList();
        Assert.That(percents, Is.Ordered.Ascending);
        Assert.That(percents[^1], Is.EqualTo(100));
        Assert.That(percents.Select(p => p / 10).Distinct().Count(), Is.EqualTo(percents.Count), "at most one line per decile");

        var inspect = Run("inspect", output, "--config", "tiny");
        Assert.That(inspect.ExitCode, Is.EqualTo(0), inspect.ToString());
        Assert.That(Line(inspect.Out, "parameters"), Does.Contain(N0(TinyNumParameters())));

        using var a = SafetensorsFile.Open(TinyModel);
        using var b = SafetensorsFile.Open(output);
        Assert.That(b.Names.OrderBy(n => n, StringComparer.Ordinal), Is.EqualTo(a.Names.OrderBy(n => n, StringComparer.Ordinal)));
        using var scope = NewDisposeScope();
        foreach (var name in a.Names)
        {
            Assert.That(SameInfo(a.Info(name), b.Info(name)), name);
            Assert.That(CheckpointTestFiles.Same(a.Load(name), b.Load(name)), name);
        }
    }

    private static bool SameInfo(CheckpointTensorInfo x, CheckpointTensorInfo y) =>
        x.Name == y.Name && x.Shape.SequenceEqual(y.Shape) && x.DType == y.DType && x.ComplexAsReal == y.ComplexAsReal;

    [Test]
    public void ConvertOnATerminalDrawsAProgressBarWithRateAndRemainingTime()
    {
        string output = Path.Combine(_dir, "terminal.safetensors");
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(["convert", TinyModel, output], o, e, stderrIsTerminal: true);
        Assert.That(code, Is.EqualTo(0), e.ToString());
        string err = e.ToString();
        TestContext.Out.WriteLine(err);
        // Spectre.Console's bar, left at its final state: the label, 100 %, the rate in tensors/s
        string last = err.Split('\n', StringSplitOptions.RemoveEmptyEntries).Last(l => l.Contains("convert"));
        Assert.That(last, Does.Contain("convert").And.Contain("100%").And.Contain("tensors/s"));
        Assert.That(o.ToString(), Does.Contain("623 tensors"), "the summary goes to stdout after the bar");
    }

    [Test]
    public void ConvertRefusesToOverwriteWithoutForce()
    {
        string output = Path.Combine(_dir, "existing.safetensors");
        byte[] original = "precious bytes, not a checkpoint"u8.ToArray();
        File.WriteAllBytes(output, original);

        var r = Run("convert", TinyModel, output);
        AssertOneLineError(r, "already exists");
        Assert.That(r.ErrLines[0], Does.Contain("--force"));
        Assert.That(File.ReadAllBytes(output), Is.EqualTo(original));
        Assert.That(Directory.GetFiles(_dir, ".existing.safetensors*"), Is.Empty, "no temporary file left");

        var forced = Run("convert", TinyModel, output, "--force");
        Assert.That(forced.ExitCode, Is.EqualTo(0), forced.ToString());
        using var file = SafetensorsFile.Open(output);
        Assert.That(file.Names, Has.Count.EqualTo(623));
    }

    [Test]
    public void ConvertRefusesToWriteOntoItsInput()
    {
        string input = Path.Combine(_dir, "self", "model.safetensors");
        Directory.CreateDirectory(Path.GetDirectoryName(input)!);
        File.Copy(TinyModel, input);
        byte[] before = File.ReadAllBytes(input);
        string sameFileOtherSpelling = Path.Combine(_dir, "self", ".", "..", "self", "model.safetensors");
        foreach (var output in new[] { input, sameFileOtherSpelling })
        {
            var r = Run("convert", input, output, "--force");
            AssertUsageError(r, "OUT is the input file");
        }
        Assert.That(File.ReadAllBytes(input).AsSpan().SequenceEqual(before), "the input is unchanged");
    }

    [Test]
    public void PtCheckpointInspectsAndConvertsToTheSameTensors()
    {
        // the tiny weights re-saved as a PyTorch zip checkpoint (complex RoPE tables as ComplexFloatStorage)
        string pt = Path.Combine(_dir, "tiny.pt");
        WriteAsPt(TinyModel, pt);

        var inspect = Run("inspect", pt, "--config", "tiny");
        Assert.That(inspect.ExitCode, Is.EqualTo(0), inspect.ToString());
        Assert.That(Line(inspect.Out, "format"), Does.StartWith("format:     pt"));
        Assert.That(Line(inspect.Out, "keys"), Does.Match(@"^keys:\s+623 \("));
        Assert.That(Line(inspect.Out, "parameters"), Does.Contain(N0(TinyNumParameters())));

        string output = Path.Combine(_dir, "from-pt.safetensors");
        var convert = Run("convert", pt, output);
        Assert.That(convert.ExitCode, Is.EqualTo(0), convert.ToString());
        using var a = SafetensorsFile.Open(TinyModel);
        using var b = SafetensorsFile.Open(output);
        Assert.That(b.Names.OrderBy(n => n, StringComparer.Ordinal), Is.EqualTo(a.Names.OrderBy(n => n, StringComparer.Ordinal)));
        using var scope = NewDisposeScope();
        foreach (var name in a.Names)
        {
            Assert.That(b.IsComplexAsReal(name), Is.EqualTo(a.IsComplexAsReal(name)), name);
            Assert.That(CheckpointTestFiles.Same(a.Load(name), b.Load(name)), name);
        }
    }

    internal static void WriteAsPt(string safetensorsPath, string ptPath)
    {
        using var src = SafetensorsFile.Open(safetensorsPath);
        var builder = new TorchPtBuilder();
        using var fs = File.OpenRead(safetensorsPath);
        int i = 0;
        foreach (var name in src.Names)
        {
            var e = src.Entries[name];
            Assert.That(e.DType, Is.EqualTo("F32"), "the tiny checkpoint is float32 only");
            var data = new byte[e.End - e.Begin];
            fs.Position = src.DataStart + e.Begin;
            fs.ReadExactly(data);
            string key = (i++).ToString(CultureInfo.InvariantCulture);
            bool complex = src.IsComplexAsReal(name);
            long[] shape = complex ? e.Shape[..^1] : e.Shape;
            builder.AddStorage(key, complex ? "ComplexFloatStorage" : "FloatStorage", data, shape.Aggregate(1L, (x, y) => x * y));
            builder.AddTensor(name, key, 0, shape);
        }
        builder.Write(ptPath);
    }

    // ---------------------------------------------------------------- the built executable

    [Test]
    public void BuiltExecutableReportsVersionAndOneLineErrorsWithExitCodes()
    {
        var version = RunExecutable("--version");
        Assert.That(version.ExitCode, Is.EqualTo(0), version.ToString());
        Assert.That(version.Out.Trim(), Does.Match(@"^sam3 \d+\.\d+\.\d+$"));
        Assert.That(version.Err, Is.Empty);

        string missing = Path.Combine(_dir, "nonexistent", "sam3.pt");
        var failed = RunExecutable("inspect", missing);
        AssertOneLineError(failed, "not found");
        Assert.That(failed.Out, Is.Empty);

        var usage = RunExecutable("inspect", "--no-such-option");
        Assert.That(usage.ExitCode, Is.EqualTo(2), usage.ToString());
        Assert.That(usage.ErrLines, Has.Length.EqualTo(1));
    }

    /// <summary>
    /// Runs the CLI as a child process: <c>dotnet sam3.dll</c> next to the test assembly (the project reference copies
    /// it there), else in the CLI project's output folder.
    /// </summary>
    private static Result RunExecutable(params string[] args)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "sam3.dll");
        if (!File.Exists(dll))
        {
            dll = Directory.Exists(Path.Combine(SharedData.RepoRoot, "src", "Sam3.Cli", "bin"))
                ? Directory.GetFiles(Path.Combine(SharedData.RepoRoot, "src", "Sam3.Cli", "bin"), "sam3.dll", SearchOption.AllDirectories)
                    .OrderByDescending(File.GetLastWriteTimeUtc).FirstOrDefault() ?? dll
                : dll;
        }
        if (!File.Exists(dll)) TestPolicy.Missing("the built CLI (sam3.dll next to the tests or under src/Sam3.Cli/bin)");
        string host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h
            : Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";
        var psi = new ProcessStartInfo(host)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(60_000))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"sam3 {string.Join(' ', args)} did not finish within 60 s");
        }
        return new Result(process.ExitCode, stdout.Result, stderr.Result);
    }
}
