using System.Text.Json;

namespace Sam3.Torch.IO;

/// <summary>
/// Key/shape/dtype lists produced by the reference (parity fixtures and docs):
/// <c>full/manifest.json</c> (sections <c>image_model</c>, <c>video_model</c>), <c>full/checkpoint_keys.json</c>,
/// <c>tiny/model_manifest.json</c> (sections <c>checkpoint_layout</c>, <c>image_model_state_dict</c>) and the
/// parameter/buffer table <c>docs/sam3-state-dict-video.tsv</c>. JSON manifests carry no buffer flag; their entries are
/// marked buffers by <see cref="CheckpointInspector.IsKnownBuffer"/>.
/// </summary>
internal sealed class ManifestFile
{
    private ManifestFile(string path, string section, List<ExpectedTensor> entries, long? numParameters)
    {
        Path = path;
        Section = section;
        Entries = entries;
        NumParameters = numParameters;
    }

    public string Path { get; }
    public string Section { get; }
    public IReadOnlyList<ExpectedTensor> Entries { get; }
    /// <summary>The parameter count the file declares, when it declares one.</summary>
    public long? NumParameters { get; }

    /// <summary><c>full/manifest.json</c>; <paramref name="model"/> is "image_model" or "video_model".</summary>
    public static ManifestFile ReadFull(string path, string model = "image_model") =>
        Read(path, root =>
        {
            var section = Get(root, model, path);
            long? n = section.TryGetProperty("num_parameters", out var np) ? np.GetInt64() : null;
            return (Get(section, "state_dict", path), model, n);
        });

    /// <summary><c>full/checkpoint_keys.json</c>: the released checkpoint's keys.</summary>
    public static ManifestFile ReadCheckpointKeys(string path) =>
        Read(path, root => (Get(root, "keys", path), "keys", null));

    /// <summary><c>tiny/model_manifest.json</c>; <paramref name="section"/> is "checkpoint_layout" or "image_model_state_dict".</summary>
    public static ManifestFile ReadTiny(string path, string section = "checkpoint_layout") =>
        Read(path, root => (Get(root, section, path), section, null));

    /// <summary>Any of the JSON manifests, choosing the checkpoint-layout list when the file has several.</summary>
    public static ManifestFile ReadAny(string path) =>
        Read(path, root =>
        {
            if (root.TryGetProperty("keys", out var k)) return (k, "keys", null);
            if (root.TryGetProperty("checkpoint_layout", out var c)) return (c, "checkpoint_layout", null);
            if (root.TryGetProperty("video_model", out var v))
                return (Get(v, "state_dict", path), "video_model", v.TryGetProperty("num_parameters", out var np) ? np.GetInt64() : null);
            throw new Sam3CheckpointException($"{path}: no key list found (expected 'keys', 'checkpoint_layout' or 'video_model')");
        });

    /// <summary>The tab-separated table <c>key, shape "(a, b)", dtype, P|B</c> of <c>docs/sam3-state-dict-video.tsv</c>.</summary>
    public static ManifestFile ReadTsv(string path)
    {
        if (!File.Exists(path)) throw new Sam3CheckpointException($"manifest not found: {path}");
        var entries = new List<ExpectedTensor>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (lineNo == 1 && line.StartsWith("key\t", StringComparison.Ordinal)) continue;
            if (string.IsNullOrWhiteSpace(line)) continue;
            var f = line.Split('\t');
            if (f.Length < 4) throw new Sam3CheckpointException($"{path}:{lineNo}: expected 4 tab-separated fields");
            try
            {
                var shape = f[1].Trim('(', ')', ' ').Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                    .Select(long.Parse).ToArray();
                entries.Add(new ExpectedTensor(f[0], shape, CheckpointDTypes.FromPythonName(f[2]), f[3].Trim() == "B"));
            }
            catch (FormatException ex)
            {
                throw new Sam3CheckpointException($"{path}:{lineNo}: bad shape '{f[1]}'", ex);
            }
        }
        return new ManifestFile(path, "tsv", entries, null);
    }

    private static ManifestFile Read(string path, Func<JsonElement, (JsonElement list, string section, long? n)> select)
    {
        if (!File.Exists(path)) throw new Sam3CheckpointException($"manifest not found: {path}");
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var (list, section, n) = select(doc.RootElement);
            var entries = new List<ExpectedTensor>();
            foreach (var e in list.EnumerateArray())
            {
                string key = e.GetProperty("key").GetString() ?? throw new Sam3CheckpointException($"{path}: entry without a key");
                long[] shape = e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray();
                var dtype = CheckpointDTypes.FromPythonName(e.GetProperty("dtype").GetString() ?? "");
                bool isBuffer = e.TryGetProperty("is_buffer", out var b) ? b.GetBoolean() : CheckpointInspector.IsKnownBuffer(key);
                entries.Add(new ExpectedTensor(key, shape, dtype, isBuffer));
            }
            return new ManifestFile(path, section, entries, n);
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException or KeyNotFoundException or FormatException)
        {
            throw new Sam3CheckpointException($"{path}: malformed manifest ({ex.Message})", ex);
        }
    }

    private static JsonElement Get(JsonElement e, string name, string path) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) ? v : throw new Sam3CheckpointException($"{path}: no '{name}' section");
}
