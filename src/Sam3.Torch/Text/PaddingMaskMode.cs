namespace Sam3.Torch.Text;

/// <summary>How <see cref="ClipBpeTokenizer"/> builds the padding mask (True = padding, the key is ignored).</summary>
internal enum PaddingMaskMode
{
    /// <summary>
    /// Reference behaviour (default, parity): <c>mask = ids == 0</c>, as VETextEncoder computes it. Quirk (guide
    /// §4.20): id 0 is also a real vocabulary entry, the bare byte-level piece <c>!</c> (a '!' that BPE leaves
    /// unmerged inside a longer punctuation run, e.g. "50!% off"), so such a token is masked as if it were padding.
    /// </summary>
    PadIdQuirk = 0,

    /// <summary>Corrected: only the positions after the sequence's end-of-text token are padding.</summary>
    AfterEndOfText = 1,
}
