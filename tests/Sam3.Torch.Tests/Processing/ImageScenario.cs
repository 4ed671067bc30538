using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Processing;

/// <summary>
/// The image part of a tiny parity scenario (shared/parity/tiny/&lt;name&gt;.json): the input image paths
/// (parameters.image or parameters.images, relative to shared/parity), the resolution (parameters.resolution, else
/// the side of image_input), and which of the image tensors
/// the scenario stores (decoded RGB, resized uint8, normalised input).
/// </summary>
internal sealed record ImageScenario(
    string Name,
    string TensorsPath,
    IReadOnlyList<string> ImagePaths,
    int Resolution,
    IReadOnlyList<string?> RgbTensorNames,
    string? ResizedTensorName,
    string? InputTensorName)
{
    /// <summary>Scenarios whose JSON describes image inputs.</summary>
    public static readonly string[] Names = ["a_image_text", "b_image_batch_text", "c_geometric_prompts"];

    /// <summary>Reads the scenario JSON; skips the calling test when the shared data is absent.</summary>
    public static ImageScenario Load(string name)
    {
        string jsonPath = SharedData.Parity("tiny", name + ".json");
        string tensorsPath = SharedData.Parity("tiny", name + ".safetensors");
        string parityRoot = Path.GetDirectoryName(Path.GetDirectoryName(jsonPath))!;
        using var doc = JsonDocument.Parse(File.ReadAllText(jsonPath));
        var parameters = doc.RootElement.GetProperty("parameters");
        var tensors = doc.RootElement.GetProperty("tensors");
        var relative = new List<string>();
        if (parameters.TryGetProperty("image", out var single)) relative.Add(single.GetString()!);
        else relative.AddRange(parameters.GetProperty("images").EnumerateArray().Select(e => e.GetString()!));
        bool Has(string t) => tensors.TryGetProperty(t, out _);
        var rgb = new List<string?>();
        for (int i = 0; i < relative.Count; i++)
        {
            string candidate = relative.Count == 1 ? "input.image_rgb_uint8" : $"input.image{i}_rgb_uint8";
            rgb.Add(Has(candidate) ? candidate : null);
        }
        return new ImageScenario(
            name,
            tensorsPath,
            relative.Select(r => Path.Combine(parityRoot, r)).ToList(),
            parameters.TryGetProperty("resolution", out var r) ? r.GetInt32() : InputSide(tensors),
            rgb,
            Has("input.resized_uint8") ? "input.resized_uint8" : null,
            Has("image_input") ? "image_input" : null);
    }

    /// <summary>S from the shape of image_input ([B,3,S,S]) for scenarios whose parameters do not name the resolution.</summary>
    private static int InputSide(JsonElement tensors)
    {
        var shape = tensors.GetProperty("image_input").GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.That(shape[^1], Is.EqualTo(shape[^2]), "image_input is square");
        return shape[^1];
    }

    public override string ToString() => Name;
}
