using System.Collections.Concurrent;
using System.IO.Compression;
using System.Text;
using System.Text.Json;
using static TorchSharp.torch;

namespace Sam3.Torch.Text;

/// <summary>
/// SAM3's text tokenizer (<c>SimpleTokenizer</c> of <c>sam3/model/tokenizer_ve.py</c>, CLIP byte-level BPE with
/// <c>clean="lower"</c>), exact to the reference:
/// <list type="number">
/// <item>Cleaning (<see cref="ClipTextCleaner"/>): ftfy (the implemented subset, <see cref="FtfySubset"/>), Python
/// <c>html.unescape</c> twice, white-space collapse, Python <c>lower()</c>.</item>
/// <item>Pre-tokenisation with the reference pattern (<see cref="ClipPreTokenizer"/>).</item>
/// <item>Each piece's UTF-8 bytes become byte-level characters (<see cref="ByteLevelAlphabet"/>), the last one with
/// <c>&lt;/w&gt;</c>; BPE then repeatedly merges every occurrence of the adjacent pair with the lowest merge rank.</item>
/// <item><see cref="Tokenize(IReadOnlyList{string}, int?, PaddingMaskMode?)"/> adds start/end-of-text, cuts to the
/// context length (forcing the last id to end-of-text) and pads with 0.</item>
/// </list>
/// Start/end-of-text ids are read from the vocabulary (49406/49407 for CLIP). Instances are immutable apart from a
/// thread-safe BPE cache, so one tokenizer can serve concurrent callers.
/// </summary>
internal sealed class ClipBpeTokenizer
{
    /// <summary>Special-token names of the reference vocabulary (tokenizer_ve.py).</summary>
    public const string StartOfTextName = "<start_of_text>";
    public const string EndOfTextName = "<end_of_text>";

    /// <summary>Special-token names used by Hugging Face CLIP vocab.json files.</summary>
    public const string HuggingFaceStartOfTextName = "<|startoftext|>";
    public const string HuggingFaceEndOfTextName = "<|endoftext|>";

    /// <summary>
    /// Id written into padding positions (<c>torch.zeros</c> in the reference). Quirk (guide §4.20): it is also the
    /// id of the vocabulary's first entry, the bare byte-level piece "!"; see <see cref="PaddingMaskMode.PadIdQuirk"/>.
    /// </summary>
    public const int PadId = 0;

    private const string EndOfWord = "</w>";
    private const int ByteSymbols = 256;
    private const int SpecialTokenCount = 2;

    private readonly Dictionary<string, int> _encoder;
    private readonly string?[] _decoder;
    /// <summary>(left id, right id) packed in a long → (rank, merged id) packed in a long.</summary>
    private readonly Dictionary<long, long> _merges;
    private readonly int[] _byteId = new int[ByteSymbols];
    private readonly int[] _byteEndId = new int[ByteSymbols];
    private readonly Dictionary<string, int> _specialPieces;
    private readonly ClipPreTokenizer _preTokenizer;
    private readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    private int _cacheCount;

    public ClipTokenizerOptions Options { get; }

    /// <summary>Default context length (<see cref="Config.TextConfig.ContextLength"/>, 32 for SAM3).</summary>
    public int ContextLength => Options.Text.ContextLength;

    /// <summary>Id of the start-of-text token, from the vocabulary.</summary>
    public int StartOfTextId { get; }

    /// <summary>Id of the end-of-text token, from the vocabulary.</summary>
    public int EndOfTextId { get; }

    /// <summary>Number of ids (largest id + 1).</summary>
    public int VocabularySize => _decoder.Length;

    /// <summary>Number of BPE merges in use.</summary>
    public int MergeCount => _merges.Count;

    /// <summary>Where the vocabulary was read from.</summary>
    public string Source { get; }

