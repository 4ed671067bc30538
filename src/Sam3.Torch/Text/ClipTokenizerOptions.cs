using Sam3.Torch.Config;

namespace Sam3.Torch.Text;

/// <summary>Settings of a <see cref="ClipBpeTokenizer"/>.</summary>
internal sealed record ClipTokenizerOptions
{
    /// <summary>Text-encoder configuration: <see cref="TextConfig.ContextLength"/> is the default context length
    /// (32 for SAM3) and <see cref="TextConfig.VocabSize"/> fixes how many merges a .txt.gz vocabulary provides
    /// (VocabSize − 2·256 byte symbols − 2 special tokens = 48894, the reference's <c>49152−256−2</c>).</summary>
    public TextConfig Text { get; init; } = Sam3Config.Full.Text;

    /// <summary>Run the implemented part of <c>ftfy.fix_text</c> (see <see cref="FtfySubset"/>). Off = ftfy as the
    /// identity, as in the parity fixtures; both give the same ids on clean NFC text.</summary>
    public bool ApplyFtfy { get; init; } = true;

    /// <summary>Default padding-mask rule of <see cref="ClipBpeTokenizer.Tokenize(IReadOnlyList{string}, int?, PaddingMaskMode?)"/>.</summary>
    public PaddingMaskMode PaddingMask { get; init; } = PaddingMaskMode.PadIdQuirk;

    /// <summary>Most distinct pieces whose BPE result is cached (the reference's cache is unbounded); 0 disables caching.</summary>
    public int MaxCacheEntries { get; init; } = 100_000;
}
