using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Cli;

/// <summary><c>sam3 inspect</c> / <c>convert --layout</c> / <c>parity --checkpoint</c> with the Hugging Face layout (tiny_hf fixture).</summary>
[TestFixture, Category("Fast")]
public class HuggingFaceCliTests
{
    private string _dir = null!;

    [SetUp]
    public void SetUp() => _dir = Directory.CreateTempSubdirectory("sam3-hf-cli-").FullName;

    [TearDown]
    public void TearDown()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    private static string TinyHf => SharedData.Parity("tiny_hf", "model.safetensors");

    [Test]
    public void InspectReportsTheLayoutAndThePredictionCheck()
    {
        foreach (var config in new[] { "tiny", SharedData.Parity("tiny_hf", "config.json") })
        {
            var r = Run("inspect", TinyHf, "--config", config);
            Assert.That(r.Code, Is.EqualTo(0), r.Out + r.Err);
            Assert.That(r.Out, Does.Contain("layout:     Hugging Face transformers"));
            Assert.That(r.Out, Does.Contain("hf check:   predicted for this configuration 707 tensors, 2,808,120 elements; the file has 707, 2,808,120: same keys and shapes"));
            Assert.That(r.Out, Does.Contain("detector point prompts unavailable"));
            Assert.That(r.Out, Does.Contain("match:      yes"));
        }
    }

    [Test]
    public void ConvertBothWays()
    {
        string hf = Path.Combine(_dir, "hf.safetensors"), original = Path.Combine(_dir, "original.safetensors");
        var r1 = Run("convert", SharedData.Parity("tiny", "model.safetensors"), hf, "--layout", "hf");
        Assert.That(r1.Code, Is.EqualTo(0), r1.Out + r1.Err);
        Assert.That(File.ReadAllBytes(hf), Is.EqualTo(File.ReadAllBytes(TinyHf)), "the fixture was written by safetensors.save_file from the same rules");

        // no config.json beside hf.safetensors: the RoPE tables need one
        var noConfig = Run("convert", hf, original, "--layout", "original");
        Assert.That(noConfig.Code, Is.EqualTo(2), noConfig.Err);
        Assert.That(noConfig.Err, Does.Contain("--config"));

        var r2 = Run("convert", hf, original, "--layout", "original", "--config", SharedData.Parity("tiny_hf", "config.json"));
        Assert.That(r2.Code, Is.EqualTo(0), r2.Out + r2.Err);
        Assert.That(r2.Out, Does.Contain("without the 6 detector point-projection tensors"));
        Assert.That(r2.Err, Does.Contain("note: ").And.Contain("layer_norm_eps"), "the config difference is reported once");
        var r3 = Run("inspect", original, "--config", "tiny");
        Assert.That(r3.Out, Does.Contain("layout:     released"));
        Assert.That(r3.Code, Is.EqualTo(0), r3.Out + r3.Err);
        Assert.That(r3.Out, Does.Contain("no detector point projections (6 tensors"), "it loads, with detector point prompts unavailable");
    }

    [Test]
    public void PtConvertsToTheHfLayout()
    {
        string pt = Path.Combine(_dir, "tiny.pt"), hf = Path.Combine(_dir, "hf.safetensors");
        CliTests.WriteAsPt(SharedData.Parity("tiny", "model.safetensors"), pt);
        var r = Run("convert", pt, hf, "--layout", "hf");
        Assert.That(r.Code, Is.EqualTo(0), r.Out + r.Err);
        Assert.That(File.ReadAllBytes(hf), Is.EqualTo(File.ReadAllBytes(TinyHf)));
    }

    [Test]
    public void UsageErrors()
    {
        string outPath = Path.Combine(_dir, "x.safetensors");
        var r = Run("convert", TinyHf, outPath, "--layout", "onnx");
        Assert.That(r.Code, Is.EqualTo(2));
        Assert.That(r.Err, Does.Contain("--layout expects hf or original"));
        r = Run("convert", TinyHf, outPath, "--sidecar", "x");
        Assert.That(r.Code, Is.EqualTo(2));
        r = Run("parity", "--reference", SharedData.Parity(), "--checkpoint", Path.Combine(_dir, "nothing"));
        Assert.That(r.Code, Is.EqualTo(2));
        Assert.That(r.Err, Does.Contain("--checkpoint"));
    }
}