    private ClipBpeTokenizer(string source, string mergesSource, Dictionary<string, int> encoder, IReadOnlyList<(string Left, string Right)> merges,
                             string startName, string endName, ClipTokenizerOptions options)
    {
        Source = source;
        Options = options;
        _encoder = encoder;
        int size = encoder.Count == 0 ? 0 : encoder.Values.Max() + 1;
        _decoder = new string?[size];
        foreach (var (token, id) in encoder) _decoder[id] = token;

        var alphabet = ByteLevelAlphabet.ByteToChar;
        for (int b = 0; b < ByteSymbols; b++)
        {
            string c = alphabet[b].ToString();
            _byteId[b] = encoder.TryGetValue(c, out int id) ? id
                : throw new Sam3VocabularyException($"{source}: byte-level symbol '{c}' (byte 0x{b:X2}) is missing from the vocabulary");
            _byteEndId[b] = encoder.TryGetValue(c + EndOfWord, out int idEnd) ? idEnd
                : throw new Sam3VocabularyException($"{source}: byte-level symbol '{c}{EndOfWord}' (byte 0x{b:X2}) is missing from the vocabulary");
        }

        // bpe_ranks = dict(zip(merges, range(len(merges)))): a repeated pair keeps its last rank.
        _merges = new Dictionary<long, long>(merges.Count);
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (left, right) = merges[rank];
            // A pair whose parts are not vocabulary symbols can never occur in a word (every symbol of a word is
            // a byte symbol or a merge result, and both are in the vocabulary), so it can never apply.
            if (!encoder.TryGetValue(left, out int l) || !encoder.TryGetValue(right, out int r)) continue;
            if (!encoder.TryGetValue(left + right, out int merged))
                throw new Sam3VocabularyException($"{mergesSource}: merge {rank} '{left} {right}' produces '{left + right}', which is not in the vocabulary {source}");
            _merges[Pack(l, r)] = Pack(rank, merged);
        }

        StartOfTextId = encoder.TryGetValue(startName, out int sot) ? sot
            : throw new Sam3VocabularyException($"{source}: special token '{startName}' is missing from the vocabulary");
        EndOfTextId = encoder.TryGetValue(endName, out int eot) ? eot
            : throw new Sam3VocabularyException($"{source}: special token '{endName}' is missing from the vocabulary");

