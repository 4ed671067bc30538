using System.Text;

namespace Sam3.Torch.Text;

/// <summary>
/// The few Python string operations the reference tokenizer's cleaning relies on, with Python's exact semantics
/// where they differ from .NET's:
/// <list type="bullet">
/// <item><c>str.strip()</c> removes the characters of <c>str.isspace()</c>, which include U+001C..U+001F (not .NET
/// white space).</item>
/// <item><c>str.lower()</c> uses the full lowercase mapping (U+0130 → "i\u0307", where .NET's invariant casing keeps
/// U+0130) and the Final_Sigma rule (U+03A3 → U+03C2 at the end of a word).</item>
/// <item>The <c>regex</c> module's <c>\s</c> is the Unicode White_Space property.</item>
/// </list>
/// Everything works on code points (surrogate pairs are one character, as in a Python <c>str</c>).
/// </summary>
internal static class PythonText
{
    private const int CapitalSigma = 0x03A3;
    private const int SmallSigma = 0x03C3;
    private const int FinalSigma = 0x03C2;
    private const int CapitalIWithDot = 0x0130;
    private const string CapitalIWithDotLower = "i\u0307";

    /// <summary>Python's <c>str.isspace()</c> for one code point (29 code points, all in the BMP).</summary>
    public static bool IsSpace(int codePoint) => codePoint switch
    {
        >= 0x09 and <= 0x0D => true,
        >= 0x1C and <= 0x20 => true,
        0x85 or 0xA0 or 0x1680 => true,
        >= 0x2000 and <= 0x200A => true,
        0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000 => true,
        _ => false,
    };

    /// <summary>
    /// The <c>regex</c> module's <c>\s</c> (Unicode White_Space, 25 code points, all in the BMP). It equals
    /// <see cref="char.IsWhiteSpace(char)"/> on every BMP code point.
    /// </summary>
    public static bool IsRegexWhiteSpace(int codePoint) => codePoint switch
    {
        >= 0x09 and <= 0x0D => true,
        0x20 or 0x85 or 0xA0 or 0x1680 => true,
        >= 0x2000 and <= 0x200A => true,
        0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000 => true,
        _ => false,
    };

    /// <summary>Python's <c>str.strip()</c> with no argument.</summary>
    public static string Strip(string s)
    {
        int start = 0, end = s.Length;
        while (start < end && IsSpace(s[start])) start++;
        while (end > start && IsSpace(s[end - 1])) end--;
        return start == 0 && end == s.Length ? s : s[start..end];
    }

    /// <summary><c>regex.sub(r"\s+", " ", s)</c>: every run of White_Space becomes one space.</summary>
    public static string CollapseWhiteSpace(string s)
    {
        StringBuilder? sb = null;
        for (int i = 0; i < s.Length; i++)
        {
            if (!IsRegexWhiteSpace(s[i]))
            {
                sb?.Append(s[i]);
                continue;
            }
            int j = i;
            while (j < s.Length && IsRegexWhiteSpace(s[j])) j++;
            if (sb == null && !(j - i == 1 && s[i] == ' '))
                sb = new StringBuilder(s.Length).Append(s, 0, i);
            sb?.Append(' ');
            i = j - 1;
        }
        return sb?.ToString() ?? s;
    }

    /// <summary>Python's <c>str.split()</c> with no argument (runs of <see cref="IsSpace"/> separate, no empty parts).</summary>
    public static List<string> Split(string s)
    {
        var parts = new List<string>();
        int i = 0;
        while (i < s.Length)
        {
            while (i < s.Length && IsSpace(s[i])) i++;
            int start = i;
            while (i < s.Length && !IsSpace(s[i])) i++;
            if (i > start) parts.Add(s[start..i]);
        }
        return parts;
    }

    /// <summary>Python's <c>str.lower()</c>: full lowercase mapping plus the Final_Sigma context rule.</summary>
    public static string Lower(string s)
    {
        var sb = new StringBuilder(s.Length + 4);
        int i = 0;
        while (i < s.Length)
        {
            int cp = CodePointAt(s, i, out int width);
            if (cp == CapitalIWithDot)
                sb.Append(CapitalIWithDotLower);
            else if (cp == CapitalSigma)
                sb.Append((char)(IsFinalSigma(s, i) ? FinalSigma : SmallSigma));
            else if (width == 1 && char.IsSurrogate(s[i]))
                sb.Append(s[i]); // a lone surrogate has no case
            else
                sb.Append(Rune.ToLowerInvariant(new Rune(cp)).ToString());
            i += width;
        }
        return sb.ToString();
    }

    /// <summary>
    /// Final_Sigma (Unicode 3.13, as CPython applies it): the sigma at <paramref name="index"/> is preceded by a
    /// cased letter (skipping case-ignorable code points) and not followed by one (skipping case-ignorables).
    /// </summary>
    private static bool IsFinalSigma(string s, int index)
    {
        int j = index;
        int before = -1;
        while (j > 0)
        {
            int cp = CodePointBefore(s, j, out int width);
            j -= width;
            if (!InRanges(PythonCaseData.CaseIgnorable, cp)) { before = cp; break; }
        }
        if (before < 0 || !InRanges(PythonCaseData.Cased, before)) return false;
        j = index + 1;
        while (j < s.Length)
        {
            int cp = CodePointAt(s, j, out int width);
            j += width;
            if (!InRanges(PythonCaseData.CaseIgnorable, cp)) return !InRanges(PythonCaseData.Cased, cp);
        }
        return true;
    }

    /// <summary>The code point starting at <paramref name="index"/>; a lone surrogate is returned as itself.</summary>
    public static int CodePointAt(string s, int index, out int width)
    {
        char c = s[index];
        if (char.IsHighSurrogate(c) && index + 1 < s.Length && char.IsLowSurrogate(s[index + 1]))
        {
            width = 2;
            return char.ConvertToUtf32(c, s[index + 1]);
        }
        width = 1;
        return c;
    }

    private static int CodePointBefore(string s, int end, out int width)
    {
        char c = s[end - 1];
        if (char.IsLowSurrogate(c) && end >= 2 && char.IsHighSurrogate(s[end - 2]))
        {
            width = 2;
            return char.ConvertToUtf32(s[end - 2], c);
        }
        width = 1;
        return c;
    }

    /// <summary>Binary search in sorted inclusive (start, end) pairs.</summary>
    internal static bool InRanges(int[] pairs, int cp)
    {
        int lo = 0, hi = pairs.Length / 2 - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >> 1;
            if (cp < pairs[2 * mid]) hi = mid - 1;
            else if (cp > pairs[2 * mid + 1]) lo = mid + 1;
            else return true;
        }
        return false;
    }
}
