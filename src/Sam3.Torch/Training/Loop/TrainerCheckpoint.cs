using System.Text.Json;
using Sam3.Torch.IO;
using Sam3.Torch.Loading;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Training.Lora;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Loop;

/// <summary>
/// A training checkpoint: one folder with
/// <list type="bullet">
/// <item><c>model.safetensors</c>: the weights in the released key layout (<c>detector.*</c>, with the ViT RoPE tables as
/// complex64 like the released file), so <see cref="Sam3ModelLoader.LoadImageModel"/> and upstream's
/// <c>_load_checkpoint</c> read it;</item>
/// <item><c>optimizer.safetensors</c> + <c>optimizer.json</c>: the AdamW state (<see cref="Optim.AdamW.Save"/>);</item>
/// <item><c>trainer.json</c>: the step, the schedule's shape (to refuse a mismatched resume) and the torch generator state;</item>
/// <item><c>lora.safetensors</c> with LoRA: the adapters (<see cref="LoraModel.Save"/>); <c>model.safetensors</c> is then
/// left out when no base weight is trained (the base is the source checkpoint, unchanged).</item>
/// </list>
/// With <see cref="TrainerOptions.SourceCheckpoint"/> the model file also holds the source's <c>tracker.*</c> tensors.
/// Written atomically: everything goes to a temporary folder next to the target, each file is flushed to disk, then the
/// folder is renamed into place (an existing checkpoint of that name is moved aside first and deleted after).
/// </summary>
internal static class TrainerCheckpoint
{
    public const string ModelFile = "model.safetensors";
    public const string OptimizerFile = "optimizer.safetensors";
    public const string StateFile = "trainer.json";
    public const string LoraFile = "lora.safetensors";
    public const int FormatVersion = 1;

    private sealed record State(int Format, int Step, int Epoch, int TotalSteps, int StepsPerEpoch, int Epochs, int BatchSize,
        int AccumulationSteps, int DataCount, int DataSeed, int TrainedParameters, string TorchRngState);

    public static void Save(Sam3Trainer trainer, string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        string full = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar);
        string parent = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        RecoverInterrupted(full);
        string temp = Path.Combine(parent, $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        Directory.CreateDirectory(temp);
        try
        {
            bool baseTrained = trainer.Lora is null || trainer.Model.parameters().Any(p => p.requires_grad);
            if (baseTrained) WriteModel(trainer.Model, Path.Combine(temp, ModelFile), trainer.Options.SourceCheckpoint);
            trainer.Lora?.Save(Path.Combine(temp, LoraFile));
            trainer.Optimizer.AdamW.Save(Path.Combine(temp, OptimizerFile));
            string rng;
            using (var scope = NewDisposeScope())
            {
                var t = torch.random.get_rng_state();
                rng = Convert.ToBase64String(t.data<byte>().ToArray());
            }
            var o = trainer.Options;
            var state = new State(FormatVersion, trainer.Step, trainer.Step / trainer.StepsPerEpoch, trainer.TotalSteps, trainer.StepsPerEpoch,
                o.Epochs, o.BatchSize, o.AccumulationSteps, trainer.Data.Count, trainer.Data.Seed, trainer.TrainedParameters.Count, rng);
            File.WriteAllText(Path.Combine(temp, StateFile), JsonSerializer.Serialize(state, new JsonSerializerOptions { WriteIndented = true }));
            foreach (var f in Directory.GetFiles(temp))
                using (var fs = new FileStream(f, FileMode.Open, FileAccess.ReadWrite)) fs.Flush(flushToDisk: true);

            if (Directory.Exists(full))
            {
                string old = Path.Combine(parent, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.old");
                Directory.Move(full, old);
                Directory.Move(temp, full);
                Directory.Delete(old, recursive: true);
            }
            else Directory.Move(temp, full);
        }
        catch
        {
            try { if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true); } catch (IOException) { }
            throw;
        }
    }

    public static void Restore(Sam3Trainer trainer, string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        string statePath = Path.Combine(directory, StateFile);
        if (!File.Exists(statePath)) throw new Sam3CheckpointException($"{directory}: no {StateFile}, not a training checkpoint");
        var state = JsonSerializer.Deserialize<State>(File.ReadAllText(statePath))
                    ?? throw new Sam3CheckpointException($"{statePath}: empty trainer state");
        if (state.Format != FormatVersion) throw new Sam3CheckpointException($"{statePath}: format {state.Format}, expected {FormatVersion}");
        var o = trainer.Options;
        var mismatches = new List<string>();
        void Check(string what, long saved, long now) { if (saved != now) mismatches.Add($"{what} {saved} in the checkpoint, {now} now"); }
        Check("steps per epoch", state.StepsPerEpoch, trainer.StepsPerEpoch);
        Check("epochs", state.Epochs, o.Epochs);
        Check("batch size", state.BatchSize, o.BatchSize);
        Check("accumulation steps", state.AccumulationSteps, o.AccumulationSteps);
        Check("datapoints", state.DataCount, trainer.Data.Count);
        Check("data seed", state.DataSeed, trainer.Data.Seed);
        Check("trained parameters", state.TrainedParameters, trainer.TrainedParameters.Count);
        if (mismatches.Count > 0) throw new Sam3CheckpointException($"{directory}: cannot resume exactly: {string.Join("; ", mismatches)}");

        string modelPath = Path.Combine(directory, ModelFile);
        if (File.Exists(modelPath) || trainer.Lora is null)
            using (var file = CheckpointFile.Open(modelPath))
                Sam3ModelLoader.LoadInto(trainer.Model, file, new Sam3LoadOptions { EnableInstInteractivity = trainer.Model.inst_interactive_predictor is not null });
        if (trainer.Lora is { } lora) RestoreLora(lora, Path.Combine(directory, LoraFile));
        trainer.Optimizer.AdamW.Load(Path.Combine(directory, OptimizerFile));
        trainer.SetStep(state.Step);
        using var scope = NewDisposeScope();
        torch.random.set_rng_state(torch.tensor(Convert.FromBase64String(state.TorchRngState), ScalarType.Byte));
    }

