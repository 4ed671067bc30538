using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// Conversion between the original released layout (<c>sam3.pt</c> or its safetensors form) and the Hugging Face
/// <c>transformers</c> layout (hub <c>model.safetensors</c>), streaming one tensor at a time from memory-mapped inputs.
/// <list type="bullet">
/// <item>original → HF: the rules of <see cref="HuggingFaceLayout"/>; tensors sorted by name and <c>__metadata__ = {"format": "pt"}</c>,
/// as <c>save_pretrained</c>/<c>safetensors.save_file</c> write the hub file, so a round trip HF → original → HF is byte-identical.</item>
/// <item>HF → original: q/k/v re-fused, class row restored (zeros, or from the sidecar), point embeddings unstacked,
/// <c>text_projection</c> transposed back, the ViT RoPE tables recomputed from the configuration (complex64, stored
/// <c>complex64_as_real</c>). The detector point projections are only written when a sidecar of dropped pieces
/// (<c>hf_dropped.safetensors</c>) supplies them; otherwise the file lacks them and loads with detector point prompts
/// disabled, like the HF file itself.</item>
/// </list>
/// </summary>
internal static class HuggingFaceConverter
{
    public const string ReleasedLayoutNote = "released sam3.pt checkpoint layout (detector.*, tracker.*)";

    /// <summary>Writes the HF layout of a released-layout checkpoint (.pt or safetensors).</summary>
    public static HfForwardPlan ToHf(ICheckpoint original, string outputPath, IProgress<(int done, int total, string key)>? progress = null)
    {
        var layout = StateDictMapper.DetectLayout(original.Names);
        if (layout != CheckpointLayout.Released)
            throw new Sam3CheckpointException($"{original.Path}: converting to the Hugging Face layout needs the released layout (detector.*, tracker.*), " +
                                              $"this checkpoint is {layout}");
        var plan = HuggingFaceLayout.PlanToHf(original.Names.Select(n => (n, original.Info(n).Shape)).ToList());
        var items = new List<SafetensorsWriter.Item>();
        foreach (var t in plan.Tensors)
        {
            var src = t.OriginalKeys;
            var dtype = original.Info(src[0]).DType;
            Func<Tensor> produce = t.Transform switch
            {
                HfTransform.SplitQkv => () => original.Load(src[0]).narrow(0, t.Part * t.Shape[0], t.Shape[0]),
                HfTransform.DropClsRow => () => original.Load(src[0]).narrow(1, 1, t.Shape[1]),
                HfTransform.StackRows => () => torch.cat(src.Select(original.Load).ToList(), 0),
                HfTransform.Transpose => () => original.Load(src[0]).t(),
                _ => () => original.Load(src[0]),
            };
            items.Add(new SafetensorsWriter.Item(t.HfKey, t.Shape, dtype, produce));
        }
        SafetensorsWriter.Write(outputPath, items, new Dictionary<string, string> { ["format"] = "pt" }, progress);
        return plan;
    }

    /// <summary>
    /// Writes the released layout of an HF-layout checkpoint. <paramref name="config"/> gives the ViT RoPE tables
    /// (e.g. <see cref="HuggingFaceConfig.Load"/> of the folder's config.json); <paramref name="sidecar"/> the pieces the
    /// HF layout drops. Returns the original keys that could not be written (the point projections without a sidecar).
    /// </summary>
    public static IReadOnlyList<string> ToOriginal(ICheckpoint hf, Sam3Config config, string outputPath, ICheckpoint? sidecar = null,
        IProgress<(int done, int total, string key)>? progress = null)
    {
        using var view = new HuggingFaceCheckpoint(hf, sidecar);
        var items = new List<SafetensorsWriter.Item>();
        foreach (var name in view.Names)
        {
            var info = view.Info(name);
            items.Add(new SafetensorsWriter.Item(name, info.Shape, info.DType, () => view.Load(name)));
        }
        const string trunk = "detector.backbone.vision_backbone.trunk.";
        var tables = VitRopeTables(config.Vit);
        try
        {
            foreach (var (key, table) in tables)
            {
                var captured = table;
                items.Add(new SafetensorsWriter.Item(trunk + key, captured.shape[..^1], ScalarType.ComplexFloat32,
                    () => torch.view_as_complex(captured.contiguous())));
            }
            var posPlan = view.Plan(HuggingFaceLayout.PosEmbedKey);
            if (posPlan is not null && posPlan.Shape[1] - 1 != (long)config.Vit.PretrainTokensPerSide * config.Vit.PretrainTokensPerSide)
                throw new Sam3CheckpointException($"{hf.Path}: position_embeddings has {posPlan.Shape[1] - 1} positions, the configuration " +
                                                  $"expects {config.Vit.PretrainTokensPerSide}² (wrong config.json?)");
            var missing = new List<string>();
            if (!view.Names.Any(n => n.StartsWith(HuggingFaceLayout.PointProjectionPrefix, StringComparison.Ordinal)) && config.GeometryEncoder.PointsDirectProject)
                missing.AddRange(new[] { "points_direct_project", "points_pool_project", "points_pos_enc_project" }
                    .SelectMany(p => new[] { $"{HuggingFaceLayout.PointProjectionPrefix}{p[7..]}.weight", $"{HuggingFaceLayout.PointProjectionPrefix}{p[7..]}.bias" }));
            var metadata = new Dictionary<string, string>
            {
                ["format"] = "pt",
                ["layout"] = ReleasedLayoutNote,
                ["converted_from"] = Path.GetFileName(hf.Path) + " (Hugging Face transformers layout)",
            };
            if (missing.Count > 0)
                metadata["sam3.missing"] = "detector point projections (not in the Hugging Face layout): detector point prompts unavailable";
            if (!view.HasClsRow) metadata["sam3.pos_embed_cls_row"] = "zeros (not in the Hugging Face layout; unused by SAM3)";
            SafetensorsWriter.Write(outputPath, items, metadata, progress);
            return missing;
        }
        finally
        {
            foreach (var (_, t) in tables) t.Dispose();
        }
    }

