using System.Reflection;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.RegularExpressions;

namespace Sam3.Torch.Config;

/// <summary>
/// Checks a configuration's numbers before any module is built, so that a bad config.json fails with one
/// <see cref="Sam3ConfigException"/> naming the field (as its JSON path) instead of LibTorch's C++ error from a tensor
/// of negative size. Rules: a size-like integer (dimensions, sizes, heads, layers, depths, strides, counts of queries,
/// features or channels) must be positive; any other integer may not be negative unless the built-in default is; a
/// floating-point value must be finite; the image normalisation has 3 finite means and 3 finite non-zero deviations.
/// </summary>
internal static partial class ConfigValidation
{
    [GeneratedRegex("(Dim|Size|Heads|Depth|Layers|Queries|Stride|Width|Length|Feats|Resolution|Chans|Outputs|Maskmem)$")]
    private static partial Regex SizeLike();

    public static void Check(Sam3Config config, string? source = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        string prefix = source is null ? "" : source + ": ";
        Walk(config, new Sam3Config(), "", prefix, depth: 0);
        CheckTriple(config.ImageMean, "image_mean", prefix, nonZero: false);
        CheckTriple(config.ImageStd, "image_std", prefix, nonZero: true);
    }

    private static void CheckTriple(double[]? values, string name, string prefix, bool nonZero)
    {
        if (values is null || values.Length != 3)
            throw new Sam3ConfigException($"{prefix}{name} must hold 3 numbers (R, G, B), got {(values is null ? "null" : values.Length.ToString())}");
        for (int i = 0; i < 3; i++)
        {
            if (!double.IsFinite(values[i])) throw new Sam3ConfigException($"{prefix}{name}[{i}] is {values[i]}, expected a finite number");
            if (nonZero && values[i] == 0) throw new Sam3ConfigException($"{prefix}{name}[{i}] is 0 (a division by zero in normalisation)");
        }
    }

    private static string JsonName(PropertyInfo p) =>
        p.GetCustomAttribute<JsonPropertyNameAttribute>()?.Name ?? JsonNamingPolicy.SnakeCaseLower.ConvertName(p.Name);

    private static void Walk(object value, object? defaults, string path, string prefix, int depth)
    {
        if (depth > 8) return;
        foreach (var p in value.GetType().GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            if (p.GetIndexParameters().Length > 0 || p.GetCustomAttribute<JsonIgnoreAttribute>() is not null) continue;
            if (p.Name is "Derived" or "Extra" || !p.CanRead) continue;
            string name = path.Length == 0 ? JsonName(p) : $"{path}.{JsonName(p)}";
            object? v = p.GetValue(value);
            object? d = defaults is null ? null : p.GetValue(defaults);
            switch (v)
            {
                case null:
                    if (d is not null && p.PropertyType.IsClass && p.PropertyType != typeof(string))
                        throw new Sam3ConfigException($"{prefix}{name} is null");
                    break;
                case int i:
                    if (SizeLike().IsMatch(p.Name) && i <= 0)
                        throw new Sam3ConfigException($"{prefix}{name} is {i}; it must be positive");
                    if (i < 0 && !(d is int di && di < 0))
                        throw new Sam3ConfigException($"{prefix}{name} is {i}; it may not be negative");
                    break;
                case double x:
                    if (!double.IsFinite(x) && !(d is double dx && !double.IsFinite(dx)))
                        throw new Sam3ConfigException($"{prefix}{name} is {x}, expected a finite number");
                    break;
                case int[] ints:
                    for (int k = 0; k < ints.Length; k++)
                        if (ints[k] < 0 || (SizeLike().IsMatch(p.Name.TrimEnd('s')) && ints[k] == 0))
                            throw new Sam3ConfigException($"{prefix}{name}[{k}] is {ints[k]}; it must be {(ints[k] < 0 ? "non-negative" : "positive")}");
                    break;
                case double[] doubles:
                    for (int k = 0; k < doubles.Length; k++)
                        if (!double.IsFinite(doubles[k])) throw new Sam3ConfigException($"{prefix}{name}[{k}] is {doubles[k]}, expected a finite number");
                    break;
                case string or bool or Enum:
                    break;
                default:
                    if (p.PropertyType.IsClass && p.PropertyType.Namespace == typeof(Sam3Config).Namespace)
                        Walk(v, d, name, prefix, depth + 1);
                    break;
            }
        }
    }
}
