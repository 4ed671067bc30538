using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Text;

/// <summary>
/// A tokenized batch: <see cref="Ids"/> [T, context] = start-of-text + BPE ids + end-of-text, zero padded (a sequence
/// longer than the context is cut and its last id replaced by end-of-text); <see cref="PaddingMask"/> [T, context],
/// True = padding. <see cref="Lengths"/> counts the ids of each row before padding (after truncation).
/// </summary>
internal sealed record ClipTokenizedBatch(long[,] Ids, bool[,] PaddingMask, int[] Lengths, bool[] Truncated)
{
    public int Count => Ids.GetLength(0);
    public int ContextLength => Ids.GetLength(1);

    /// <summary>The batch as an int64 tensor [T, context] and a bool tensor [T, context].</summary>
    public (Tensor Ids, Tensor PaddingMask) ToTensors(Device? device = null)
    {
        int t = Count, ctx = ContextLength;
        var ids = new long[t * ctx];
        var mask = new bool[t * ctx];
        for (int i = 0; i < t; i++)
            for (int j = 0; j < ctx; j++)
            {
                ids[i * ctx + j] = Ids[i, j];
                mask[i * ctx + j] = PaddingMask[i, j];
            }
        long[] shape = [t, ctx];
        var idsTensor = torch.tensor(ids, shape, ScalarType.Int64, device);
        var maskTensor = torch.tensor(mask, shape, ScalarType.Bool, device);
        return (idsTensor, maskTensor);
    }
}
