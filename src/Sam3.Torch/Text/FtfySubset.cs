using System.Globalization;
using System.Text;

namespace Sam3.Torch.Text;

/// <summary>
/// The part of <c>ftfy.fix_text</c> (ftfy 6.1.1, the version SAM3 pins, default <c>TextFixerConfig</c>) that is
/// deterministic and table-driven, re-implemented from its documented behaviour:
/// <list type="number">
/// <item>The text is fixed in segments that end after each LF (and at most 1,000,000 code points).</item>
/// <item><c>unescape_html="auto"</c>: HTML entities are decoded unless a literal <c>&lt;</c> has been seen in this
/// or an earlier segment. Only references of the form <c>&amp;[#]alnum{1,24};</c> are considered: HTML5 names that
/// end with <c>;</c>, all-uppercase spellings of the lowercase names (<c>&amp;EACUTE;</c> → É, value upper-cased
/// the Python way: <c>&amp;SZLIG;</c> → SS), and numeric references that Python's <c>html.unescape</c> decodes
/// completely.</item>
/// <item>Then, in ftfy's order: C1 controls → Windows-1252 (<c>fix_c1_controls</c>), Latin ligatures → letters,
/// full-/half-width forms → standard width (U+3000 → space), curly quotes → straight, CR LF / CR / U+2028 /
/// U+2029 / U+0085 → LF, unpaired surrogates → U+FFFD, ANSI terminal escapes removed, invisible control
/// characters removed (U+0000..U+0008, U+000B, U+000E..U+001F, U+007F, U+206A..U+206F, U+FEFF,
/// U+FFF9..U+FFFC), and NFC normalisation.</item>
/// <item>Steps 2-3 repeat until the segment no longer changes (so <c>&amp;amp;amp;</c> decodes fully).</item>
/// </list>
/// Not implemented: <c>fix_encoding</c>, ftfy's mojibake repair (re-decoding text that looks like UTF-8 read as
/// Latin-1/Windows-125x/MacRoman/CP437, <c>restore_byte_a0</c>, <c>replace_lossy_sequences</c>,
/// <c>decode_inconsistent_utf8</c>). It is driven by a statistical "badness" heuristic over large character-class
/// tables; it never changes ASCII text or text that does not look like mojibake, so prompts such as "Ã©" (the
/// mojibake of "é") are the only ones whose ids differ from upstream. Also, the surrogate fix works on UTF-16: a
/// valid pair is already one character in .NET, a lone surrogate becomes U+FFFD.
/// </summary>
internal static class FtfySubset
{
    /// <summary>ftfy's <c>max_decode_length</c>.</summary>
    public const int MaxSegmentCodePoints = 1_000_000;

    private const int MaxEntityAlnum = 24;

    private static readonly Lazy<Dictionary<string, string>> FtfyEntities = new(BuildFtfyEntities);
    private static readonly Lazy<Dictionary<char, string>> WidthMap = new(BuildWidthMap);

    /// <summary>Latin ligatures and legacy digraphs ftfy splits (others, such as æ, are kept).</summary>
    private static readonly Dictionary<char, string> Ligatures = new()
    {
        ['\u0132'] = "IJ", ['\u0133'] = "ij", ['\u0149'] = "\u02BCn",
        ['\u01F1'] = "DZ", ['\u01F2'] = "Dz", ['\u01F3'] = "dz",
        ['\u01C4'] = "D\u017D", ['\u01C5'] = "D\u017E", ['\u01C6'] = "d\u017E",
        ['\u01C7'] = "LJ", ['\u01C8'] = "Lj", ['\u01C9'] = "lj",
        ['\u01CA'] = "NJ", ['\u01CB'] = "Nj", ['\u01CC'] = "nj",
        ['\uFB00'] = "ff", ['\uFB01'] = "fi", ['\uFB02'] = "fl", ['\uFB03'] = "ffi", ['\uFB04'] = "ffl",
        ['\uFB05'] = "\u017Ft", ['\uFB06'] = "st",
    };

    /// <summary>Python <c>str.upper()</c> results that .NET's invariant casing does not give, for entity values: the
    /// multi-character mappings of SpecialCasing.txt that occur in the table, and U+0131 ı → I (which .NET's
    /// invariant casing leaves alone). Every other one-character value upper-cases the same in both.</summary>
    private static readonly Dictionary<string, string> SpecialUpper = new(StringComparer.Ordinal)
    {
        ["\u00DF"] = "SS", ["\uFB00"] = "FF", ["\uFB01"] = "FI", ["\uFB02"] = "FL", ["\uFB03"] = "FFI",
        ["\uFB04"] = "FFL", ["\uFB05"] = "ST", ["\uFB06"] = "ST", ["\u0149"] = "\u02BCN",
        ["\u0131"] = "I",
    };

