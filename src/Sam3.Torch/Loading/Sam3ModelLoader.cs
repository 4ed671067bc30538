using Sam3.Torch.Loading;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Heads;
using TorchSharp;
using static TorchSharp.torch;

using Sam3.Torch.Modeling.Detector;

namespace Sam3.Torch.Loading;

/// <summary>Options of <see cref="Sam3ModelLoader.LoadImageModel"/>.</summary>
internal sealed record Sam3LoadOptions
{
    /// <summary>Build the SAM1-style interactive heads (+ SAM2 neck) and load the checkpoint's <c>tracker.*</c> into them.</summary>
    public bool EnableInstInteractivity { get; init; } = true;
    /// <summary>Device of the model (default CPU).</summary>
    public Device? Device { get; init; }
    /// <summary>Parameter dtype (default float32; bfloat16 for the CUDA bf16 policy).</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;
    /// <summary>Largest accepted |checkpoint − recomputed| of the ViT RoPE tables (<c>freqs_cis</c>).</summary>
    public double FreqsCisTolerance { get; init; } = 1e-5;
    /// <summary>Progress per tensor: (done, total, key).</summary>
    public IProgress<(int done, int total, string key)>? Progress { get; init; }
    /// <summary>Image model (raw logits) or video detector (joint logits) scoring.</summary>
    public GroundingOptions? Grounding { get; init; }
}

/// <summary>
/// Builds the SAM3 image model and loads checkpoints into it: the released layout (<c>detector.*</c> +
/// <c>tracker.*</c>, mapped as the reference's <c>_load_checkpoint</c>) or the image model's own layout, from
/// <c>.pt</c> or safetensors. Loading is strict (every missing, unexpected or misshaped key is listed in one
/// <see cref="Sam3CheckpointMismatchException"/>); the RoPE tables in the file are checked against the recomputed ones.
/// </summary>
internal static class Sam3ModelLoader
{
    /// <summary>A model with the modules' own initialisation (random weights), in eval mode.</summary>
    public static Sam3ImageModel Build(Sam3Config cfg, bool enableInstInteractivity = true, Device? device = null, GroundingOptions? grounding = null)
    {
        var model = new Sam3ImageModel(cfg, enableInstInteractivity, grounding);
        if (device is not null && device.type != DeviceType.CPU) model.to(device);
        model.eval();
        return model;
    }