    /// <summary>
    /// Repairs what a process killed inside <see cref="Save"/> can leave next to <paramref name="directory"/>: a checkpoint
    /// moved aside (<c>.NAME.*.old</c>) but not yet replaced goes back into place, and half-written temporary folders
    /// (<c>.NAME.*.tmp</c>) are deleted. Call it before looking for a checkpoint to resume from.
    /// </summary>
    public static void RecoverInterrupted(string directory)
    {
        string full = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar);
        string parent = Path.GetDirectoryName(full)!, name = Path.GetFileName(full);
        if (!Directory.Exists(parent)) return;
        var old = Directory.GetDirectories(parent, $".{name}.*.old");
        if (!Directory.Exists(full) && old.Length > 0)
        {
            // the newest complete moved-aside checkpoint is the last one that was in place
            var back = old.Where(o => File.Exists(Path.Combine(o, StateFile))).OrderByDescending(Directory.GetLastWriteTimeUtc).FirstOrDefault();
            if (back is not null) Directory.Move(back, full);
        }
        foreach (var d in Directory.GetDirectories(parent, $".{name}.*.old").Concat(Directory.GetDirectories(parent, $".{name}.*.tmp")))
            Directory.Delete(d, recursive: true);
    }

    private static void RestoreLora(LoraModel lora, string path)
    {
        if (!File.Exists(path)) throw new Sam3CheckpointException($"{path}: the checkpoint has no LoRA adapters, this run trains some");
        using var file = SafetensorsFile.Open(path);
        var ours = lora.Parameters().ToList();
        if (file.Names.Count != ours.Count)
            throw new Sam3CheckpointException($"{path}: {file.Names.Count} adapter tensors, this run has {ours.Count}");
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        foreach (var (name, p) in ours)
        {
            if (!file.Contains(name)) throw new Sam3CheckpointException($"{path}: no adapter tensor '{name}'");
            var src = file.Load(name);
            if (!src.shape.SequenceEqual(p.shape))
                throw new Sam3CheckpointException($"{path}: '{name}' is [{string.Join(",", src.shape)}], this run's is [{string.Join(",", p.shape)}]");
            p.copy_(src);
        }
    }

    /// <summary>
    /// The model's weights in the released layout: every image-model key behind <c>detector.</c>, plus, with
    /// <paramref name="sourceCheckpoint"/>, every other tensor of that file copied unchanged: the tracker (<c>tracker.*</c>)
    /// and the detector parts the training model does not build (the SAM2 neck <c>sam2_convs</c> of the interactive heads).
    /// </summary>
    public static void WriteModel(Sam3ImageModel model, string path, string? sourceCheckpoint = null)
    {
        const string prefix = IO.StateDictMapper.DetectorPrefix;
        var items = new List<SafetensorsWriter.Item>();
        foreach (var (key, t) in model.state_dict())
            items.Add(new SafetensorsWriter.Item(prefix + key, t.shape, t.dtype, () => t.detach().cpu()));
        const string trunkPrefix = prefix + "backbone.vision_backbone.trunk.";
        foreach (var (key, table) in model.backbone.vision_backbone.trunk.FreqsCisAsReal(torch.CPU).ToList())
        {
            var captured = table.DetachFromDisposeScope();
            items.Add(new SafetensorsWriter.Item(trunkPrefix + key, captured.shape[..^1], ScalarType.ComplexFloat32,
                () => torch.view_as_complex(captured.contiguous())));
        }
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["sam3.layout"] = "released", ["sam3.config"] = model.Config.Name };
        using var source = sourceCheckpoint is null ? null : CheckpointFile.Open(sourceCheckpoint);
        if (source is not null)
        {
            var written = items.Select(i => i.Name).ToHashSet(StringComparer.Ordinal);
            foreach (var name in source.Names)
            {
                if (written.Contains(name)) continue;
                var info = source.Info(name);
                string n = name;
                items.Add(info.ComplexAsReal
                    ? new SafetensorsWriter.Item(n, info.LogicalShape, info.DType == ScalarType.Float64 ? ScalarType.ComplexFloat64 : ScalarType.ComplexFloat32,
                        () => torch.view_as_complex(source.Load(n).contiguous()))
                    : new SafetensorsWriter.Item(n, info.Shape, info.DType, () => source.Load(n)));
            }
        }
        SafetensorsWriter.Write(path, items, metadata);
    }
}