    /// <summary><c>ftfy.fix_text(text)</c> without the mojibake repair (see the class summary).</summary>
    public static string FixText(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (text.Length == 0) return text;
        var sb = new StringBuilder(text.Length);
        bool unescapeHtml = true; // "auto", switched off for good once a segment contains '<'
        int pos = 0;
        while (pos < text.Length)
        {
            int nl = text.IndexOf('\n', pos);
            int end = nl < 0 ? text.Length : nl + 1;
            end = LimitCodePoints(text, pos, end, MaxSegmentCodePoints);
            string segment = text[pos..end];
            if (unescapeHtml && segment.Contains('<')) unescapeHtml = false;
            sb.Append(FixSegment(segment, unescapeHtml));
            pos = end;
        }
        return sb.ToString();
    }

    /// <summary>One segment, fixed until it stops changing (ftfy's <c>fix_and_explain</c> loop).</summary>
    public static string FixSegment(string text, bool unescapeHtml)
    {
        while (true)
        {
            string original = text;
            if (unescapeHtml) text = UnescapeHtml(text);
            // fix_encoding (mojibake repair) would run here; not implemented, see the class summary.
            text = FixC1Controls(text);
            text = FixLatinLigatures(text);
            text = FixCharacterWidth(text);
            text = UncurlQuotes(text);
            text = FixLineBreaks(text);
            text = FixSurrogates(text);
            text = RemoveTerminalEscapes(text);
            text = RemoveControlChars(text);
            text = text.Normalize(NormalizationForm.FormC);
            if (text == original) return text;
        }
    }

    /// <summary>ftfy's <c>unescape_html</c>: only <c>&amp;[#]alnum{1,24};</c> references, see the class summary.</summary>
    public static string UnescapeHtml(string text)
    {
        int amp = text.IndexOf('&');
        if (amp < 0) return text;
        var entities = FtfyEntities.Value;
        var sb = new StringBuilder(text.Length);
        int copied = 0;
        while (amp >= 0)
        {
            int p = amp + 1;
            if (p < text.Length && text[p] == '#') p++;
            int q = p;
            while (q < text.Length && q - p < MaxEntityAlnum + 1 && char.IsAsciiLetterOrDigit(text[q])) q++;
            int run = q - p;
            if (run >= 1 && run <= MaxEntityAlnum && q < text.Length && text[q] == ';')
            {
                string match = text[amp..(q + 1)];
                string replacement = match;
                if (entities.TryGetValue(match, out var v)) replacement = v;
                else if (match.StartsWith("&#", StringComparison.Ordinal))
                {
                    string unescaped = PythonHtml.Unescape(match);
                    if (!unescaped.Contains(';')) replacement = unescaped;
                }
                sb.Append(text, copied, amp - copied).Append(replacement);
                copied = q + 1;
                amp = text.IndexOf('&', copied);
            }
            else amp = text.IndexOf('&', amp + 1);
        }
        if (copied == 0) return text;
        sb.Append(text, copied, text.Length - copied);
        return sb.ToString();
    }

    /// <summary>C1 controls U+0080..U+009F → their Windows-1252 characters (unassigned bytes stay).</summary>
    public static string FixC1Controls(string text) =>
        MapChars(text, c => c >= '\u0080' && c <= '\u009F' ? PythonHtml.Windows1252C1[c - 0x80] : null);

    public static string FixLatinLigatures(string text) =>
        MapChars(text, c => Ligatures.TryGetValue(c, out var s) ? s : null);

    /// <summary>U+3000 → space; U+FF01..U+FFEF → their NFKC form where it differs.</summary>
    public static string FixCharacterWidth(string text)
    {
        var map = WidthMap.Value;
        return MapChars(text, c => map.TryGetValue(c, out var s) ? s : null);
    }

    /// <summary>U+02BC and U+2018..U+201B → '; U+201C..U+201F → ".</summary>
    public static string UncurlQuotes(string text) => MapChars(text, c => c switch
    {
        '\u02BC' or (>= '\u2018' and <= '\u201B') => "'",
        >= '\u201C' and <= '\u201F' => "\"",
        _ => null,
    });

