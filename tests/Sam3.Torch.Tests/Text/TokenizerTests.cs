using System.IO.Compression;
using System.Text;
using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Text;

/// <summary>
/// The CLIP BPE tokenizer against shared/parity/tokenizer.json + tokenizer.safetensors (35 strings run through the
/// reference SimpleTokenizer as VETextEncoder calls it) and against TokenizerExtraCases.json (adversarial strings
/// run through the same reference code by gen_tokenizer_extra_cases.py). Strings and expected values are read
/// from those files, never typed in here.
/// </summary>
[TestFixture, Category("Fast")]
public class TokenizerTests
{
    private sealed record FixtureString(int Index, string Text, string CleanedText, int[] BpeIds, string[] BpeTokens,
                                        int NumTokensWithSotEot, bool Truncated, string Decoded);

    private sealed record Fixture(int ContextLength, int SotId, int EotId, int VocabSize, int PadId,
                                  IReadOnlyList<FixtureString> Strings, long[,] Ids, bool[,] Mask);

    private static Fixture? _fixture;
    private static ClipBpeTokenizer? _tokenizer;
    private static ClipBpeTokenizer? _tokenizerNoFtfy;

    private static string VocabPath => SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz");

    private static ClipBpeTokenizer Tokenizer => _tokenizer ??= ClipBpeTokenizer.FromBpeGz(VocabPath);

    private static ClipBpeTokenizer TokenizerNoFtfy =>
        _tokenizerNoFtfy ??= ClipBpeTokenizer.FromBpeGz(VocabPath, new ClipTokenizerOptions { ApplyFtfy = false });