    /// <summary>
    /// The ViT RoPE tables as the released checkpoint stores them (<c>blocks.{i}.attn.freqs_cis</c>, float32 [L, head_dim/2, 2]):
    /// windowed blocks on the window grid at scale 1, global blocks on the N×N grid with positions scaled by
    /// rope_pt/N (interpolated RoPE). Same computation as the ViT's own (<see cref="AxialRope"/>).
    /// </summary>
    public static List<(string key, Tensor table)> VitRopeTables(VitConfig c)
    {
        var list = new List<(string, Tensor)>();
        if (!c.UseRope) return list;
        int n = c.TokensPerSide;
        for (int i = 0; i < c.Depth; i++)
        {
            int side = c.IsGlobalBlock(i) ? n : c.WindowSize;
            double scale = c.UseInterpRope ? (double)c.RopePtSide / side : 1.0;
            Tensor t;
            using (var scope = NewDisposeScope())
            {
                // torch.polar(1, angle) as upstream's compute_axial_cis (bit-exact with the released tables on CPU)
                var angles = AxialRope.ComputeAngles(c.HeadDim, side, side, c.RopeTheta, scale);
                t = torch.view_as_real(torch.polar(torch.ones_like(angles), angles)).MoveToOuterDisposeScope();
            }
            list.Add(($"blocks.{i}.attn.freqs_cis", t.DetachFromDisposeScope()));
        }
        return list;
    }
}

/// <summary>
/// A hub snapshot folder in the Hugging Face layout: <c>model.safetensors</c> + transformers <c>config.json</c>
/// (+ <c>vocab.json</c>/<c>merges.txt</c>, <c>processor_config.json</c>). Entry points for <c>Sam3Model.Load(folder)</c>.
/// </summary>
internal static class HuggingFaceFolder
{
    public const string ModelFile = "model.safetensors";
    public const string ConfigFile = "config.json";
    public const string VocabFile = "vocab.json";
    public const string MergesFile = "merges.txt";
    public const string ProcessorFile = "processor_config.json";

    /// <summary>True when <paramref name="folder"/> holds <c>model.safetensors</c> and a transformers SAM3 <c>config.json</c>.</summary>
    public static bool IsHfFolder(string folder)
    {
        string cfg = Path.Combine(folder, ConfigFile);
        return Directory.Exists(folder) && File.Exists(Path.Combine(folder, ModelFile)) && File.Exists(cfg)
               && HuggingFaceConfig.IsHfConfigJson(File.ReadAllText(cfg));
    }

    /// <summary>Reads the folder's config.json (and processor_config.json for the normalisation) into a <see cref="Sam3Config"/>.</summary>
    /// <param name="folderOrConfigPath">The snapshot folder, or the config.json itself.</param>
    public static HfConfigResult LoadConfig(string folderOrConfigPath, HfNumerics numerics = HfNumerics.Original)
    {
        string path = Directory.Exists(folderOrConfigPath) ? Path.Combine(folderOrConfigPath, ConfigFile) : folderOrConfigPath;
        string processor = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, ProcessorFile);
        return HuggingFaceConfig.Load(path, numerics, processor);
    }

    /// <summary>The folder's <c>vocab.json</c> and <c>merges.txt</c>, or null when either is missing.</summary>
    public static (string Vocab, string Merges)? TokenizerFiles(string folder)
    {
        string v = Path.Combine(folder, VocabFile), m = Path.Combine(folder, MergesFile);
        return File.Exists(v) && File.Exists(m) ? (v, m) : null;
    }
}
