using System.Text;

namespace Sam3.Torch.Text;

/// <summary>
/// Python's <c>html.unescape</c> (the reference calls it twice on every prompt). Its rules, which .NET's
/// <c>WebUtility.HtmlDecode</c> does not follow (HTML4 names only, semicolon required):
/// <list type="bullet">
/// <item>A reference is <c>&amp;</c> followed by <c>#</c> + decimal digits, <c>#x</c>/<c>#X</c> + hex digits (the
/// <c>;</c> is optional in both), or by 1..32 characters other than tab, LF, FF, space, <c>&lt; &amp; # ;</c> and an
/// optional <c>;</c>.</item>
/// <item>Numeric: 0 → U+FFFD, 13 → CR, 0x80..0x9F → their Windows-1252 characters; surrogates and values above
/// U+10FFFF → U+FFFD; C0/C1 controls (except tab, LF, FF, CR), U+007F, noncharacters → removed; else the code point.</item>
/// <item>Named: the HTML5 table (2231 names, some valid without <c>;</c>); when the whole name is unknown, the
/// longest known prefix of length ≥ 2 is replaced and the rest kept (<c>&amp;notit;</c> → <c>¬it;</c>).</item>
/// </list>
/// </summary>
internal static class PythonHtml
{
    private const int MaxNameLength = 32;

    private static readonly Dictionary<string, string> Html5 = BuildHtml5();

    /// <summary>Windows-1252 meaning of the C1 bytes 0x80..0x9F; the five unassigned bytes map to themselves.</summary>
    internal static readonly string[] Windows1252C1 =
    [
        "\u20AC", "\u0081", "\u201A", "\u0192", "\u201E", "\u2026", "\u2020", "\u2021",
        "\u02C6", "\u2030", "\u0160", "\u2039", "\u0152", "\u008D", "\u017D", "\u008F",
        "\u0090", "\u2018", "\u2019", "\u201C", "\u201D", "\u2022", "\u2013", "\u2014",
        "\u02DC", "\u2122", "\u0161", "\u203A", "\u0153", "\u009D", "\u017E", "\u0178",
    ];

    /// <summary>The HTML5 named references (name without "&amp;", possibly ending with ";") → replacement text.</summary>
    internal static IReadOnlyDictionary<string, string> Html5Entities => Html5;

    private static Dictionary<string, string> BuildHtml5()
    {
        var table = HtmlEntityTable.NamesAndValues;
        var d = new Dictionary<string, string>(table.Length / 2, StringComparer.Ordinal);
        for (int i = 0; i < table.Length; i += 2) d[table[i]] = table[i + 1];
        return d;
    }

    /// <summary>Python's <c>html.unescape(s)</c>.</summary>
    public static string Unescape(string s)
    {
        ArgumentNullException.ThrowIfNull(s);
        int amp = s.IndexOf('&');
        if (amp < 0) return s;
        var sb = new StringBuilder(s.Length);
        sb.Append(s, 0, amp);
        int i = amp;
        while (i < s.Length)
        {
            if (s[i] != '&')
            {
                int next = s.IndexOf('&', i);
                if (next < 0) next = s.Length;
                sb.Append(s, i, next - i);
                i = next;
                continue;
            }
            int consumed = TryReplaceReference(s, i, sb);
            if (consumed == 0)
            {
                sb.Append('&');
                i++;
            }
            else i += consumed;
        }
        return sb.ToString();
    }

    /// <summary>Replaces the reference starting at the '&amp;' at <paramref name="amp"/>; returns the characters consumed, 0 if none matches.</summary>
    private static int TryReplaceReference(string s, int amp, StringBuilder sb)
    {
        int p = amp + 1;
        if (p < s.Length && s[p] == '#')
        {
            // '#' + decimal digits, or '#x' + hex digits; a '#' cannot start a name, so otherwise nothing matches.
            int q = p + 1;
            bool hex = false;
            int digitsStart = q;
            if (q < s.Length && IsAsciiDigit(s[q])) { }
            else if (q + 1 < s.Length && (s[q] == 'x' || s[q] == 'X') && IsAsciiHexDigit(s[q + 1])) { hex = true; digitsStart = q + 1; }
            else return 0;
            int e = digitsStart;
            while (e < s.Length && (hex ? IsAsciiHexDigit(s[e]) : IsAsciiDigit(s[e]))) e++;
            long value = ParseSaturating(s, digitsStart, e, hex ? 16 : 10);
            if (e < s.Length && s[e] == ';') e++;
            sb.Append(NumericReplacement(value));
            return e - amp;
        }

        // A name: 1..32 code points outside the excluded set, then an optional ';'.
        int end = p, count = 0;
        while (end < s.Length && count < MaxNameLength && !IsNameTerminator(s[end]))
        {
            end += char.IsHighSurrogate(s[end]) && end + 1 < s.Length && char.IsLowSurrogate(s[end + 1]) ? 2 : 1;
            count++;
        }
        if (count == 0) return 0;
        if (end < s.Length && s[end] == ';') end++;
        string name = s[p..end];
        if (Html5.TryGetValue(name, out var value1))
        {
            sb.Append(value1);
            return end - amp;
        }
        // The longest known prefix (2..len-1 characters; known names are ASCII, so UTF-16 lengths are the same).
        for (int x = name.Length - 1; x >= 2; x--)
        {
            if (Html5.TryGetValue(name[..x], out var value2))
            {
                sb.Append(value2).Append(name, x, name.Length - x);
                return end - amp;
            }
        }
        sb.Append('&').Append(name);
        return end - amp;
    }

    private static string NumericReplacement(long num)
    {
        if (num == 0) return "\uFFFD";
        if (num == 0x0D) return "\r";
        if (num >= 0x80 && num <= 0x9F) return Windows1252C1[num - 0x80];
        if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return "\uFFFD";
        if (IsInvalidCodePoint((int)num)) return "";
        return char.ConvertFromUtf32((int)num);
    }

    /// <summary>Code points html.unescape drops: C0 controls but tab/LF/FF/CR, DEL and C1, noncharacters.</summary>
    private static bool IsInvalidCodePoint(int cp) =>
        (cp >= 0x01 && cp <= 0x08) || cp == 0x0B || (cp >= 0x0E && cp <= 0x1F) || (cp >= 0x7F && cp <= 0x9F)
        || (cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE;

    private static long ParseSaturating(string s, int start, int end, int radix)
    {
        const long Cap = 0x110000; // anything above U+10FFFF behaves the same
        long v = 0;
        for (int k = start; k < end; k++)
        {
            int d = s[k] <= '9' ? s[k] - '0' : (s[k] | 0x20) - 'a' + 10;
            v = v * radix + d;
            if (v > Cap) v = Cap;
        }
        return v;
    }

    private static bool IsNameTerminator(char c) => c is '\t' or '\n' or '\f' or ' ' or '<' or '&' or '#' or ';';
    private static bool IsAsciiDigit(char c) => c >= '0' && c <= '9';
    private static bool IsAsciiHexDigit(char c) => IsAsciiDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
