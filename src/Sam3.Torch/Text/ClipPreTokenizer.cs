using System.Globalization;

namespace Sam3.Torch.Text;

/// <summary>
/// <c>regex.findall</c> of the reference pattern
/// <c>&lt;start_of_text&gt;|&lt;end_of_text&gt;|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+</c> with
/// <c>IGNORECASE</c> (the special-token alternatives are the vocabulary's own special-token names).
/// <para>
/// Written as a scanner over code points rather than a .NET <c>Regex</c>: .NET's <c>\p{L}</c>/<c>\p{N}</c> test
/// UTF-16 code units, so letters and digits outside the BMP (𝐀, 𠀀, 𝟏, ...) would fall into the "other" class,
/// where Python's <c>regex</c> module treats them as letters/numbers. At each position the alternatives are tried in
/// the pattern's order and the first that matches wins; positions where nothing matches (white space) are skipped.
/// </para>
/// <para>
/// IGNORECASE details of the <c>regex</c> module reproduced here: the literal alternatives match up to Unicode
/// simple case folding (for the ASCII pattern letters the only non-ASCII equivalents are U+017F ſ ~ s and
/// U+212A K ~ k), so <c>it'ſ</c> yields <c>'ſ</c>. And U+0345 COMBINING GREEK YPOGEGRAMMENI (category Mn) is matched
/// by no alternative: under IGNORECASE the negated class <c>[^\s\p{L}\p{N}]</c> rejects it because one of its case
/// variants (ι) is a letter, while <c>[\p{L}]</c> itself does not accept it, so findall skips it.
/// </para>
/// </summary>
internal sealed class ClipPreTokenizer
{
    private static readonly string[] Contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];

    private readonly string[] _specials;

    /// <param name="specialTokens">Special-token names, tried first and in this order (the vocabulary's names).</param>
    public ClipPreTokenizer(IEnumerable<string> specialTokens)
    {
        _specials = specialTokens.Where(s => !string.IsNullOrEmpty(s)).ToArray();
    }

    private enum CharClass { Letter, Number, Space, Other, Unmatched }

    /// <summary>The pieces of <paramref name="text"/>, in order.</summary>
    public List<string> Split(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var pieces = new List<string>();
        int i = 0;
        while (i < text.Length)
        {
            int len = MatchAt(text, i);
            if (len > 0)
            {
                pieces.Add(text.Substring(i, len));
                i += len;
            }
            else
            {
                PythonText.CodePointAt(text, i, out int w);
                i += w;
            }
        }
        return pieces;
    }

    /// <summary>Length in UTF-16 units of the match at <paramref name="i"/>, 0 if none.</summary>
    private int MatchAt(string s, int i)
    {
        foreach (var special in _specials)
        {
            int n = MatchLiteralIgnoreCase(s, i, special);
            if (n > 0) return n;
        }
        foreach (var c in Contractions)
        {
            int n = MatchLiteralIgnoreCase(s, i, c);
            if (n > 0) return n;
        }
        int cp = PythonText.CodePointAt(s, i, out int w);
        switch (Classify(cp))
        {
            case CharClass.Letter:
                return RunLength(s, i, CharClass.Letter);
            case CharClass.Number:
                return w; // [\p{N}] is a single character
            case CharClass.Other:
                return RunLength(s, i, CharClass.Other);
            default:
                return 0;
        }
    }

    private static int RunLength(string s, int start, CharClass cls)
    {
        int j = start;
        while (j < s.Length)
        {
            int cp = PythonText.CodePointAt(s, j, out int w);
            if (Classify(cp) != cls) break;
            j += w;
        }
        return j - start;
    }

    private static CharClass Classify(int cp)
    {
        if (cp == 0x0345) return CharClass.Unmatched;
        switch (CharUnicodeInfo.GetUnicodeCategory(cp))
        {
            case UnicodeCategory.UppercaseLetter:
            case UnicodeCategory.LowercaseLetter:
            case UnicodeCategory.TitlecaseLetter:
            case UnicodeCategory.ModifierLetter:
            case UnicodeCategory.OtherLetter:
                return CharClass.Letter;
            case UnicodeCategory.DecimalDigitNumber:
            case UnicodeCategory.LetterNumber:
            case UnicodeCategory.OtherNumber:
                return CharClass.Number;
            default:
                return PythonText.IsRegexWhiteSpace(cp) ? CharClass.Space : CharClass.Other;
        }
    }

    /// <summary>Matches <paramref name="literal"/> at <paramref name="i"/> up to simple case folding; returns the UTF-16 length matched or 0.</summary>
    private static int MatchLiteralIgnoreCase(string s, int i, string literal)
    {
        int j = i;
        int k = 0;
        while (k < literal.Length)
        {
            if (j >= s.Length) return 0;
            int a = PythonText.CodePointAt(s, j, out int wa);
            int b = PythonText.CodePointAt(literal, k, out int wb);
            if (a != b && SimpleFold(a) != SimpleFold(b)) return 0;
            j += wa;
            k += wb;
        }
        return j - i;
    }

    /// <summary>Unicode simple case folding, enough for ASCII and most letters (special folds listed first).</summary>
    private static int SimpleFold(int cp)
    {
        switch (cp)
        {
            case 0x017F: return 's';      // LATIN SMALL LETTER LONG S
            case 0x212A: return 'k';      // KELVIN SIGN
            case 0x212B: return 0x00E5;   // ANGSTROM SIGN
            case 0x1E9E: return 0x00DF;   // LATIN CAPITAL LETTER SHARP S
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) return cp;
        return System.Text.Rune.ToLowerInvariant(new System.Text.Rune(cp)).Value;
    }
}
