using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// Result of <see cref="StrictLoader.Load"/>: model key → tensor (in the expected list's order), the checkpoint's
/// complex buffers, and the checkpoint keys that were deliberately ignored. The tensors are owned by this object
/// (detached from any dispose scope); dispose it once they have been copied or adopted as parameters.
/// </summary>
internal sealed class LoadedStateDict : IDisposable
{
    internal LoadedStateDict(Dictionary<string, Tensor> tensors, List<ComplexBuffer> complexBuffers, List<string> ignored)
    {
        Tensors = tensors;
        ComplexBuffers = complexBuffers;
        IgnoredKeys = ignored;
    }

    /// <summary>Model key → tensor (CPU; memory-mapped views unless a cast was requested).</summary>
    public IReadOnlyDictionary<string, Tensor> Tensors { get; }
    /// <summary>Complex buffers (<c>*.freqs_cis</c>) found in the checkpoint, for the model to verify.</summary>
    public IReadOnlyList<ComplexBuffer> ComplexBuffers { get; }
    /// <summary>Model-side keys of checkpoint tensors skipped because the options allowed them to be unused.</summary>
    public IReadOnlyList<string> IgnoredKeys { get; }

    public void Dispose()
    {
        foreach (var t in Tensors.Values) t.Dispose();
        foreach (var c in ComplexBuffers) c.AsReal.Dispose();
    }
}
