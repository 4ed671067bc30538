using System.Runtime.CompilerServices;
using NUnit.Framework;
using Sam3.Torch.IO;

namespace Sam3.Torch.Tests.IO;

/// <summary>
/// The huge-page request for LibTorch's allocator (<see cref="HugePageAllocation"/>): it writes the native environment
/// (what c10's getenv reads), never overrides a value the user set, and is made when the model type is first used.
/// Linux only (elsewhere the request is a no-op by design).
/// </summary>
[TestFixture, Category("Fast")]
public class HugePageAllocationTests
{
    [Test]
    public void SetsAnUnsetVariableInTheNativeEnvironmentOnce()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("Linux only");
        string name = "SAM3_TEST_THP_" + Guid.NewGuid().ToString("N");
        Assert.That(HugePageAllocation.NativeValue(name), Is.Null);
        Assert.That(HugePageAllocation.SetIfUnset(name, "1"), Is.True);
        Assert.That(HugePageAllocation.NativeValue(name), Is.EqualTo("1"));
        Assert.That(Environment.GetEnvironmentVariable(name), Is.EqualTo("1"));
        Assert.That(HugePageAllocation.SetIfUnset(name, "2"), Is.False, "a second request must not change it");
        Assert.That(HugePageAllocation.NativeValue(name), Is.EqualTo("1"));
    }

    [Test]
    public void NeverOverridesAValueTheUserSet()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("Linux only");
        string name = "SAM3_TEST_THP_" + Guid.NewGuid().ToString("N");
        Assert.That(HugePageAllocation.SetIfUnset(name, "0"), Is.True); // stands in for the user's own setting
        Assert.That(HugePageAllocation.SetIfUnset(name, "1"), Is.False);
        Assert.That(HugePageAllocation.NativeValue(name), Is.EqualTo("0"));
    }

    [Test]
    public void UsingTheModelTypeRequestsHugePages()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("Linux only");
        RuntimeHelpers.RunClassConstructor(typeof(Sam3Model).TypeHandle);
        // "1" unless the environment of the test run set its own value, which the request keeps
        Assert.That(HugePageAllocation.NativeValue(HugePageAllocation.Variable), Is.Not.Null);
    }
}
