using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Text;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Tests.Modeling.Encoder;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Text;

[TestFixture, Category("Fast")]
public class TextEncoderTests
{
    private const string Prefix = "detector.backbone.language_backbone.";

    private static VETextEncoder Tiny()
    {
        var m = new VETextEncoder(Sam3Config.Tiny);
        TinyWeights.LoadInto(m, Prefix);
        m.eval();
        return m;
    }

    /// <summary>Recorded tokenizer ids (shared/parity/tokenizer.*) of a string the fixture's tokenizer capture contains.</summary>
    private static Tensor RecordedTokenIds(string text)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(SharedData.Parity("tokenizer.json")));
        var entry = doc.RootElement.GetProperty("strings").EnumerateArray().FirstOrDefault(s => s.GetProperty("text").GetString() == text);
        if (entry.ValueKind == JsonValueKind.Undefined) TestPolicy.Missing($"tokenizer fixture entry for '{text}'");
        int index = entry.GetProperty("index").GetInt32();
        using var st = SafetensorsFile.Open(SharedData.Parity("tokenizer.safetensors"));
        return st.Load("ids")[index].unsqueeze(0).clone();
    }

    [Test]
    public void KeysAndShapesMatchTinyCheckpoint()
    {
        using var m = new VETextEncoder(Sam3Config.Tiny);
        KeyLayout.AssertMatches(m, KeyLayout.Tiny(Prefix));
    }

    [Test]
    public void KeysShapesAndParameterCountMatchFullCheckpointOnMeta()
    {
        using var m = KeyLayout.OnMeta(() => new VETextEncoder(Sam3Config.Full));
        Assert.That(m.resizer.weight!.device_type, Is.EqualTo(DeviceType.META));
        KeyLayout.AssertMatches(m, KeyLayout.Full(Prefix));
        Assert.That(KeyLayout.ParameterCount(m), Is.EqualTo(KeyLayout.FullParamCount(Prefix.TrimEnd('.'))));
    }

    [Test]
    public void ScenarioA_TransformerAndOutputsMatchReference()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var ids = fx.Get("text.token_ids");
        Fixtures.AssertClose(fx, "text.transformer_out", m.encoder.forward(ids));
        var o = m.forward(ids);
        Fixtures.AssertClose(fx, "text.out.0", o.LanguageMask);
        Fixtures.AssertClose(fx, "text.out.1", o.LanguageFeatures);
        Fixtures.AssertClose(fx, "text.out.2", o.LanguageEmbeds);
    }

    [Test]
    public void ScenarioB_PromptTextMatchesReference()
    {
        using var fx = Fixtures.Tiny("b_image_batch_text");
        string prompt = fx.Parameters.GetProperty("prompt").GetString()!;
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var o = m.forward(RecordedTokenIds(prompt));
        Fixtures.AssertClose(fx, "text.out.0", o.LanguageMask);
        Fixtures.AssertClose(fx, "text.out.1", o.LanguageFeatures);
        Fixtures.AssertClose(fx, "text.out.2", o.LanguageEmbeds);
    }

    [Test]
    public void ScenarioC_DummyVisualTextMatchesReference()
    {
        using var fx = Fixtures.Tiny("c_geometric_prompts");
        // parameters.text_prompt = "visual (dummy, set by add_geometric_prompt)": the encoded text is its first word
        string text = fx.Parameters.GetProperty("text_prompt").GetString()!.Split(' ')[0];
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var o = m.forward(RecordedTokenIds(text));
        Fixtures.AssertClose(fx, "step1.text.out.0", o.LanguageMask);
        Fixtures.AssertClose(fx, "step1.text.out.1", o.LanguageFeatures);
        Fixtures.AssertClose(fx, "step1.text.out.2", o.LanguageEmbeds);
    }

    [Test]
    public void BatchOfTwoPromptsEqualsSingleRuns()
    {
        using var fx = Fixtures.Tiny("a_image_text");
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var ids = torch.cat([fx.Get("text.token_ids"), RecordedTokenIds("visual")], 0);
        var o = m.forward(ids);
        Assert.That(o.LanguageFeatures.shape, Is.EqualTo(new long[] { 32, 2, Sam3Config.Tiny.Text.DModel }));
        Fixtures.AssertClose(fx, "text.out.1", o.LanguageFeatures[.., TensorIndex.Slice(0, 1)]);
        Fixtures.AssertClose(fx, "text.out.0", o.LanguageMask[TensorIndex.Slice(0, 1)]);
    }

    [Test]
    public void CausalMaskIsMinusInfinityAboveTheDiagonal()
    {
        using var m = new VETextEncoder(Sam3Config.Tiny);
        using var scope = NewDisposeScope();
        var mask = m.encoder.CausalMask(torch.CPU, 4);
        float n = float.NegativeInfinity;
        Assert.That(mask.shape, Is.EqualTo(new long[] { 4, 4 }));
        Assert.That(mask.data<float>().ToArray(), Is.EqualTo(new float[] { 0, n, n, n, 0, 0, n, n, 0, 0, 0, n, 0, 0, 0, 0 }));
    }

    [Test]
    public void PaddingMaskIsIdsEqualZeroUnlessGiven()
    {
        using var m = Tiny();
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        // upstream quirk: id 0 (also the BPE id of a bare "!") is masked wherever it appears
        var ids = torch.tensor(new long[] { 49406, 0, 2533, 49407, 0, 0 }).view(1, 6);
        var o = m.forward(ids);
        Assert.That(o.LanguageMask.data<bool>().ToArray(), Is.EqualTo(new[] { false, true, false, false, true, true }));
        var explicitMask = torch.tensor(new[] { false, false, false, false, true, true }).view(1, 6);
        var o2 = m.forward(ids, explicitMask);
        Assert.That(o2.LanguageMask.data<bool>().ToArray(), Is.EqualTo(new[] { false, false, false, false, true, true }));
        Assert.That(o2.LanguageFeatures.sub(o.LanguageFeatures).abs().max().item<float>(), Is.EqualTo(0f), "the mask does not enter the text transformer");
    }

    [Test]
    public void BadTokenIdsAreTypedErrors()
    {
        using var m = new VETextEncoder(Sam3Config.Tiny);
        using var scope = NewDisposeScope();
        Assert.Throws<Sam3PromptException>(() => m.forward(torch.tensor(new long[] { 1, Sam3Config.Tiny.Text.VocabSize }).view(1, 2)));
        Assert.Throws<Sam3PromptException>(() => m.forward(torch.tensor(new long[] { -1, 3 }).view(1, 2)));
        Assert.Throws<Sam3PromptException>(() => m.forward(torch.zeros(1, Sam3Config.Tiny.Text.ContextLength + 1, dtype: ScalarType.Int64)));
        Assert.Throws<Sam3PromptException>(() => m.forward(torch.zeros(32, dtype: ScalarType.Int64)));
        Assert.Throws<Sam3PromptException>(() => m.forward(torch.zeros(1, 32)));
    }
}
