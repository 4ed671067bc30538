using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Vision;

/// <summary>
/// Result of <see cref="Sam3DualViTDetNeck"/> (the upstream tuple <c>(sam3_out, sam3_pos, sam2_out, sam2_pos)</c>):
/// one NCHW feature map and its sine position encoding per scale factor (highest resolution first), for the SAM3 neck
/// and, when configured, the SAM2 neck. The scalp (dropping the lowest-resolution levels) is applied by the caller.
/// </summary>
internal sealed record NeckOutput(Tensor[] Sam3Out, Tensor[] Sam3Pos, Tensor[]? Sam2Out, Tensor[]? Sam2Pos) : IDisposable
{
    public void Dispose()
    {
        foreach (var t in Sam3Out) t.Dispose();
        foreach (var t in Sam3Pos) t.Dispose();
        if (Sam2Out is not null) foreach (var t in Sam2Out) t.Dispose();
        if (Sam2Pos is not null) foreach (var t in Sam2Pos) t.Dispose();
    }

    /// <summary>Moves every tensor to the enclosing dispose scope.</summary>
    public NeckOutput MoveToOuterDisposeScope()
    {
        foreach (var t in Sam3Out) t.MoveToOuterDisposeScope();
        foreach (var t in Sam3Pos) t.MoveToOuterDisposeScope();
        if (Sam2Out is not null) foreach (var t in Sam2Out) t.MoveToOuterDisposeScope();
        if (Sam2Pos is not null) foreach (var t in Sam2Pos) t.MoveToOuterDisposeScope();
        return this;
    }
}
