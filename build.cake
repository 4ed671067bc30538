// Sam3.Torch build script. Usage: dotnet tool restore && dotnet cake --target=<Build|Test|Bench|Parity>
//   --configuration=Release|Debug   --backend=cpu|cuda-linux|cuda-windows   --filter=<dotnet test filter>
//   --reference=<fixture dir> (Parity; default ../shared/parity)   --bench=<BenchmarkDotNet filter> (Bench)
using System.Text.RegularExpressions;
using System.Xml.Linq;

var target = Argument("target", "Test");
var configuration = Argument("configuration", "Release");
var backend = Argument("backend", "cpu");
var filter = Argument("filter", "");
var reference = Argument("reference", "../shared/parity");
var bench = Argument("bench", "*");

var msbuild = new DotNetMSBuildSettings().WithProperty("TorchBackend", backend);

Task("Build").Does(() =>
{
    DotNetBuild("Sam3.Torch.sln", new DotNetBuildSettings { Configuration = configuration, MSBuildSettings = msbuild });
});

Task("Test").IsDependentOn("Build").Does(() =>
{
    var resultsDir = MakeAbsolute(Directory("TestResults"));
    CleanDirectory(resultsDir);
    Exception failure = null;
    try
    {
        DotNetTest("tests/Sam3.Torch.Tests/Sam3.Torch.Tests.csproj", new DotNetTestSettings
        {
            Configuration = configuration,
            NoBuild = true,
            Filter = string.IsNullOrEmpty(filter) ? null : filter,
            Loggers = new[] { "trx;LogFileName=results.trx", "console;verbosity=normal" },
            ResultsDirectory = resultsDir,
            MSBuildSettings = msbuild,
        });
    }
    catch (Exception e) { failure = e; }

    // The CI of this workplace reads a final "N passed, N failed" line, not dotnet's summary.
    int passed = 0, failed = 0, skipped = 0;
    var badSkips = new List<string>();
    var failures = new List<string>();
    foreach (var trx in GetFiles(resultsDir + "/**/*.trx"))
    {
        var doc = XDocument.Load(trx.FullPath);
        // Failed tests are listed again just above the summary: a reader that keeps only the tail of the log still sees
        // which test failed and why.
        foreach (var r in doc.Descendants().Where(e => e.Name.LocalName == "UnitTestResult" && (string)e.Attribute("outcome") is "Failed" or "Error" or "Timeout"))
        {
            string message = string.Concat(r.Descendants().Where(e => e.Name.LocalName == "Message").Select(e => e.Value)).Trim();
            var lines = message.Split('\n').Select(l => l.TrimEnd()).Where(l => l.Length > 0).Take(6);
            failures.Add($"FAILED {(string)r.Attribute("testName")}: {string.Join(" | ", lines)}");
        }
        // The only accepted skip is a GPU-only test on a machine without CUDA (reason "GPU-only: ..."; see
        // tests/.../Infrastructure/TestPolicy.cs). Any other skip (a missing fixture, an Ignore) fails the run.
        foreach (var r in doc.Descendants().Where(e => e.Name.LocalName == "UnitTestResult" && (string)e.Attribute("outcome") == "NotExecuted"))
        {
            string message = string.Concat(r.Descendants().Where(e => e.Name.LocalName is "Message" or "StdOut").Select(e => e.Value));
            if (!message.TrimStart().StartsWith("GPU-only:"))
                badSkips.Add($"{(string)r.Attribute("testName")}: {message.Trim().Split('\n')[0]}");
        }
        var counters = doc.Descendants().First(e => e.Name.LocalName == "Counters");
        passed += int.Parse(counters.Attribute("passed").Value);
        failed += int.Parse(counters.Attribute("failed").Value) + int.Parse(counters.Attribute("error").Value) + int.Parse(counters.Attribute("timeout").Value);
        skipped += int.Parse(counters.Attribute("total").Value) - int.Parse(counters.Attribute("passed").Value)
                   - int.Parse(counters.Attribute("failed").Value) - int.Parse(counters.Attribute("error").Value) - int.Parse(counters.Attribute("timeout").Value);
    }
    if (failure != null && passed + failed == 0) failed = 1; // the run itself broke
    foreach (var b in badSkips) Warning($"skipped without an accepted reason (only GPU-only skips are allowed): {b}");
    failed += badSkips.Count; // counted as failures: a run that skipped what it must run is not green
    // Plain text on its own line (Cake's log colours it, which would hide it from line-based readers).
    System.Console.Out.Flush();
    foreach (var f in failures) System.Console.WriteLine(f.Length > 1500 ? f.Substring(0, 1500) + " ..." : f);
    System.Console.WriteLine($"{passed} passed, {failed} failed, {skipped} skipped");
    if (failure != null || failed > 0) throw new Exception($"{failed} test(s) failed");
});

Task("Bench").Does(() =>
{
    DotNetRun("benchmarks/Sam3.Torch.Benchmarks/Sam3.Torch.Benchmarks.csproj",
        new ProcessArgumentBuilder().Append("--filter").AppendQuoted(bench),
        new DotNetRunSettings { Configuration = "Release", MSBuildSettings = msbuild });
});

Task("Parity").IsDependentOn("Build").Does(() =>
{
    DotNetRun("src/Sam3.Cli/Sam3.Cli.csproj",
        new ProcessArgumentBuilder().Append("parity").Append("--reference").AppendQuoted(reference),
        new DotNetRunSettings { Configuration = configuration, NoBuild = true, MSBuildSettings = msbuild });
});

RunTarget(target);