        // The reference seeds its BPE cache with the special tokens, so a prompt containing a special token's text
        // yields that token's id (the pattern matches those names first).
        _specialPieces = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var name in new[] { startName, endName })
        {
            var bytes = new List<byte>();
            if (ByteLevelAlphabet.TryDecodeBytes(name, bytes))
                _specialPieces[Encoding.UTF8.GetString(bytes.ToArray())] = encoder[name];
        }
        _preTokenizer = new ClipPreTokenizer([startName, endName]);
    }

    private static long Pack(int hi, int lo) => ((long)hi << 32) | (uint)lo;

    // ------------------------------------------------------------------------------------------------ loading

    /// <summary>
    /// Reads the reference vocabulary <c>bpe_simple_vocab_16e6.txt.gz</c>: line 0 is a header, lines
    /// 1..48894 are the merges (the reference's <c>[1 : 49152-256-2+1]</c>); the vocabulary is the 256 byte symbols,
    /// the same with <c>&lt;/w&gt;</c>, the merge results and <c>&lt;start_of_text&gt;</c>, <c>&lt;end_of_text&gt;</c>.
    /// </summary>
    /// <exception cref="Sam3VocabularyException">The file is missing, not gzip, not UTF-8 or has too few / malformed merge lines.</exception>
    public static ClipBpeTokenizer FromBpeGz(string path, ClipTokenizerOptions? options = null)
    {
        options ??= new ClipTokenizerOptions();
        if (path == null) throw new Sam3VocabularyException("BPE vocabulary path is null");
        string text = ReadText(path, gzip: true);
        int mergeCount = options.Text.VocabSize - 2 * ByteSymbols - SpecialTokenCount;
        if (mergeCount <= 0)
            throw new Sam3VocabularyException($"{path}: vocabulary size {options.Text.VocabSize} leaves no room for merges");
        // merges = text.split("\n")[1 : 1 + mergeCount]; only those lines are cut out of the (large) text.
        var merges = new List<(string, string)>(mergeCount);
        int lineStart = text.IndexOf('\n') + 1;
        for (int i = 1; i <= mergeCount; i++)
        {
            if (lineStart <= 0 || lineStart > text.Length)
                throw new Sam3VocabularyException(
                    $"{path}: has {i - 1} merge lines, expected at least {mergeCount} (vocabulary size {options.Text.VocabSize}); the file is truncated or not a CLIP BPE vocabulary");
            int lineEnd = text.IndexOf('\n', lineStart);
            int next = lineEnd < 0 ? text.Length + 1 : lineEnd + 1;
            if (lineEnd < 0) lineEnd = text.Length;
            merges.Add(ParseMerge(path, text[lineStart..lineEnd], i + 1));
            lineStart = next;
        }

        var vocab = new List<string>(options.Text.VocabSize);
        foreach (char c in ByteLevelAlphabet.VocabularyOrder) vocab.Add(c.ToString());
        foreach (char c in ByteLevelAlphabet.VocabularyOrder) vocab.Add(c + EndOfWord);
        foreach (var (l, r) in merges) vocab.Add(l + r);
        vocab.Add(StartOfTextName);
        vocab.Add(EndOfTextName);
        // encoder = dict(zip(vocab, range(len(vocab)))): a repeated string keeps its last id.
        var encoder = new Dictionary<string, int>(vocab.Count, StringComparer.Ordinal);
        for (int id = 0; id < vocab.Count; id++) encoder[vocab[id]] = id;
        return new ClipBpeTokenizer(path, path, encoder, merges, StartOfTextName, EndOfTextName, options);
    }

    /// <summary>
    /// Reads a Hugging Face CLIP tokenizer pair: <c>vocab.json</c> (token → id) and <c>merges.txt</c> (an optional
    /// <c>#version</c> header line, then one "left right" merge per line, in rank order; at most
    /// VocabSize − 2·256 − 2 are used). The special tokens are
    /// <c>&lt;|startoftext|&gt;</c>/<c>&lt;|endoftext|&gt;</c> (Hugging Face) or the reference's names.
    /// </summary>
    /// <exception cref="Sam3VocabularyException">A file is missing or malformed (the message names it).</exception>
    public static ClipBpeTokenizer FromHuggingFace(string vocabJsonPath, string mergesTxtPath, ClipTokenizerOptions? options = null)
    {
        options ??= new ClipTokenizerOptions();
        if (vocabJsonPath == null) throw new Sam3VocabularyException("vocab.json path is null");
        if (mergesTxtPath == null) throw new Sam3VocabularyException("merges.txt path is null");
        var encoder = ReadVocabJson(vocabJsonPath);

        string mergesText = ReadText(mergesTxtPath, gzip: false);
        string[] lines = mergesText.Split('\n');
        var merges = new List<(string, string)>();
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i];
            if (i == 0 && line.StartsWith("#version", StringComparison.Ordinal)) continue;
            if (PythonText.Split(line).Count == 0) continue; // blank (e.g. the final newline)
            merges.Add(ParseMerge(mergesTxtPath, line, i + 1));
        }
        if (merges.Count == 0) throw new Sam3VocabularyException($"{mergesTxtPath}: no merges found");
        // Like the reference (and Hugging Face's CLIPTokenizer), use at most VocabSize - 2*256 - 2 merges, so a file
        // carrying the full, untrimmed merge list still loads.
        int maxMerges = options.Text.VocabSize - 2 * ByteSymbols - SpecialTokenCount;
        if (maxMerges > 0 && merges.Count > maxMerges) merges.RemoveRange(maxMerges, merges.Count - maxMerges);

        string startName, endName;
        if (encoder.ContainsKey(HuggingFaceStartOfTextName) || !encoder.ContainsKey(StartOfTextName))
            (startName, endName) = (HuggingFaceStartOfTextName, HuggingFaceEndOfTextName);
        else
            (startName, endName) = (StartOfTextName, EndOfTextName);
        return new ClipBpeTokenizer(vocabJsonPath, mergesTxtPath, encoder, merges, startName, endName, options);
    }

    private static (string, string) ParseMerge(string path, string line, int lineNumber)
    {
        var parts = PythonText.Split(line);
        if (parts.Count != 2)
            throw new Sam3VocabularyException($"{path}: line {lineNumber} is not a merge of two symbols: '{Shorten(line)}'");
        return (parts[0], parts[1]);
    }

    private static string ReadText(string path, bool gzip)
    {
        if (!File.Exists(path)) throw new Sam3VocabularyException($"tokenizer vocabulary file not found: {path}");
        byte[] bytes;
        try
        {
            if (gzip)
            {
                using var fs = File.OpenRead(path);
                using var gz = new GZipStream(fs, CompressionMode.Decompress);
                using var ms = new MemoryStream();
                gz.CopyTo(ms);
                bytes = ms.ToArray();
            }
            else bytes = File.ReadAllBytes(path);
        }
        catch (InvalidDataException e)
        {
            throw new Sam3VocabularyException($"{path}: not a valid gzip file ({e.Message})", e);
        }
        catch (IOException e)
        {
            throw new Sam3VocabularyException($"{path}: cannot be read ({e.Message})", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new Sam3VocabularyException($"{path}: cannot be read ({e.Message})", e);
        }
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw new Sam3VocabularyException($"{path}: not valid UTF-8 text ({e.Message})", e);
        }
    }

    private static Dictionary<string, int> ReadVocabJson(string path)
    {
        string text = ReadText(path, gzip: false);
        var encoder = new Dictionary<string, int>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(text);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new Sam3VocabularyException($"{path}: expected a JSON object mapping tokens to ids");
            var seen = new HashSet<int>();
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Value.ValueKind != JsonValueKind.Number || !prop.Value.TryGetInt32(out int id) || id < 0)
                    throw new Sam3VocabularyException($"{path}: token '{Shorten(prop.Name)}' has id {Shorten(prop.Value.GetRawText())}, expected a non-negative integer");
                if (!seen.Add(id))
                    throw new Sam3VocabularyException($"{path}: id {id} is used by more than one token (second: '{Shorten(prop.Name)}')");
                encoder[prop.Name] = id;
            }
        }
        catch (JsonException e)
        {
            throw new Sam3VocabularyException($"{path}: not valid JSON ({e.Message})", e);
        }
        if (encoder.Count == 0) throw new Sam3VocabularyException($"{path}: the vocabulary is empty");
        return encoder;
    }

    private static string Shorten(string s) => s.Length <= 60 ? s : s[..60] + "...";

    // ------------------------------------------------------------------------------------------------ encoding

    /// <summary>The BPE ids of <paramref name="text"/>, without start/end-of-text (the reference's <c>encode</c>).</summary>
    /// <exception cref="Sam3PromptException"><paramref name="text"/> is null.</exception>
    public int[] Encode(string text)
    {
        if (text == null) throw new Sam3PromptException("text prompt is null");
        var ids = new List<int>();
        EncodeInto(text, ids);
        return ids.ToArray();
    }

    /// <summary>The text after cleaning (what the pre-tokenizer sees).</summary>
    public string Clean(string text)
    {
        if (text == null) throw new Sam3PromptException("text prompt is null");
        return ClipTextCleaner.Clean(text, Options.ApplyFtfy);
    }

    private void EncodeInto(string text, List<int> ids)
    {
        string cleaned = ClipTextCleaner.Clean(text, Options.ApplyFtfy);
        foreach (var piece in _preTokenizer.Split(cleaned))
        {
            if (_specialPieces.TryGetValue(piece, out int special)) { ids.Add(special); continue; }
            ids.AddRange(Bpe(piece));
        }
    }

    private int[] Bpe(string piece)
    {
        if (_cache.TryGetValue(piece, out var cached)) return cached;
        int[] result = BpeUncached(Encoding.UTF8.GetBytes(piece));
        if (Options.MaxCacheEntries > 0 && Volatile.Read(ref _cacheCount) < Options.MaxCacheEntries && _cache.TryAdd(piece, result))
            Interlocked.Increment(ref _cacheCount);
        return result;
    }

    private int[] BpeUncached(byte[] bytes)
    {
        int n = bytes.Length;
        if (n == 0) return [];
        // word = tuple(token[:-1]) + (token[-1] + "</w>",)
        var word = new List<int>(n);
        for (int i = 0; i < n - 1; i++) word.Add(_byteId[bytes[i]]);
        word.Add(_byteEndId[bytes[n - 1]]);
        while (word.Count > 1)
        {
            long bestRank = long.MaxValue;
            int first = -1, second = -1, mergedId = -1;
            for (int i = 0; i + 1 < word.Count; i++)
            {
                if (_merges.TryGetValue(Pack(word[i], word[i + 1]), out long v) && (v >> 32) < bestRank)
                {
                    bestRank = v >> 32;
                    first = word[i];
                    second = word[i + 1];
                    mergedId = (int)(v & 0xFFFFFFFF);
                }
            }
            if (mergedId < 0) break;
            // Merge every occurrence of (first, second), left to right.
            var next = new List<int>(word.Count);
            for (int i = 0; i < word.Count;)
            {
                if (word[i] == first && i + 1 < word.Count && word[i + 1] == second)
                {
                    next.Add(mergedId);
                    i += 2;
                }
                else next.Add(word[i++]);
            }
            word = next;
        }
        return word.ToArray();
    }

    /// <summary>
    /// Tokenizes a batch as VETextEncoder calls the reference (<c>tokenizer(texts, context_length=32)</c>) and builds
    /// the padding mask (True = padding).
    /// </summary>
    /// <param name="texts">The prompts.</param>
    /// <param name="contextLength">Columns of the result; null = <see cref="ContextLength"/>.</param>
    /// <param name="maskMode">null = <see cref="ClipTokenizerOptions.PaddingMask"/> (the reference's quirk by default).</param>
    /// <exception cref="Sam3PromptException"><paramref name="texts"/> or one of its strings is null, or the context length is below 1.</exception>
    public ClipTokenizedBatch Tokenize(IReadOnlyList<string> texts, int? contextLength = null, PaddingMaskMode? maskMode = null)
    {
        if (texts == null) throw new Sam3PromptException("text prompts: the list is null");
        int ctx = contextLength ?? ContextLength;
        if (ctx < 1) throw new Sam3PromptException($"context length must be at least 1, got {ctx}");
        var mode = maskMode ?? Options.PaddingMask;
        int t = texts.Count;
        var ids = new long[t, ctx];
        var mask = new bool[t, ctx];
        var lengths = new int[t];
        var truncated = new bool[t];
        var tokens = new List<int>();
        for (int row = 0; row < t; row++)
        {
            string? text = texts[row];
            if (text == null) throw new Sam3PromptException($"text prompt {row} is null");
            tokens.Clear();
            tokens.Add(StartOfTextId);
            EncodeInto(text, tokens);
            tokens.Add(EndOfTextId);
            if (tokens.Count > ctx)
            {
                tokens.RemoveRange(ctx, tokens.Count - ctx);
                tokens[ctx - 1] = EndOfTextId;
                truncated[row] = true;
            }
            lengths[row] = tokens.Count;
            for (int j = 0; j < tokens.Count; j++) ids[row, j] = tokens[j];
            for (int j = 0; j < ctx; j++)
                mask[row, j] = mode == PaddingMaskMode.PadIdQuirk ? ids[row, j] == PadId : j >= tokens.Count;
        }
        return new ClipTokenizedBatch(ids, mask, lengths, truncated);
    }

    /// <summary>One prompt; see <see cref="Tokenize(IReadOnlyList{string}, int?, PaddingMaskMode?)"/>.</summary>
    public ClipTokenizedBatch Tokenize(string text, int? contextLength = null, PaddingMaskMode? maskMode = null)
    {
        if (text == null) throw new Sam3PromptException("text prompt is null");
        return Tokenize([text], contextLength, maskMode);
    }

    /// <summary>
    /// <see cref="Tokenize(IReadOnlyList{string}, int?, PaddingMaskMode?)"/> as tensors: ids int64 [T, context],
    /// padding mask bool [T, context] (True = padding), on <paramref name="device"/> (CPU by default).
    /// </summary>
    public (Tensor Ids, Tensor PaddingMask) TokenizeToTensors(IReadOnlyList<string> texts, int? contextLength = null,
                                                              PaddingMaskMode? maskMode = null, Device? device = null)
        => Tokenize(texts, contextLength, maskMode).ToTensors(device);

    // ------------------------------------------------------------------------------------------------ decoding

    /// <summary>The vocabulary string of an id (byte-level characters, e.g. "person&lt;/w&gt;").</summary>
    public string IdToToken(int id)
    {
        if (id < 0 || id >= _decoder.Length || _decoder[id] == null)
            throw new Sam3PromptException($"token id {id} is not in the vocabulary (size {_decoder.Length})");
        return _decoder[id]!;
    }

    /// <summary>The id of a vocabulary string, or null.</summary>
    public int? TokenToId(string token) => token != null && _encoder.TryGetValue(token, out int id) ? id : null;

    /// <summary>The reference's <c>decode</c>: tokens joined, bytes decoded as UTF-8 (invalid bytes → U+FFFD), "&lt;/w&gt;" → " ".</summary>
    public string Decode(IEnumerable<int> ids)
    {
        if (ids == null) throw new Sam3PromptException("token ids are null");
        var sb = new StringBuilder();
        foreach (int id in ids) sb.Append(IdToToken(id));
        var bytes = new List<byte>(sb.Length);
        if (!ByteLevelAlphabet.TryDecodeBytes(sb.ToString(), bytes))
            throw new Sam3PromptException("token ids contain a token that is not made of byte-level characters");
        return Encoding.UTF8.GetString(bytes.ToArray()).Replace(EndOfWord, " ");
    }
}
