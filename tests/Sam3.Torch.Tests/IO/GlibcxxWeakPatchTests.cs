using Sam3.Torch.Tests.Infrastructure;
using NUnit.Framework;
using Sam3.Torch.IO;

namespace Sam3.Torch.Tests.IO;

[TestFixture, Category("Fast")]
public class GlibcxxWeakPatchTests
{
    /// <summary>The unpatched library as shipped in the TorchSharp NuGet package (the build patches only its copy).</summary>
    private static string PackagedLibrary()
    {
        string home = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
                      ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string path = Path.Combine(home, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", GlibcxxWeakPatch.LibraryFileName);
        if (!File.Exists(path)) TestPolicy.Missing($"TorchSharp's packaged native library at {path}");
        return path;
    }

    [Test]
    public void PatchWeakensExactlyTheMeasuredVersionAndIsIdempotent()
    {
        string temp = Path.Combine(Path.GetTempPath(), $"sam3-glibcxx-{Guid.NewGuid():N}.so");
        File.Copy(PackagedLibrary(), temp);
        try
        {
            byte[] before = File.ReadAllBytes(temp);
            var strong = GlibcxxWeakPatch.FindStrongNeeds(before, GlibcxxWeakPatch.WeakenableVersions);
            Assert.That(strong, Has.Count.EqualTo(1), "TorchSharp 0.107.0 needs GLIBCXX_3.4.32 exactly once");

            Assert.That(GlibcxxWeakPatch.PatchFile(temp, checkSystem: false), Is.EqualTo(GlibcxxPatchOutcome.Patched));
            byte[] after = File.ReadAllBytes(temp);
            Assert.That(GlibcxxWeakPatch.FindStrongNeeds(after, GlibcxxWeakPatch.WeakenableVersions), Is.Empty);
            var changed = Enumerable.Range(0, before.Length).Where(i => before[i] != after[i]).ToList();
            Assert.That(changed, Has.Count.EqualTo(1), "only the low byte of vna_flags changes");
            Assert.That(changed[0], Is.EqualTo(strong[0]));
            Assert.That(after[changed[0]] & GlibcxxWeakPatch.VerFlgWeak, Is.EqualTo(GlibcxxWeakPatch.VerFlgWeak));

            Assert.That(GlibcxxWeakPatch.PatchFile(temp, checkSystem: false), Is.EqualTo(GlibcxxPatchOutcome.AlreadyWeakOrAbsent));
            Assert.That(File.ReadAllBytes(temp), Is.EqualTo(after));
        }
        finally { File.Delete(temp); }
    }

    [Test]
    public void NonElfInputIsRejectedAndMissingFileIsReported()
    {
        Assert.Throws<InvalidDataException>(() => GlibcxxWeakPatch.FindStrongNeeds(new byte[128], GlibcxxWeakPatch.WeakenableVersions));
        Assert.That(GlibcxxWeakPatch.PatchFile("/nonexistent/libLibTorchSharp.so"), Is.EqualTo(GlibcxxPatchOutcome.NotFound));
    }

    [Test]
    public void TorchLoadsInThisProcess()
    {
        using var t = TorchSharp.torch.arange(4);
        Assert.That(t.sum().item<long>(), Is.EqualTo(6));
    }
}
