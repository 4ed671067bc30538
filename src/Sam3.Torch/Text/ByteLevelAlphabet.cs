using System.Text;

namespace Sam3.Torch.Text;

/// <summary>
/// GPT-2/CLIP's reversible byte ↔ character table (<c>bytes_to_unicode</c>): the 188 printable Latin-1 bytes
/// ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves, the other 68 bytes (controls, space, U+007F..U+00A0, U+00AD)
/// to U+0100, U+0101, ... in byte order. BPE then works on strings of these characters, one per UTF-8 byte.
/// </summary>
internal static class ByteLevelAlphabet
{
    private const int ByteCount = 256;

    /// <summary>Character of each byte.</summary>
    public static IReadOnlyList<char> ByteToChar => Table.ByteToChar;

    /// <summary>The 256 characters in the reference's vocabulary order: printable bytes first (in byte order), then the remapped ones.</summary>
    public static IReadOnlyList<char> VocabularyOrder => Table.Order;

    private static readonly (char[] ByteToChar, char[] Order, Dictionary<char, byte> CharToByte) Table = Build();

    private static (char[], char[], Dictionary<char, byte>) Build()
    {
        var byteToChar = new char[ByteCount];
        var order = new List<char>(ByteCount);
        var printable = new bool[ByteCount];
        for (int b = '!'; b <= '~'; b++) printable[b] = true;
        for (int b = 0xA1; b <= 0xAC; b++) printable[b] = true;
        for (int b = 0xAE; b <= 0xFF; b++) printable[b] = true;
        for (int b = 0; b < ByteCount; b++)
            if (printable[b]) { byteToChar[b] = (char)b; order.Add((char)b); }
        int n = 0;
        for (int b = 0; b < ByteCount; b++)
            if (!printable[b]) { byteToChar[b] = (char)(ByteCount + n++); order.Add(byteToChar[b]); }
        var charToByte = new Dictionary<char, byte>(ByteCount);
        for (int b = 0; b < ByteCount; b++) charToByte[byteToChar[b]] = (byte)b;
        return (byteToChar, order.ToArray(), charToByte);
    }

    /// <summary>UTF-8 bytes of <paramref name="piece"/>, one table character each (lone surrogates encode as U+FFFD).</summary>
    public static string Encode(string piece)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(piece);
        return string.Create(bytes.Length, bytes, static (dst, src) =>
        {
            for (int i = 0; i < src.Length; i++) dst[i] = Table.ByteToChar[src[i]];
        });
    }

    /// <summary>Inverse of <see cref="Encode"/> for a byte-level string; false when a character is not in the table.</summary>
    public static bool TryDecodeBytes(string chars, List<byte> output)
    {
        foreach (char c in chars)
        {
            if (!Table.CharToByte.TryGetValue(c, out byte b)) return false;
            output.Add(b);
        }
        return true;
    }
}
