using NUnit.Framework;
using Sam3.Torch.Precision;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Precision;

/// <summary>The pieces of the bf16 policy that need no model: island matching, the op-level cast, the CPU flag parser.</summary>
[TestFixture, Category("Fast")]
public class PrecisionPolicyTests
{
    [TestCase("transformer.decoder.layers.0.linear1", true)]
    [TestCase("transformer.decoder.layers.5.linear2", true)]
    [TestCase("transformer.decoder.layers.0.self_attn.out_proj", false)]
    [TestCase("transformer.encoder.layers.0.linear1", false)]
    [TestCase("transformer.decoder.layers.x.linear1", false)]
    [TestCase("transformer.decoder.bbox_embed.layers.0", false)]
    public void DecoderFfnIsTheFp32Island(string path, bool island) => Assert.That(PrecisionPolicy.IsFp32Island(path), Is.EqualTo(island));

    [Test]
    public void ToWeightDtypeCastsFloatingInputsOnly()
    {
        using var scope = NewDisposeScope();
        var w = torch.zeros(2, 2, dtype: ScalarType.BFloat16);
        Assert.That(PrecisionPolicy.ToWeightDtype(torch.ones(2, 2), w).dtype, Is.EqualTo(ScalarType.BFloat16));
        Assert.That(PrecisionPolicy.ToWeightDtype(torch.ones(2, 2, dtype: ScalarType.Int64), w).dtype, Is.EqualTo(ScalarType.Int64));
        var same = torch.ones(2, 2);
        Assert.That(PrecisionPolicy.ToWeightDtype(same, torch.zeros(2)).Handle, Is.EqualTo(same.Handle), "fp32 model: no copy");
    }

    [Test]
    public void ApplyCastsGemmModulesAndKeepsNormsAndIslands()
    {
        using var root = nn.Sequential(("proj", nn.Linear(4, 4)), ("norm", nn.LayerNorm(4)), ("conv", nn.Conv2d(4, 4, 1)));
        var summary = PrecisionPolicy.Apply(root);
        Assert.That(summary.GemmModules, Is.EqualTo(2));
        var p = root.named_parameters().ToDictionary(x => x.name, x => x.parameter.dtype);
        Assert.That(p["proj.weight"], Is.EqualTo(ScalarType.BFloat16));
        Assert.That(p["proj.bias"], Is.EqualTo(ScalarType.BFloat16));
        Assert.That(p["conv.weight"], Is.EqualTo(ScalarType.BFloat16));
        Assert.That(p["norm.weight"], Is.EqualTo(ScalarType.Float32));
        Assert.That(summary.Bf16Elements, Is.EqualTo(4 * 4 + 4 + 4 * 4 + 4));
        Assert.That(summary.Fp32Elements, Is.EqualTo(8));
    }

    [Test]
    public void CpuFlagsDecideNativeBf16()
    {
        string[] intelAvx512 = ["processor\t: 0", "flags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni", "bugs\t\t:"];
        string[] sapphire = ["flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile"];
        string[] amd = ["vendor_id\t: AuthenticAMD", "flags\t\t: fpu sse avx avx2 fma"];
        Assert.That(CpuBf16Support.Parse(intelAvx512).Native, Is.False);
        Assert.That(CpuBf16Support.Parse(amd).Native, Is.False);
        Assert.That(CpuBf16Support.Parse(sapphire).Native, Is.True);
        Assert.That(CpuBf16Support.Parse(sapphire).Found, Is.EqualTo(new[] { "avx512_bf16", "amx_bf16" }));
        Assert.That(CpuBf16Support.Parse(["processor\t: 0"]).Native, Is.Null, "no flags line: unknown");
        Assert.That(CpuBf16Support.Detect("/nonexistent/cpuinfo").Native, Is.Null);
    }

    [Test]
    public void SlowNoteOnlyForCpusWithoutNativeBf16()
    {
        Assert.That(CpuBf16Support.SlowBf16Note(DeviceType.CPU, false), Does.StartWith(CpuBf16Support.SlowNotePrefix));
        Assert.That(CpuBf16Support.SlowBf16Note(DeviceType.CPU, true), Is.Null);
        Assert.That(CpuBf16Support.SlowBf16Note(DeviceType.CPU, null), Is.Null);
        Assert.That(CpuBf16Support.SlowBf16Note(DeviceType.CUDA, false), Is.Null);
    }
}
