using System.Text.Json;
using Sam3.Torch.IO;
using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

/// <summary>Description of one recorded tensor of a scenario (the <c>tensors</c> map of the scenario JSON).</summary>
internal sealed record FixtureTensorInfo(string Name, long[] Shape, string DType, string Description, double? ObservedMaxAbsDiff, long? ObservedMismatch);

/// <summary>
/// One reference scenario of shared/parity (e.g. <c>tiny/a_image_text.json</c> + <c>.safetensors</c>): its parameters
/// and recorded tensors. Paths inside the parameters are relative to the fixture root (the folder holding <c>inputs/</c>).
/// </summary>
internal sealed class ScenarioFixture : IDisposable
{
    public string Name { get; }
    public string JsonPath { get; }
    /// <summary>The fixture root (parent of the model folder, e.g. shared/parity).</summary>
    public string Root { get; }
    public JsonElement Parameters { get; }
    public IReadOnlyDictionary<string, FixtureTensorInfo> Tensors { get; }
    private readonly SafetensorsFile _data;
    private readonly JsonDocument _doc;

    private ScenarioFixture(string jsonPath, string root, JsonDocument doc, SafetensorsFile data)
    {
        JsonPath = jsonPath;
        Name = Path.GetFileNameWithoutExtension(jsonPath);
        Root = root;
        _doc = doc;
        _data = data;
        Parameters = doc.RootElement.GetProperty("parameters");
        var tensors = new Dictionary<string, FixtureTensorInfo>();
        foreach (var p in doc.RootElement.GetProperty("tensors").EnumerateObject())
        {
            var v = p.Value;
            double? diff = null; long? mismatch = null;
            if (v.TryGetProperty("run2_vs_run1", out var r))
            {
                if (r.TryGetProperty("max_abs_diff", out var d) && d.ValueKind == JsonValueKind.Number) diff = d.GetDouble();
                if (r.TryGetProperty("num_mismatch", out var m) && m.ValueKind == JsonValueKind.Number) mismatch = m.GetInt64();
            }
            tensors[p.Name] = new FixtureTensorInfo(p.Name, v.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray(),
                v.GetProperty("dtype").GetString() ?? "", v.TryGetProperty("description", out var desc) ? desc.GetString() ?? "" : "", diff, mismatch);
        }
        Tensors = tensors;
    }

    /// <summary>Opens <c>DIR/NAME.json</c> and <c>DIR/NAME.safetensors</c>; root defaults to the parent of DIR.</summary>
    public static ScenarioFixture Open(string jsonPath, string? root = null)
    {
        if (!File.Exists(jsonPath)) throw new Sam3Exception($"scenario file not found: {jsonPath}");
        string st = Path.ChangeExtension(jsonPath, ".safetensors");
        var doc = JsonDocument.Parse(File.ReadAllText(jsonPath));
        var data = SafetensorsFile.Open(st);
        return new ScenarioFixture(jsonPath, root ?? Path.GetDirectoryName(Path.GetDirectoryName(Path.GetFullPath(jsonPath)))!, doc, data);
    }

    public bool Has(string name) => _data.Contains(name);

    /// <summary>The recorded tensor (CPU).</summary>
    public Tensor Get(string name)
    {
        if (!_data.Contains(name)) throw new Sam3Exception($"{Name}: no recorded tensor '{name}'");
        return _data.Load(name);
    }

    /// <summary>Resolves a path given in the parameters (relative to the fixture root).</summary>
    public string ResolvePath(string relative) => Path.GetFullPath(Path.Combine(Root, relative));

    public void Dispose()
    {
        _data.Dispose();
        _doc.Dispose();
    }
}
