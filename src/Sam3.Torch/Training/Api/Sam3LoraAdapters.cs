using Sam3.Torch.Training.Lora;

namespace Sam3.Torch.Training;

/// <summary>
/// LoRA adapters written by a fine-tuning run with <see cref="Sam3FineTuningOptions.Lora"/> (<c>lora.safetensors</c>:
/// the adapters alone, a few megabytes, ranks and scales in the file's metadata) applied to a loaded base model.
/// </summary>
/// <example>
/// <code>
/// using var model = Sam3Model.Load("sam3/");                       // the base the adapters were trained on
/// Sam3LoraAdapters.Merge(model, "runs/lora/lora.safetensors");     // now the fine-tuned model
/// </code>
/// </example>
public static class Sam3LoraAdapters
{
    /// <summary>
    /// Adds every adapter's update (B·A·alpha/rank) of <paramref name="adapterPath"/> into the weight it adapts, in place:
    /// <paramref name="model"/> then computes what the fine-tuned model computes, at no extra cost per call. Predictors
    /// created before see the new weights; the change lasts until the model is disposed (load it again for the base).
    /// </summary>
    /// <returns>The number of adapted projections.</returns>
    /// <exception cref="ArgumentException"><paramref name="adapterPath"/> is empty.</exception>
    /// <exception cref="Sam3Exception">The file is not an adapter file or its adapters do not fit the model's projections.</exception>
    public static int Merge(Sam3Model model, string adapterPath)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrWhiteSpace(adapterPath);
        if (!File.Exists(adapterPath)) throw new Sam3Exception($"LoRA adapter file not found: {adapterPath}");
        var network = model.Network;
        var frozen = network.parameters().Select(p => p.requires_grad).ToList();
        using var lora = LoraModel.Load(network, adapterPath, freezeBase: false);
        int count = lora.Adapters.Count;
        lora.MergeIntoBase();
        int i = 0;
        foreach (var p in network.parameters()) p.requires_grad = frozen[i++];
        return count;
    }
}
