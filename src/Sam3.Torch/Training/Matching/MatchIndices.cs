using static TorchSharp.torch;

namespace Sam3.Torch.Training.Matching;

/// <summary>
/// A matching of predictions to targets (upstream's <c>(batch_idx, src_idx, tgt_idx)</c>): pair k matches prediction
/// <c>SrcIdx[k]</c> of query row <c>BatchIdx[k]</c> to the packed target <c>TgtIdx[k]</c>. All int64 [M] on the
/// predictions' device. Upstream's Hungarian matcher returns <c>tgt_idx = None</c> when the targets come in row order;
/// here the index is always filled in (the same packed order), which the losses treat identically.
/// </summary>
internal sealed class MatchIndices : IDisposable
{
    public MatchIndices(Tensor batchIdx, Tensor srcIdx, Tensor tgtIdx)
    {
        BatchIdx = batchIdx; SrcIdx = srcIdx; TgtIdx = tgtIdx;
    }

    public Tensor BatchIdx { get; }
    public Tensor SrcIdx { get; }
    public Tensor TgtIdx { get; }
    public long Count => BatchIdx.shape[0];

    /// <summary>Moves the tensors out of the current dispose scope.</summary>
    public MatchIndices MoveToOuterDisposeScope()
    {
        BatchIdx.MoveToOuterDisposeScope(); SrcIdx.MoveToOuterDisposeScope(); TgtIdx.MoveToOuterDisposeScope();
        return this;
    }

    public void Dispose()
    {
        BatchIdx.Dispose(); SrcIdx.Dispose(); TgtIdx.Dispose();
    }
}
