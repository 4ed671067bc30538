using System.Diagnostics;
using NUnit.Framework;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Build;

/// <summary>
/// The TorchBackend MSBuild property (Directory.Build.props/targets): every value evaluates to its LibTorch bundle for
/// the executables, the library references only the managed package, and an unknown value is an error listing the valid
/// ones. Evaluation only (no restore), so the CUDA values are checked even though their packages are not served here.
/// </summary>
[TestFixture, Category("Slow")] // child msbuild evaluations
public class TorchBackendPropertyTests
{
    private static (int ExitCode, string Output) MsBuild(string project, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = SharedData.RepoRoot };
        psi.ArgumentList.Add("msbuild");
        psi.ArgumentList.Add(Path.Combine(SharedData.RepoRoot, project));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output);
    }

    private static string CliProject => Path.Combine("src", "Sam3.Cli", "Sam3.Cli.csproj");
    private static string LibraryProject => Path.Combine("src", "Sam3.Torch", "Sam3.Torch.csproj");

    [TestCase("cpu", "TorchSharp-cpu")]
    [TestCase("cuda-linux", "TorchSharp-cuda-linux")]
    [TestCase("cuda-windows", "TorchSharp-cuda-windows")]
    public void ExecutablesReferenceTheChosenBundle(string backend, string package)
    {
        var (code, output) = MsBuild(CliProject, "-getItem:PackageReference", $"-p:TorchBackend={backend}");
        Assert.That(code, Is.EqualTo(0), output);
        Assert.That(output, Does.Contain($"\"Identity\": \"{package}\""));
        foreach (var other in new[] { "TorchSharp-cpu", "TorchSharp-cuda-linux", "TorchSharp-cuda-windows" }.Where(o => o != package))
            Assert.That(output, Does.Not.Contain($"\"Identity\": \"{other}\""));
    }

    [Test]
    public void TheLibraryReferencesOnlyTheManagedPackage()
    {
        var (code, output) = MsBuild(LibraryProject, "-getItem:PackageReference", "-p:TorchBackend=cuda-linux");
        Assert.That(code, Is.EqualTo(0), output);
        Assert.That(output, Does.Contain("\"Identity\": \"TorchSharp\""));
        Assert.That(output, Does.Not.Contain("\"Identity\": \"TorchSharp-"));
    }

    [Test]
    public void AnUnknownBackendIsABuildErrorListingTheValidOnes()
    {
        var (code, output) = MsBuild(CliProject, "-t:Sam3ValidateTorchBackend", "-p:TorchBackend=rocm");
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(output, Does.Contain("Unknown TorchBackend 'rocm'"));
        Assert.That(output, Does.Contain("cpu (default), cuda-linux, cuda-windows"));
    }
}
