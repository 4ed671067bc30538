using NUnit.Framework;

namespace Sam3.Torch.Tests.Infrastructure;

/// <summary>
/// The only ways a test may not run. A test that needs hardware this machine lacks is skipped with a reason starting
/// <see cref="GpuOnlyPrefix"/> (the one kind of skip the build script accepts, see build.cake). A missing fixture or
/// data file is a failure under CI (<c>CI=true</c>) and a skip elsewhere, with a reason starting
/// <see cref="MissingPrefix"/>, which the build script also rejects: a run without the fixtures is never green.
/// </summary>
internal static class TestPolicy
{
    public const string GpuOnlyPrefix = "GPU-only:";
    public const string MissingPrefix = "missing:";

    public static bool UnderCi => string.Equals(Environment.GetEnvironmentVariable("CI"), "true", StringComparison.OrdinalIgnoreCase);

    /// <summary>Skips a test that needs a CUDA device.</summary>
    public static void GpuOnly(string reason) => Assert.Ignore($"{GpuOnlyPrefix} {reason}");

    /// <summary>A required fixture or file is absent: a failure under CI, a skip that the build script rejects elsewhere.</summary>
    public static void Missing(string what)
    {
        if (UnderCi) Assert.Fail($"{MissingPrefix} {what} (CI=true: a missing fixture is a failure)");
        Assert.Ignore($"{MissingPrefix} {what}");
    }
}
