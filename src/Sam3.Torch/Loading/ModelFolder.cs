using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Text;

namespace Sam3.Torch.Loading;

/// <summary>The files a model is loaded from.</summary>
internal sealed record ModelFiles(string CheckpointPath, Sam3Config Config, string TokenizerPath, string ConfigSource, IReadOnlyList<string> Notes);

/// <summary>
/// Finds a checkpoint, its configuration and the tokenizer from a file or a folder (a hub snapshot: <c>sam3.pt</c>,
/// <c>config.json</c>, <c>bpe_simple_vocab_16e6.txt.gz</c> or <c>vocab.json</c> + <c>merges.txt</c>).
/// </summary>
internal static class ModelFolder
{
    /// <summary>Checkpoint names looked for in a folder, in order of preference.</summary>
    public static readonly string[] CheckpointNames = ["sam3.pt", "model.safetensors", "sam3.safetensors"];
    public const string BpeGzName = "bpe_simple_vocab_16e6.txt.gz";
    public const string HfVocabName = "vocab.json";
    public const string HfMergesName = "merges.txt";
    public const string ConfigName = "config.json";

    /// <param name="path">A checkpoint file or a folder.</param>
    /// <param name="options">Configuration and tokenizer overrides.</param>
    /// <param name="requireTokenizer">False for point/box-only uses (the tracker): a folder without a tokenizer gives an
    /// empty <see cref="ModelFiles.TokenizerPath"/> instead of an error.</param>
    public static ModelFiles Locate(string path, Sam3ModelOptions options, bool requireTokenizer = true)
    {
        string full = Path.GetFullPath(path);
        string checkpoint, folder;
        var notes = new List<string>();
        if (Directory.Exists(full))
        {
            folder = full;
            checkpoint = FindCheckpoint(folder);
            var others = CheckpointNames.Select(n => Path.Combine(folder, n)).Where(p => p != checkpoint && File.Exists(p)).Select(Path.GetFileName).ToList();
            if (others.Count > 0) notes.Add($"using {Path.GetFileName(checkpoint)}; also present: {string.Join(", ", others)} (pass a file's path to choose)");
        }
        else if (File.Exists(full))
        {
            checkpoint = full;
            folder = Path.GetDirectoryName(full)!;
        }
        else
        {
            throw new Sam3CheckpointException($"checkpoint not found: {path} is neither a file nor a folder");
        }

        var (config, source) = options.Config is { } c ? (c, "options") : FindConfig(folder, checkpoint, options, notes);
        string tokenizer = options.TokenizerPath is { } t ? CheckTokenizerPath(t)
            : requireTokenizer || File.Exists(Path.Combine(folder, BpeGzName)) || File.Exists(Path.Combine(folder, HfVocabName)) ? FindTokenizer(folder) : "";
        return new ModelFiles(checkpoint, config, tokenizer, source, notes);
    }

    private static string FindCheckpoint(string folder)
    {
        foreach (var name in CheckpointNames)
        {
            string p = Path.Combine(folder, name);
            if (File.Exists(p)) return p;
        }
        var candidates = Directory.EnumerateFiles(folder)
            .Where(f => f.EndsWith(".pt", StringComparison.OrdinalIgnoreCase) || f.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            .OrderBy(f => f, StringComparer.Ordinal).ToList();
        return candidates.Count switch
        {
            1 => candidates[0],
            0 => throw new Sam3CheckpointException($"no checkpoint in {folder}: expected {string.Join(", ", CheckpointNames)} or one *.pt / *.safetensors file"),
            _ => throw new Sam3CheckpointException($"several checkpoints in {folder} ({string.Join(", ", candidates.Select(Path.GetFileName))}): pass the file's path"),
        };
    }

    /// <summary>config.json of this library's schema beside the checkpoint, else the checkpoint's metadata, else full.</summary>
    private static (Sam3Config, string) FindConfig(string folder, string checkpoint, Sam3ModelOptions options, List<string> notes)
    {
        string path = Path.Combine(folder, ConfigName);
        if (File.Exists(path))
        {
            string json = File.ReadAllText(path);
            if (IsLibrarySchema(json)) return (Sam3Config.FromJson(json), path);
            if (HuggingFaceConfig.IsHfConfigJson(json))
            {
                // the transformers config.json of a hub snapshot; where its numerics differ from the original
                // architecture, the original values are kept unless asked otherwise (reported once, here)
                var hf = HuggingFaceFolder.LoadConfig(path, options.UseTransformersNumerics ? HfNumerics.HuggingFace : HfNumerics.Original);
                foreach (var d in hf.Differences)
                    notes.Add($"{ConfigName}: {d}" + (options.UseTransformersNumerics ? " (the file's value is used)" : " (the original value is kept; Sam3ModelOptions.UseTransformersNumerics uses the file's)"));
                return (hf.Config, path);
            }
        }
        try
        {
            using var ckpt = CheckpointFile.Open(checkpoint);
            if (ckpt.Metadata.TryGetValue("sam3.config", out var name))
            {
                if (name == Sam3Config.Tiny.Name) return (Sam3Config.Tiny, "checkpoint metadata");
                if (name == Sam3Config.Full.Name) return (Sam3Config.Full, "checkpoint metadata");
            }
        }
        catch (Sam3CheckpointException)
        {
            // reported with its full reason by the load itself
        }
        return (Sam3Config.Full, "default (full)");
    }

    private static bool IsLibrarySchema(string json)
    {
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(json);
            return doc.RootElement.ValueKind == System.Text.Json.JsonValueKind.Object
                   && doc.RootElement.TryGetProperty("vit", out _) && doc.RootElement.TryGetProperty("image_size", out _);
        }
        catch (System.Text.Json.JsonException e)
        {
            throw new Sam3ConfigException($"invalid JSON in {ConfigName}: {e.Message}", e);
        }
    }

    private static string FindTokenizer(string folder)
    {
        string gz = Path.Combine(folder, BpeGzName);
        if (File.Exists(gz)) return gz;
        string vocab = Path.Combine(folder, HfVocabName);
        if (File.Exists(vocab)) return CheckTokenizerPath(vocab);
        throw new Sam3VocabularyException(
            $"no tokenizer in {folder}: expected {BpeGzName}, or {HfVocabName} with {HfMergesName} (or set Sam3ModelOptions.TokenizerPath)");
    }

    private static string CheckTokenizerPath(string path)
    {
        if (Directory.Exists(path)) return FindTokenizer(Path.GetFullPath(path));
        if (!File.Exists(path)) throw new Sam3VocabularyException($"tokenizer vocabulary not found: {path}");
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
        {
            string merges = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, HfMergesName);
            if (!File.Exists(merges)) throw new Sam3VocabularyException($"{path} needs {HfMergesName} beside it: {merges} not found");
        }
        return Path.GetFullPath(path);
    }

    public static ClipBpeTokenizer LoadTokenizer(string path, Sam3Config config)
    {
        path = CheckTokenizerPath(path);
        var options = new ClipTokenizerOptions { Text = config.Text };
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
            return ClipBpeTokenizer.FromHuggingFace(path, Path.Combine(Path.GetDirectoryName(path)!, HfMergesName), options);
        return ClipBpeTokenizer.FromBpeGz(path, options);
    }
}
