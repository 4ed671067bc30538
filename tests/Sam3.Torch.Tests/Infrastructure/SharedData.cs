using NUnit.Framework;

namespace Sam3.Torch.Tests.Infrastructure;

/// <summary>
/// Locates ../shared (the parity fixtures, inputs and docs). Override with SAM3_SHARED; tests that need it call
/// <see cref="Require"/>, which skips them with the reason when it is absent.
/// </summary>
internal static class SharedData
{
    public const string EnvironmentVariable = "SAM3_SHARED";

    public static string RepoRoot { get; } = FindRepoRoot();

    public static string Root
    {
        get
        {
            string? env = Environment.GetEnvironmentVariable(EnvironmentVariable);
            return Path.GetFullPath(string.IsNullOrEmpty(env) ? Path.Combine(RepoRoot, "..", "shared") : env);
        }
    }

    public static bool Available => File.Exists(Path.Combine(Root, "parity", "README.md"));

    /// <summary>Path under shared/; a missing shared/ or file fails the test under CI and skips it elsewhere (see <see cref="TestPolicy"/>).</summary>
    public static string Require(params string[] parts)
    {
        if (!Available)
            TestPolicy.Missing($"shared data not found at {Root} (set {EnvironmentVariable} to the folder holding parity/ and docs/)");
        string path = Path.Combine([Root, .. parts]);
        if (!File.Exists(path) && !Directory.Exists(path))
            TestPolicy.Missing($"shared data file {path}");
        return path;
    }

    public static string Parity(params string[] parts) => Require(["parity", .. parts]);

    private static string FindRepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "Sam3.Torch.sln"))) dir = dir.Parent;
        return dir?.FullName ?? Directory.GetCurrentDirectory();
    }
}