    private static Fixture LoadFixture()
    {
        if (_fixture != null) return _fixture;
        string jsonPath = SharedData.Parity("tokenizer.json");
        string stPath = SharedData.Parity("tokenizer.safetensors");
        using var doc = JsonDocument.Parse(File.ReadAllText(jsonPath));
        var root = doc.RootElement;
        var strings = root.GetProperty("strings").EnumerateArray().Select(e => new FixtureString(
            e.GetProperty("index").GetInt32(),
            e.GetProperty("text").GetString()!,
            e.GetProperty("cleaned_text").GetString()!,
            e.GetProperty("bpe_ids_unpadded").EnumerateArray().Select(x => x.GetInt32()).ToArray(),
            e.GetProperty("bpe_tokens").EnumerateArray().Select(x => x.GetString()!).ToArray(),
            e.GetProperty("num_tokens_with_sot_eot").GetInt32(),
            e.GetProperty("truncated").GetBoolean(),
            e.GetProperty("decoded").GetString()!)).ToList();

        using var st = SafetensorsFile.Open(stPath);
        using var ids = st.Load("ids");
        using var mask = st.Load("padding_mask");
        int n = (int)ids.shape[0], ctx = (int)ids.shape[1];
        var idData = ids.data<long>().ToArray();
        var maskData = mask.data<bool>().ToArray();
        var ids2 = new long[n, ctx];
        var mask2 = new bool[n, ctx];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < ctx; j++)
            {
                ids2[i, j] = idData[i * ctx + j];
                mask2[i, j] = maskData[i * ctx + j];
            }
        _fixture = new Fixture(root.GetProperty("context_length").GetInt32(), root.GetProperty("sot_token_id").GetInt32(),
            root.GetProperty("eot_token_id").GetInt32(), root.GetProperty("vocab_size").GetInt32(),
            root.GetProperty("pad_id").GetInt32(), strings, ids2, mask2);
        Assert.That(_fixture.Strings, Has.Count.EqualTo(n), "tokenizer.json and tokenizer.safetensors disagree on the string count");
        return _fixture;
    }

    private static string[] Texts(Fixture f) => f.Strings.Select(s => s.Text).ToArray();

    private static void AssertBatchEquals(ClipTokenizedBatch batch, Fixture f, string what)
    {
        Assert.That(batch.Count, Is.EqualTo(f.Ids.GetLength(0)));
        Assert.That(batch.ContextLength, Is.EqualTo(f.Ids.GetLength(1)));
        Assert.Multiple(() =>
        {
            for (int i = 0; i < batch.Count; i++)
            {
                var got = Enumerable.Range(0, batch.ContextLength).Select(j => batch.Ids[i, j]).ToArray();
                var want = Enumerable.Range(0, batch.ContextLength).Select(j => f.Ids[i, j]).ToArray();
                Assert.That(got, Is.EqualTo(want), $"{what}: ids of string {i} {JsonSerializer.Serialize(f.Strings[i].Text)}");
                var gotMask = Enumerable.Range(0, batch.ContextLength).Select(j => batch.PaddingMask[i, j]).ToArray();
                var wantMask = Enumerable.Range(0, batch.ContextLength).Select(j => f.Mask[i, j]).ToArray();
                Assert.That(gotMask, Is.EqualTo(wantMask), $"{what}: padding mask of string {i} {JsonSerializer.Serialize(f.Strings[i].Text)}");
            }
        });
    }

    // ------------------------------------------------------------------------------------------ the fixture

    [Test]
    public void VocabularyFactsMatchTheFixtureAndTheConfig()
    {
        var f = LoadFixture();
        var tok = Tokenizer;
        Assert.Multiple(() =>
        {
            Assert.That(tok.StartOfTextId, Is.EqualTo(f.SotId));
            Assert.That(tok.EndOfTextId, Is.EqualTo(f.EotId));
            Assert.That(tok.VocabularySize, Is.EqualTo(f.VocabSize));
            Assert.That(tok.VocabularySize, Is.EqualTo(Sam3Config.Full.Text.VocabSize));
            Assert.That(ClipBpeTokenizer.PadId, Is.EqualTo(f.PadId));
            Assert.That(tok.ContextLength, Is.EqualTo(Sam3Config.Full.Text.ContextLength));
            Assert.That(tok.ContextLength, Is.EqualTo(f.ContextLength));
            Assert.That(tok.IdToToken(tok.StartOfTextId), Is.EqualTo(ClipBpeTokenizer.StartOfTextName));
            Assert.That(tok.IdToToken(tok.EndOfTextId), Is.EqualTo(ClipBpeTokenizer.EndOfTextName));
            // The quirk: the padding id is also the vocabulary's bare "!" piece.
            Assert.That(tok.IdToToken(ClipBpeTokenizer.PadId), Is.EqualTo("!"));
        });
    }

    [Test]
    public void AllFixtureStringsGiveTheReferenceIdsAndMasks()
    {
        var f = LoadFixture();
        var batch = Tokenizer.Tokenize(Texts(f), f.ContextLength);
        AssertBatchEquals(batch, f, "ftfy subset on");
    }

    [Test]
    public void AllFixtureStringsGiveTheReferenceIdsAndMasksWithFtfyOff()
    {
        var f = LoadFixture();
        AssertBatchEquals(TokenizerNoFtfy.Tokenize(Texts(f), f.ContextLength), f, "ftfy subset off");
    }

    [Test]
    public void DefaultContextLengthComesFromTheConfig()
    {
        var f = LoadFixture();
        AssertBatchEquals(Tokenizer.Tokenize(Texts(f)), f, "default context length");
        var wide = ClipBpeTokenizer.FromBpeGz(VocabPath, new ClipTokenizerOptions { Text = Sam3Config.Full.Text with { ContextLength = 77 } });
        var batch = wide.Tokenize(["a dog"]);
        Assert.That(batch.ContextLength, Is.EqualTo(77));
    }

    [Test]
    public void TensorOutputEqualsTheFixtureTensors()
    {
        var f = LoadFixture();
        using var scope = NewDisposeScope();
        var (ids, mask) = Tokenizer.TokenizeToTensors(Texts(f));
        using var st = SafetensorsFile.Open(SharedData.Parity("tokenizer.safetensors"));
        var wantIds = st.Load("ids");
        var wantMask = st.Load("padding_mask");
        Assert.Multiple(() =>
        {
            Assert.That(ids.dtype, Is.EqualTo(ScalarType.Int64));
            Assert.That(mask.dtype, Is.EqualTo(ScalarType.Bool));
            Assert.That(ids.shape, Is.EqualTo(wantIds.shape));
            Assert.That(mask.shape, Is.EqualTo(wantMask.shape));
            Assert.That(Same(ids, wantIds), Is.True, "ids tensor");
            Assert.That(Same(mask, wantMask), Is.True, "padding mask tensor");
            // VETextEncoder: text_attention_mask = (tokenized != 0).bool().ne(1)
            Assert.That(Same(mask, ids.ne(0).ne(1)), Is.True, "mask = ids == 0");
        });
    }

    private static bool Same(Tensor a, Tensor b) =>
        a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.eq(b).all().item<bool>();

    [Test]
    public void CleaningPiecesDecodeAndTruncationMatchTheFixture()
    {
        var f = LoadFixture();
        var tok = Tokenizer;
        var batch = tok.Tokenize(Texts(f));
        Assert.Multiple(() =>
        {
            foreach (var s in f.Strings)
            {
                string label = $"string {s.Index} {JsonSerializer.Serialize(s.Text)}";
                Assert.That(tok.Clean(s.Text), Is.EqualTo(s.CleanedText), $"{label}: cleaned text");
                int[] ids = tok.Encode(s.Text);
                Assert.That(ids, Is.EqualTo(s.BpeIds), $"{label}: Encode");
                Assert.That(ids.Select(tok.IdToToken).ToArray(), Is.EqualTo(s.BpeTokens), $"{label}: BPE pieces");
                Assert.That(tok.Decode(ids), Is.EqualTo(s.Decoded), $"{label}: Decode");
                Assert.That(batch.Truncated[s.Index], Is.EqualTo(s.Truncated), $"{label}: truncated");
                Assert.That(batch.Lengths[s.Index], Is.EqualTo(Math.Min(s.NumTokensWithSotEot, f.ContextLength)), $"{label}: length");
            }
        });
    }

    [Test]
    public void TruncatedStringEndsWithEndOfText()
    {
        var f = LoadFixture();
        var longOnes = f.Strings.Where(s => s.Truncated).ToList();
        Assert.That(longOnes, Is.Not.Empty, "the fixture has a string longer than the context");
        foreach (var s in longOnes)
        {
            var b = Tokenizer.Tokenize(s.Text);
            Assert.That(b.Ids[0, f.ContextLength - 1], Is.EqualTo(f.EotId));
            // The first context-2 BPE ids are kept, in order.
            var kept = Enumerable.Range(1, f.ContextLength - 2).Select(j => (int)b.Ids[0, j]).ToArray();
            Assert.That(kept, Is.EqualTo(s.BpeIds.Take(f.ContextLength - 2).ToArray()));
        }
    }

    [Test]
    public void CorrectedMaskMasksOnlyRealPadding()
    {
        var f = LoadFixture();
        var batch = Tokenizer.Tokenize(Texts(f), maskMode: PaddingMaskMode.AfterEndOfText);
        int quirkRows = 0;
        Assert.Multiple(() =>
        {
            foreach (var s in f.Strings)
            {
                int len = Math.Min(s.NumTokensWithSotEot, f.ContextLength);
                bool rowHasBang = false;
                for (int j = 0; j < f.ContextLength; j++)
                {
                    Assert.That(batch.PaddingMask[s.Index, j], Is.EqualTo(j >= len), $"string {s.Index} position {j}");
                    Assert.That(batch.Ids[s.Index, j], Is.EqualTo(f.Ids[s.Index, j]), "the mask mode does not change ids");
                    if (j < len && f.Ids[s.Index, j] == ClipBpeTokenizer.PadId)
                    {
                        rowHasBang = true;
                        Assert.That(f.Mask[s.Index, j], Is.True, "the reference masks the in-sequence id 0 (quirk)");
                    }
                }
                if (rowHasBang) quirkRows++;
            }
        });
        Assert.That(quirkRows, Is.GreaterThan(0), "the fixture contains the bare '!' quirk");
        var viaOptions = ClipBpeTokenizer.FromBpeGz(VocabPath, new ClipTokenizerOptions { PaddingMask = PaddingMaskMode.AfterEndOfText });
        Assert.That(viaOptions.Tokenize(Texts(f)).PaddingMask, Is.EqualTo(batch.PaddingMask));
    }

    // ------------------------------------------------------------------------------------------ extra cases

    [Test]
    public void ExtraCasesMatchTheReferenceWithFtfyOff()
    {
        string path = Path.Combine(SharedData.RepoRoot, "tests", "Sam3.Torch.Tests", "Text", "TokenizerExtraCases.json");
        if (!File.Exists(path)) TestPolicy.Missing($"extra cases file {path}");
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        int ctx = doc.RootElement.GetProperty("context_length").GetInt32();
        var cases = doc.RootElement.GetProperty("cases").EnumerateArray().ToList();
        Assert.That(cases, Is.Not.Empty);
        var tok = TokenizerNoFtfy;
        var batch = tok.Tokenize(cases.Select(c => c.GetProperty("text").GetString()!).ToArray(), ctx);
        Assert.Multiple(() =>
        {
            for (int i = 0; i < cases.Count; i++)
            {
                var c = cases[i];
                string text = c.GetProperty("text").GetString()!;
                string label = $"case {i} {JsonSerializer.Serialize(text)}";
                Assert.That(tok.Clean(text), Is.EqualTo(c.GetProperty("cleaned_text").GetString()), $"{label}: cleaned");
                Assert.That(tok.Encode(text), Is.EqualTo(c.GetProperty("bpe_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray()), $"{label}: bpe ids");
                var want = c.GetProperty("ids").EnumerateArray().Select(x => x.GetInt64()).ToArray();
                var got = Enumerable.Range(0, ctx).Select(j => batch.Ids[i, j]).ToArray();
                Assert.That(got, Is.EqualTo(want), $"{label}: padded ids");
            }
        });
    }

    // ------------------------------------------------------------------------------------------ ftfy subset

    /// <summary>Expected values are ftfy 6.1.1's own documented examples (docstrings of ftfy/fixes.py).</summary>
    [TestCase("&lt;tag&gt;", "<tag>")]
    [TestCase("&Jscr;ohn &HilbertSpace;ancock", "\U0001D4A5ohn \u210Bancock")]
    [TestCase("&checkmark;", "\u2713")]
    [TestCase("P&eacute;rez", "P\u00E9rez")]
    [TestCase("P&EACUTE;REZ", "P\u00C9REZ")]
    [TestCase("BUNDESSTRA&SZLIG;E", "BUNDESSTRASSE")]
    [TestCase("&ntilde; &Ntilde; &NTILDE; &nTILDE;", "\u00F1 \u00D1 \u00D1 &nTILDE;")]
    public void FtfyUnescapeHtmlFollowsItsDocumentation(string input, string expected) =>
        Assert.That(FtfySubset.UnescapeHtml(input), Is.EqualTo(expected));

    [Test]
    public void FtfyFixersFollowTheirDocumentation()
    {
        Assert.Multiple(() =>
        {
            Assert.That(FtfySubset.FixText("\u001b[36;44mI'm blue, da ba dee da ba doo...\u001b[0m"), Is.EqualTo("I'm blue, da ba dee da ba doo..."));
            Assert.That(FtfySubset.UncurlQuotes("\u201chere\u2019s a test\u201d"), Is.EqualTo("\"here's a test\""));
            Assert.That(FtfySubset.FixLatinLigatures("\uFB02u\uFB03e\uFB06"), Is.EqualTo("fluffiest"));
            Assert.That(FtfySubset.FixCharacterWidth("\uFF2C\uFF2F\uFF35\uFF24\u3000\uFF2E\uFF2F\uFF29\uFF33\uFF25\uFF33"), Is.EqualTo("LOUD NOISES"));
            Assert.That(FtfySubset.FixCharacterWidth("\uFF35\uFF80\uFF70\uFF9D"), Is.EqualTo("U\u30BF\u30FC\u30F3"));
            Assert.That(FtfySubset.FixLineBreaks("This string is made of two things:\u20291. Unicode\u20282. Spite"), Is.EqualTo("This string is made of two things:\n1. Unicode\n2. Spite"));
            Assert.That(FtfySubset.FixLineBreaks("Content-type: text/plain\r\n\r\nHi."), Is.EqualTo("Content-type: text/plain\n\nHi."));
            Assert.That(FtfySubset.FixLineBreaks("This is how Microsoft \r trolls Mac users"), Is.EqualTo("This is how Microsoft \n trolls Mac users"));
            Assert.That(FtfySubset.FixLineBreaks("What is this \u0085 I don't even"), Is.EqualTo("What is this \n I don't even"));
            Assert.That(FtfySubset.FixSurrogates("\udca9\ud83d"), Is.EqualTo("\uFFFD\uFFFD"));
            Assert.That(FtfySubset.FixSurrogates("\ud83d\udca9"), Is.EqualTo("\ud83d\udca9"));
            Assert.That(FtfySubset.RemoveControlChars("\uFEFFWhere\u0000 do\u0007 you\u007F want\u206A to\uFFFC go"), Is.EqualTo("Where do you want to go"));
            Assert.That(FtfySubset.RemoveControlChars("tab\tlf\nff\fcr\r"), Is.EqualTo("tab\tlf\nff\fcr\r"));
        });
    }

    [Test]
    public void FtfyUnescapesUntilStableButNotInHtml()
    {
        Assert.Multiple(() =>
        {
            // fix_and_explain repeats its steps until nothing changes.
            Assert.That(FtfySubset.FixText("&amp;amp;amp;"), Is.EqualTo("&"));
            // unescape_html="auto" is off once a segment contains '<' (also for the later segments).
            Assert.That(FtfySubset.FixText("<b>&amp;</b>"), Is.EqualTo("<b>&amp;</b>"));
            Assert.That(FtfySubset.FixText("<b>\n&amp;"), Is.EqualTo("<b>\n&amp;"));
            Assert.That(FtfySubset.FixText("&amp;\n<b>"), Is.EqualTo("&\n<b>"));
            // no semicolon: not an ftfy entity (html.unescape in the tokenizer still decodes it)
            Assert.That(FtfySubset.FixText("&amp x"), Is.EqualTo("&amp x"));
        });
    }

    /// <summary>
    /// Prompts that differ from a fixture string only in what ftfy fixes (NFC, character width, curly quotes,
    /// ligatures) must give that fixture string's reference ids; with the ftfy subset off they do not.
    /// </summary>
    [TestCase("cafe\u0301", "caf\u00E9")]
    [TestCase("\uFF23\uFF21\uFF34", "cat")]
    [TestCase("don\u2019t stop", "don't stop")]
    [TestCase("tra\uFB03c light", "traffic light")]
    [TestCase("\uFF12\uFF10\uFF12\uFF14\u3000olympics", "2024 olympics")]
    public void FtfyNormalisesToTheFixtureString(string variant, string fixtureText)
    {
        var f = LoadFixture();
        var s = f.Strings.Single(x => x.Text == fixtureText);
        Assert.That(Tokenizer.Encode(variant), Is.EqualTo(s.BpeIds), "ftfy subset on");
        Assert.That(TokenizerNoFtfy.Encode(variant), Is.Not.EqualTo(s.BpeIds), "ftfy subset off");
    }

    // ------------------------------------------------------------------------------------------ Python semantics

    /// <summary>Expected values from CPython 3.11 (html.unescape / str.lower / str.strip), the reference's runtime.</summary>
    [TestCase("&notit;", "\u00ACit;")]
    [TestCase("&#x80;&#150;", "\u20AC\u2013")]
    [TestCase("&#0;&#xD800;&#1114112;", "\uFFFD\uFFFD\uFFFD")]
    [TestCase("a&#11;b&#xFFFF;c", "abc")]
    [TestCase("&#65&#x42x", "ABx")]
    [TestCase("&amp&lt&gt", "&<>")]
    [TestCase("&;&#;&#x;& ", "&;&#;&#x;& ")]
    [TestCase("&acE;", "\u223E\u0333")]
    public void PythonHtmlUnescape(string input, string expected) => Assert.That(PythonHtml.Unescape(input), Is.EqualTo(expected));

    [TestCase("\u039F\u0394\u039F\u03A3 \u03A3\u0391\u03A3", "\u03BF\u03B4\u03BF\u03C2 \u03C3\u03B1\u03C2")]
    [TestCase("\u03A3", "\u03C3")]
    [TestCase("\u0391\u03A3'\u03A3", "\u03B1\u03C3'\u03C2")]
    [TestCase("\u0130stanbul", "i\u0307stanbul")]
    [TestCase("\U00010400", "\U00010428")]
    public void PythonLower(string input, string expected) => Assert.That(PythonText.Lower(input), Is.EqualTo(expected));

    [Test]
    public void PythonStripIncludesInformationSeparators() =>
        Assert.That(PythonText.Strip("\u001c\u001f\u00a0 x \u3000\u0085"), Is.EqualTo("x"));

    // ------------------------------------------------------------------------------------------ Hugging Face pair

    /// <summary>
    /// Writes vocab.json + merges.txt the way CLIP's Hugging Face files are built (256 byte symbols in
    /// bytes_to_unicode order, the same with "&lt;/w&gt;", the merge results, then the two special tokens; merges.txt =
    /// "#version: 0.2" + one merge per line), built here independently of the library's loader.
    /// </summary>
    private static (string VocabJson, string MergesTxt) WriteHuggingFacePair(string dir, string startName, string endName, int extraMergeLines = 0)
    {
        string text;
        using (var gz = new GZipStream(File.OpenRead(VocabPath), CompressionMode.Decompress))
        using (var reader = new StreamReader(gz, Encoding.UTF8))
            text = reader.ReadToEnd();
        var lines = text.Split('\n');
        int mergeCount = Sam3Config.Full.Text.VocabSize - 256 - 256 - 2;
        var merges = lines.Skip(1).Take(mergeCount).ToList();

        var printable = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range(0xA1, 0xAC - 0xA1 + 1))
            .Concat(Enumerable.Range(0xAE, 0xFF - 0xAE + 1)).ToList();
        var symbols = printable.Select(b => ((char)b).ToString()).ToList();
        int extra = 0;
        for (int b = 0; b < 256; b++)
            if (!printable.Contains(b)) symbols.Add(((char)(256 + extra++)).ToString());
        var vocab = new List<string>(symbols);
        vocab.AddRange(symbols.Select(s => s + "</w>"));
        vocab.AddRange(merges.Select(m => string.Concat(m.Split(' '))));
        vocab.Add(startName);
        vocab.Add(endName);

        var map = new Dictionary<string, int>();
        for (int i = 0; i < vocab.Count; i++) map[vocab[i]] = i;
        string vocabPath = Path.Combine(dir, "vocab.json");
        string mergesPath = Path.Combine(dir, "merges.txt");
        File.WriteAllText(vocabPath, JsonSerializer.Serialize(map));
        var mergeLines = merges.Concat(lines.Skip(1 + mergeCount).Take(extraMergeLines)); // extra: an untrimmed merge list
        File.WriteAllText(mergesPath, "#version: 0.2\n" + string.Join("\n", mergeLines) + "\n");
        return (vocabPath, mergesPath);
    }

    [TestCase(ClipBpeTokenizer.HuggingFaceStartOfTextName, ClipBpeTokenizer.HuggingFaceEndOfTextName, 0)]
    [TestCase(ClipBpeTokenizer.StartOfTextName, ClipBpeTokenizer.EndOfTextName, 0)]
    [TestCase(ClipBpeTokenizer.HuggingFaceStartOfTextName, ClipBpeTokenizer.HuggingFaceEndOfTextName, 1000)]
    public void HuggingFacePairGivesTheSameIdsAsTheGzVocabulary(string startName, string endName, int extraMergeLines)
    {
        var f = LoadFixture();
        string dir = Directory.CreateTempSubdirectory("sam3-tok-").FullName;
        try
        {
            var (vocabJson, mergesTxt) = WriteHuggingFacePair(dir, startName, endName, extraMergeLines);
            var hf = ClipBpeTokenizer.FromHuggingFace(vocabJson, mergesTxt);
            Assert.Multiple(() =>
            {
                Assert.That(hf.VocabularySize, Is.EqualTo(Tokenizer.VocabularySize));
                Assert.That(hf.MergeCount, Is.EqualTo(Tokenizer.MergeCount));
                Assert.That(hf.StartOfTextId, Is.EqualTo(f.SotId));
                Assert.That(hf.EndOfTextId, Is.EqualTo(f.EotId));
                foreach (var s in f.Strings)
                    Assert.That(hf.Encode(s.Text), Is.EqualTo(Tokenizer.Encode(s.Text)), $"string {s.Index} {JsonSerializer.Serialize(s.Text)}");
            });
            AssertBatchEquals(hf.Tokenize(Texts(f)), f, "Hugging Face pair");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    // ------------------------------------------------------------------------------------------ robustness

    [Test]
    public void ConcurrentCallersGetTheReferenceIds()
    {
        var f = LoadFixture();
        var tok = ClipBpeTokenizer.FromBpeGz(VocabPath); // fresh cache
        var failures = new System.Collections.Concurrent.ConcurrentBag<string>();
        Parallel.For(0, 8 * f.Strings.Count, new ParallelOptions { MaxDegreeOfParallelism = 8 }, k =>
        {
            var s = f.Strings[k % f.Strings.Count];
            if (!tok.Encode(s.Text).SequenceEqual(s.BpeIds)) failures.Add(s.Text);
        });
        Assert.That(failures, Is.Empty);
    }

    [Test]
    public void CacheDisabledGivesTheSameIds()
    {
        var f = LoadFixture();
        var tok = ClipBpeTokenizer.FromBpeGz(VocabPath, new ClipTokenizerOptions { MaxCacheEntries = 0 });
        AssertBatchEquals(tok.Tokenize(Texts(f)), f, "no cache");
    }

    [Test]
    public void BadPromptsThrowPromptExceptions()
    {
        var tok = Tokenizer;
        Assert.Multiple(() =>
        {
            Assert.Throws<Sam3PromptException>(() => tok.Encode(null!));
            Assert.Throws<Sam3PromptException>(() => tok.Tokenize((IReadOnlyList<string>)null!));
            Assert.Throws<Sam3PromptException>(() => tok.Tokenize((string)null!));
            var ex = Assert.Throws<Sam3PromptException>(() => tok.Tokenize(["ok", null!]));
            Assert.That(ex!.Message, Does.Contain("1"));
            Assert.Throws<Sam3PromptException>(() => tok.Tokenize(["ok"], 0));
            Assert.Throws<Sam3PromptException>(() => tok.TokenizeToTensors(null!));
            Assert.Throws<Sam3PromptException>(() => tok.Decode([tok.VocabularySize]));
            Assert.Throws<Sam3PromptException>(() => tok.Decode([-1]));
        });
        var empty = tok.Tokenize(Array.Empty<string>());
        Assert.That(empty.Count, Is.EqualTo(0));
    }

    [Test]
    public void BadVocabularyFilesThrowNamingTheFile()
    {
        string dir = Directory.CreateTempSubdirectory("sam3-tok-bad-").FullName;
        try
        {
            string missing = Path.Combine(dir, "missing.txt.gz");
            AssertVocabError(() => ClipBpeTokenizer.FromBpeGz(missing), missing);

            string notGzip = Path.Combine(dir, "not-gzip.txt.gz");
            File.WriteAllBytes(notGzip, Encoding.ASCII.GetBytes("this is not gzip data at all"));
            AssertVocabError(() => ClipBpeTokenizer.FromBpeGz(notGzip), notGzip);

            string truncated = Path.Combine(dir, "truncated.txt.gz");
            WriteGzip(truncated, "header\ni n\nt h\n");
            AssertVocabError(() => ClipBpeTokenizer.FromBpeGz(truncated), truncated);

            string badLine = Path.Combine(dir, "bad-line.txt.gz");
            WriteGzip(badLine, "header\n" + string.Join("\n", Enumerable.Repeat("a b c", 49000)));
            AssertVocabError(() => ClipBpeTokenizer.FromBpeGz(badLine), badLine);

            string badUtf8 = Path.Combine(dir, "bad-utf8.txt.gz");
            using (var fs = File.Create(badUtf8))
            using (var gz = new GZipStream(fs, CompressionLevel.Fastest))
                gz.Write([0x68, 0xFF, 0xFE, 0x0A]);
            AssertVocabError(() => ClipBpeTokenizer.FromBpeGz(badUtf8), badUtf8);

            var (vocabJson, mergesTxt) = WriteHuggingFacePair(dir, ClipBpeTokenizer.HuggingFaceStartOfTextName, ClipBpeTokenizer.HuggingFaceEndOfTextName);
            string noVocab = Path.Combine(dir, "nope.json");
            AssertVocabError(() => ClipBpeTokenizer.FromHuggingFace(noVocab, mergesTxt), noVocab);
            string noMerges = Path.Combine(dir, "nope.txt");
            AssertVocabError(() => ClipBpeTokenizer.FromHuggingFace(vocabJson, noMerges), noMerges);

            string badJson = Path.Combine(dir, "bad.json");
            File.WriteAllText(badJson, "{\"a\": 0, ");
            AssertVocabError(() => ClipBpeTokenizer.FromHuggingFace(badJson, mergesTxt), badJson);

            string arrayJson = Path.Combine(dir, "array.json");
            File.WriteAllText(arrayJson, "[1, 2, 3]");
            AssertVocabError(() => ClipBpeTokenizer.FromHuggingFace(arrayJson, mergesTxt), arrayJson);

            string stringIds = Path.Combine(dir, "string-ids.json");
            File.WriteAllText(stringIds, "{\"a\": \"zero\"}");
            AssertVocabError(() => ClipBpeTokenizer.FromHuggingFace(stringIds, mergesTxt), stringIds);

            // The real vocabulary without its special tokens.
            var map = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabJson))!;
            map.Remove(ClipBpeTokenizer.HuggingFaceStartOfTextName);
            map.Remove(ClipBpeTokenizer.HuggingFaceEndOfTextName);
            string noSpecials = Path.Combine(dir, "no-specials.json");
            File.WriteAllText(noSpecials, JsonSerializer.Serialize(map));
            AssertVocabError(() => ClipBpeTokenizer.FromHuggingFace(noSpecials, mergesTxt), noSpecials);

            string badMerges = Path.Combine(dir, "bad-merges.txt");
            File.WriteAllText(badMerges, "#version: 0.2\ni n\nthree symbols here\n");
            AssertVocabError(() => ClipBpeTokenizer.FromHuggingFace(vocabJson, badMerges), badMerges);

            string foreignMerges = Path.Combine(dir, "foreign-merges.txt");
            File.WriteAllText(foreignMerges, "#version: 0.2\nq z\n"); // "qz" is not a vocabulary entry
            AssertVocabError(() => ClipBpeTokenizer.FromHuggingFace(vocabJson, foreignMerges), foreignMerges);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static void WriteGzip(string path, string content)
    {
        using var fs = File.Create(path);
        using var gz = new GZipStream(fs, CompressionLevel.Fastest);
        gz.Write(Encoding.UTF8.GetBytes(content));
    }

    private static void AssertVocabError(Action load, string path)
    {
        var ex = Assert.Throws<Sam3VocabularyException>(() => load(), path);
        Assert.That(ex!.Message, Does.Contain(path));
        Assert.That(ex, Is.InstanceOf<Sam3Exception>());
    }
}
