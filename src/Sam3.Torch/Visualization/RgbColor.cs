using System.Globalization;

namespace Sam3.Torch.Visualization;

/// <summary>An 8-bit RGB colour.</summary>
public readonly record struct RgbColor(byte R, byte G, byte B)
{
    /// <summary>matplotlib's "green" (#008000): the reference's positive-point colour.</summary>
    public static RgbColor Green => new(0, 128, 0);

    /// <summary>matplotlib's "red" (#FF0000): the reference's negative-point colour.</summary>
    public static RgbColor Red => new(255, 0, 0);

    /// <summary>matplotlib's "lime" (#00FF00), used by the reference's video prompt plots for positive points.</summary>
    public static RgbColor Lime => new(0, 255, 0);

    public static RgbColor White => new(255, 255, 255);
    public static RgbColor Black => new(0, 0, 0);

    /// <summary>Parses "#RRGGBB" or "RRGGBB".</summary>
    public static RgbColor FromHex(string hex)
    {
        ArgumentNullException.ThrowIfNull(hex);
        var s = hex.StartsWith('#') ? hex[1..] : hex;
        if (s.Length != 6 || !int.TryParse(s, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int v))
            throw new Sam3Exception($"'{hex}' is not a colour of the form #RRGGBB");
        return new RgbColor((byte)(v >> 16), (byte)(v >> 8), (byte)v);
    }

    public override string ToString() => $"#{R:X2}{G:X2}{B:X2}";
}