    /// <summary>Builds the model and loads <paramref name="checkpointPath"/> into it.</summary>
    public static Sam3ImageModel LoadImageModel(string checkpointPath, Sam3Config cfg, Sam3LoadOptions? options = null)
    {
        options ??= new Sam3LoadOptions();
        using var checkpoint = CheckpointFile.Open(checkpointPath);
        // Built on meta (no memory, no random initialisation): strict loading adopts the memory-mapped checkpoint
        // tensors as the parameters (ParameterAdoption). The Hugging Face path copies slices into a built model.
        var model = ParameterAdoption.BuildOnMeta(() => new Sam3ImageModel(cfg, options.EnableInstInteractivity, options.Grounding));
        if (HuggingFaceModelLoading.Handles(model, checkpoint))
        {
            model.Dispose();
            model = new Sam3ImageModel(cfg, options.EnableInstInteractivity, options.Grounding);
        }
        try
        {
            LoadInto(model, checkpoint, options);
            if (ParameterAdoption.Unmaterialized(model) is { Count: > 0 } left)
                throw new Sam3CheckpointException($"{checkpointPath}: loading left {left.Count} model tensor(s) without data: {string.Join(", ", left.Take(10))}");
            if (options.DType != ScalarType.Float32) model.to(options.DType);
            if (options.Device is { } d && d.type != DeviceType.CPU) model.to(d);
            model.eval();
            NativeHeap.Trim(); // what a conversion or the Hugging Face path freed
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Strictly loads an open checkpoint into <paramref name="model"/> and verifies the RoPE tables.</summary>
    public static void LoadInto(Sam3ImageModel model, ICheckpoint checkpoint, Sam3LoadOptions options)
    {
        // Hugging Face layout (hub model.safetensors), or a file without the detector point projections.
        if (HuggingFaceModelLoading.Handles(model, checkpoint)) { HuggingFaceModelLoading.LoadInto(model, checkpoint, options); return; }
        var layout = StateDictMapper.DetectLayout(checkpoint.Names);
        bool inst = model.inst_interactive_predictor is not null;
        var mapping = layout switch
        {
            CheckpointLayout.Released => StateDictMapper.ForImageModel(checkpoint.Names, inst),
            CheckpointLayout.ImageModel => StateDictMapper.Identity(checkpoint.Names),
            _ => StateDictMapper.ForImageModel(checkpoint.Names, inst), // reports the layout problem through the strict check
        };
        var buffers = StrictLoader.LoadInto(model, checkpoint, new StrictLoadOptions
        {
            Mapping = mapping,
            // The reference drops the SAM2-neck weights silently when the interactive heads are not built.
            IgnoreUnexpected = inst ? null : StateDictMapper.IsSam2NeckKey,
            Progress = options.Progress,
        });
        try
        {
            VerifyRopeTables(model, buffers, options.FreqsCisTolerance);
        }
        finally
        {
            foreach (var b in buffers) b.AsReal.Dispose();
        }
    }

    /// <summary>
    /// Saves the model's weights (e.g. after fine-tuning) to safetensors in the image model's own key layout, with the
    /// ViT RoPE tables as complex64 (stored <c>complex64_as_real</c>) so the file is a complete state dict that
    /// <see cref="LoadImageModel"/> (and <c>sam3 inspect</c>) accept. Refuses to overwrite an existing file unless asked.
    /// </summary>
    public static void Save(Sam3ImageModel model, string path, bool overwrite = false, IProgress<(int done, int total, string key)>? progress = null)
    {
        if (File.Exists(path) && !overwrite) throw new Sam3CheckpointException($"{path} exists (pass overwrite: true to replace it)");
        var items = new List<SafetensorsWriter.Item>();
        foreach (var (key, t) in model.state_dict())
            items.Add(new SafetensorsWriter.Item(key, t.shape, t.dtype, () => t.detach().cpu()));
        const string trunkPrefix = "backbone.vision_backbone.trunk.";
        foreach (var (key, table) in model.backbone.vision_backbone.trunk.FreqsCisAsReal(torch.CPU).ToList())
        {
            var captured = table.DetachFromDisposeScope();
            items.Add(new SafetensorsWriter.Item(trunkPrefix + key, captured.shape[..^1], ScalarType.ComplexFloat32,
                () => torch.view_as_complex(captured.contiguous())));
        }
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["sam3.layout"] = "image_model", ["sam3.config"] = model.Config.Name };
        SafetensorsWriter.Write(path, items, metadata, progress);
    }

    /// <summary>Every checkpoint <c>freqs_cis</c> must equal the table the ViT recomputes (same config ⇒ same table).</summary>
    public static void VerifyRopeTables(Sam3ImageModel model, IReadOnlyList<ComplexBuffer> buffers, double tolerance)
    {
        const string trunkPrefix = "backbone.vision_backbone.trunk.";
        var tables = new Dictionary<string, Tensor>();
        using var scope = NewDisposeScope();
        foreach (var (key, table) in model.backbone.vision_backbone.trunk.FreqsCisAsReal(torch.CPU)) tables[trunkPrefix + key] = table;
        var problems = new List<string>();
        foreach (var b in buffers)
        {
            if (!tables.TryGetValue(b.Key, out var mine)) { problems.Add($"{b.Key}: the model has no such RoPE table"); continue; }
            double diff = b.MaxAbsDifference(mine);
            if (!(diff <= tolerance)) problems.Add($"{b.Key}: differs from the recomputed table by {diff:G3}");
        }
        foreach (var key in tables.Keys.Except(buffers.Select(b => b.Key)))
            problems.Add($"{key}: missing from the checkpoint");
        if (problems.Count > 0)
            throw new Sam3CheckpointException("RoPE tables (freqs_cis) do not match the configuration: " + string.Join("; ", problems.Take(10)) +
                                              (problems.Count > 10 ? $"; ... {problems.Count - 10} more" : ""));
    }
}