    public static string FixLineBreaks(string text) =>
        text.Replace("\r\n", "\n").Replace('\r', '\n').Replace('\u2028', '\n').Replace('\u2029', '\n').Replace('\u0085', '\n');

    /// <summary>Unpaired UTF-16 surrogates → U+FFFD.</summary>
    public static string FixSurrogates(string text)
    {
        StringBuilder? sb = null;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            bool paired = char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]);
            if (paired)
            {
                sb?.Append(c).Append(text[i + 1]);
                i++;
                continue;
            }
            if (char.IsSurrogate(c))
            {
                sb ??= new StringBuilder(text.Length).Append(text, 0, i);
                sb.Append('\uFFFD');
            }
            else sb?.Append(c);
        }
        return sb?.ToString() ?? text;
    }

    /// <summary>Removes ESC '[' (digits | ';')* letter (digits are Unicode decimal digits, as Python's <c>\d</c>).</summary>
    public static string RemoveTerminalEscapes(string text)
    {
        int esc = text.IndexOf("\u001b[", StringComparison.Ordinal);
        if (esc < 0) return text;
        var sb = new StringBuilder(text.Length);
        int copied = 0;
        while (esc >= 0)
        {
            int q = esc + 2;
            while (q < text.Length)
            {
                int cp = PythonText.CodePointAt(text, q, out int w);
                if (cp != ';' && CharUnicodeInfo.GetUnicodeCategory(cp) != UnicodeCategory.DecimalDigitNumber) break;
                q += w;
            }
            if (q < text.Length && char.IsAsciiLetter(text[q]))
            {
                sb.Append(text, copied, esc - copied);
                copied = q + 1;
                esc = text.IndexOf("\u001b[", copied, StringComparison.Ordinal);
            }
            else esc = text.IndexOf("\u001b[", esc + 1, StringComparison.Ordinal);
        }
        sb.Append(text, copied, text.Length - copied);
        return sb.ToString();
    }

    public static string RemoveControlChars(string text) => MapChars(text, c => IsRemovedControl(c) ? "" : null);

    private static bool IsRemovedControl(char c) =>
        c <= '\u0008' || c == '\u000B' || (c >= '\u000E' && c <= '\u001F') || c == '\u007F'
        || (c >= '\u206A' && c <= '\u206F') || c == '\uFEFF' || (c >= '\uFFF9' && c <= '\uFFFC');

    /// <summary>Replaces single BMP characters; <paramref name="map"/> returns null to keep a character.</summary>
    private static string MapChars(string text, Func<char, string?> map)
    {
        StringBuilder? sb = null;
        for (int i = 0; i < text.Length; i++)
        {
            string? r = map(text[i]);
            if (r == null) { sb?.Append(text[i]); continue; }
            sb ??= new StringBuilder(text.Length).Append(text, 0, i);
            sb.Append(r);
        }
        return sb?.ToString() ?? text;
    }

    private static int LimitCodePoints(string s, int start, int end, int maxCodePoints)
    {
        int i = start, n = 0;
        while (i < end && n < maxCodePoints)
        {
            i += char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]) ? 2 : 1;
            n++;
        }
        return i;
    }

    private static Dictionary<string, string> BuildFtfyEntities()
    {
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, value) in PythonHtml.Html5Entities)
        {
            if (!name.EndsWith(';')) continue;
            d["&" + name] = value;
        }
        // All-uppercase spellings of lowercase names, when Python's html.unescape leaves them alone.
        foreach (var (name, value) in PythonHtml.Html5Entities)
        {
            if (!name.EndsWith(';') || name != name.ToLowerInvariant()) continue;
            string upper = "&" + name.ToUpperInvariant();
            if (PythonHtml.Unescape(upper) == upper) d[upper] = PythonUpper(value);
        }
        return d;
    }

    private static string PythonUpper(string s)
    {
        if (SpecialUpper.TryGetValue(s, out var special)) return special;
        var sb = new StringBuilder(s.Length);
        foreach (var r in s.EnumerateRunes()) sb.Append(Rune.ToUpperInvariant(r).ToString());
        return sb.ToString();
    }

    private static Dictionary<char, string> BuildWidthMap()
    {
        var d = new Dictionary<char, string> { ['\u3000'] = " " };
        for (int c = 0xFF01; c < 0xFFF0; c++)
        {
            string ch = ((char)c).ToString();
            string alt = ch.Normalize(NormalizationForm.FormKC);
            if (alt != ch) d[(char)c] = alt;
        }
        return d;
    }
}
