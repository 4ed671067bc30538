using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Loading;
using Sam3.Torch.Modeling.Detector;

namespace Sam3.Torch.Parity;

internal sealed partial class ParityRunner
{
    /// <summary>
    /// Checkpoint to run the scenarios with instead of <c>MODEL/model.safetensors</c>: a file, or a folder holding
    /// <c>model.safetensors</c> (e.g. <c>tiny_hf/</c>, the tiny model in the Hugging Face layout). A folder's transformers
    /// <c>config.json</c> must describe the fixture's architecture.
    /// </summary>
    internal string? CheckpointOverride { get; init; }

    /// <summary>The checkpoint file the model is loaded from.</summary>
    internal string CheckpointPath => CheckpointOverride is null ? Path.Combine(ModelDirectory, "model.safetensors")
        : Directory.Exists(CheckpointOverride) ? Path.Combine(CheckpointOverride, HuggingFaceFolder.ModelFile) : CheckpointOverride;

    private Sam3ImageModel LoadModel()
    {
        if (CheckpointOverride is not null && HuggingFaceFolder.IsHfFolder(CheckpointOverride))
        {
            var hf = HuggingFaceFolder.LoadConfig(CheckpointOverride);
            if (!hf.Config.SameArchitecture(Config))
                throw new Sam3Exception($"{CheckpointOverride}: its config.json does not describe the fixture's architecture ({Config.Name})");
        }
        return WithPolicy(Sam3ModelLoader.LoadImageModel(CheckpointPath, Config));
    }
}
