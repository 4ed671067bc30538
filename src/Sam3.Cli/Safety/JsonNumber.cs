using System.Text.Json.Nodes;

namespace Sam3.Cli;

/// <summary>
/// Numbers for JSON outputs: JSON has no NaN or infinity, so a non-finite value (e.g. a score from NaN weights) is
/// written as <c>null</c> rather than failing the whole output (documented choice: null, never a refusal).
/// </summary>
internal static class JsonNumber
{
    public static JsonNode? Of(float v) => float.IsFinite(v) ? JsonValue.Create(v) : null;

    public static JsonNode? Of(double v) => double.IsFinite(v) ? JsonValue.Create(v) : null;
}
