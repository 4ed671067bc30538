using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.IO;

/// <summary>
/// A complex buffer of the checkpoint (the ViT's <c>*.attn.freqs_cis</c> RoPE tables, complex64). These are not loaded
/// into modules (TorchSharp modules do not hold complex buffers here); the model recomputes them and should compare
/// its tables with these (<see cref="MaxAbsDifference"/>).
/// </summary>
/// <param name="Key">Model key (after mapping).</param>
/// <param name="SourceKey">Checkpoint key.</param>
/// <param name="AsReal">The table as a real tensor with a trailing dimension of 2 (<c>view_as_real</c> layout).</param>
internal sealed record ComplexBuffer(string Key, string SourceKey, Tensor AsReal)
{
    /// <summary>Logical (complex) shape.</summary>
    public long[] Shape => AsReal.shape[..^1];

    /// <summary>
    /// Largest |checkpoint − recomputed| over real and imaginary parts. <paramref name="recomputed"/> is either a complex
    /// tensor of shape <see cref="Shape"/> or a real tensor shaped like <see cref="AsReal"/>.
    /// </summary>
    public double MaxAbsDifference(Tensor recomputed)
    {
        using var scope = NewDisposeScope();
        var r = recomputed.is_complex() ? torch.view_as_real(recomputed.resolve_conj()) : recomputed;
        if (!r.shape.SequenceEqual(AsReal.shape))
            throw new Sam3CheckpointException($"'{Key}': recomputed table has shape [{string.Join(",", recomputed.shape)}], the checkpoint's is [{string.Join(",", Shape)}] complex");
        return (AsReal.to(ScalarType.Float64) - r.to(ScalarType.Float64)).abs().max().ToDouble();
    }
}
