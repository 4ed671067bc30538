namespace Sam3.Torch.Text;

/// <summary>
/// The reference's <c>clean="lower"</c> text cleaning (<c>_clean_lower</c> in tokenizer_ve.py), in its order:
/// <c>ftfy.fix_text</c> (here <see cref="FtfySubset"/>, optional) → Python <c>html.unescape</c> twice → strip →
/// every run of Unicode white space to one space → strip → Python <c>lower()</c>.
/// </summary>
internal static class ClipTextCleaner
{
    /// <summary>Cleans one prompt as the reference does before pre-tokenisation.</summary>
    /// <param name="text">The prompt.</param>
    /// <param name="applyFtfy">Run the implemented part of ftfy (default). Off reproduces ftfy replaced by the
    /// identity, as in the parity fixtures (identical for clean, NFC-normalised text).</param>
    public static string Clean(string text, bool applyFtfy = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        // basic_clean
        if (applyFtfy) text = FtfySubset.FixText(text);
        text = PythonHtml.Unescape(PythonHtml.Unescape(text));
        text = PythonText.Strip(text);
        // whitespace_clean
        text = PythonText.Strip(PythonText.CollapseWhiteSpace(text));
        return PythonText.Lower(text);
    }
}
