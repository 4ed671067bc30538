using static TorchSharp.torch;

using Sam3.Torch.Visualization;

namespace Sam3.Torch.Processing;

/// <summary>
/// Tensor output of <see cref="Sam3InteractivePredictor"/> for one image. Single prompt: masks [C, H, W], IoU [C], low-res
/// logits [C, 4N, 4N]; batched boxes (<see cref="IsBatched"/>): one more leading dimension of size
/// <see cref="NumPrompts"/>. C = 3 with multimask output, else 1. H, W = the original image size. Owns its tensors (CPU).
/// </summary>
internal sealed class InteractiveTensors : IDisposable
{
    public int ImageIndex { get; }
    public int Height { get; }
    public int Width { get; }
    /// <summary>True for <see cref="InteractiveImagePredictor.PredictBoxes"/> (a leading prompt dimension).</summary>
    public bool IsBatched { get; }

    /// <summary>bool [C,H,W] / [N,C,H,W]: upsampled (hole-filled) logits &gt; mask threshold.</summary>
    public Tensor Masks { get; }
    /// <summary>float [C,H,W] / [N,C,H,W]: the upsampled logits the masks were thresholded from (only with ReturnLogits).</summary>
    public Tensor? MaskLogits { get; }
    /// <summary>float [C] / [N,C]: predicted IoU (sigmoid outputs of the IoU head).</summary>
    public Tensor IouScores { get; }
    /// <summary>float [C,4N,4N] / [N,C,4N,4N]: raw mask-decoder logits (before hole filling) clamped to ±32, for feeding back as mask input.</summary>
    public Tensor LowResLogits { get; }
    /// <summary>float [1] / [N,1]: object-score logit (&gt; 0: the heads think an object is present). Not returned by upstream's predict.</summary>
    public Tensor ObjectScoreLogits { get; }

    internal InteractiveTensors(int imageIndex, int height, int width, bool batched, Tensor masks, Tensor? maskLogits,
                                   Tensor iou, Tensor lowRes, Tensor objectScore)
    {
        ImageIndex = imageIndex; Height = height; Width = width; IsBatched = batched;
        Masks = masks.DetachFromDisposeScope();
        MaskLogits = maskLogits?.DetachFromDisposeScope();
        IouScores = iou.DetachFromDisposeScope();
        LowResLogits = lowRes.DetachFromDisposeScope();
        ObjectScoreLogits = objectScore.DetachFromDisposeScope();
    }

    /// <summary>Number of prompt sets (boxes of a batched call; 1 otherwise).</summary>
    public int NumPrompts => IsBatched ? (int)IouScores.shape[0] : 1;
    /// <summary>Masks per prompt (3 with multimask output, else 1).</summary>
    public int NumMasks => (int)IouScores.shape[^1];

    private void CheckPrompt(int prompt)
    {
        if (prompt < 0 || prompt >= NumPrompts) throw new Sam3PromptException($"prompt index {prompt} is out of range [0, {NumPrompts})");
    }

    /// <summary>The predicted IoU of each mask of prompt <paramref name="prompt"/>.</summary>
    public float[] IouArray(int prompt = 0)
    {
        CheckPrompt(prompt);
        using var scope = NewDisposeScope();
        var row = IsBatched ? IouScores[prompt] : IouScores;
        return row.to(ScalarType.Float32).contiguous().data<float>().ToArray();
    }

    /// <summary>Index of the mask with the highest predicted IoU (the first on ties, as numpy's argmax).</summary>
    public int BestIndex(int prompt = 0)
    {
        var iou = IouArray(prompt);
        int best = 0;
        for (int i = 1; i < iou.Length; i++) if (iou[i] > iou[best]) best = i;
        return best;
    }

    /// <summary>The best mask, bool [H,W] (a new tensor, owned by the caller / its dispose scope).</summary>
    public Tensor BestMask(int prompt = 0)
    {
        int best = BestIndex(prompt);
        using var scope = NewDisposeScope();
        return (IsBatched ? Masks[prompt, best] : Masks[best]).clone().MoveToOuterDisposeScope();
    }

    /// <summary>The best mask's low-res logits [1,4N,4N], ready to be a <see cref="InteractivePrompt.MaskInput"/> (a new tensor, owned by the caller).</summary>
    public Tensor BestLowResLogits(int prompt = 0)
    {
        int best = BestIndex(prompt);
        using var scope = NewDisposeScope();
        return (IsBatched ? LowResLogits[prompt, best] : LowResLogits[best]).unsqueeze(0).clone().MoveToOuterDisposeScope();
    }

    /// <summary>Mask <paramref name="index"/> of prompt <paramref name="prompt"/> as a row-major 0/1 byte array of Height×Width.</summary>
    public byte[] MaskBytes(int index, int prompt = 0)
    {
        CheckPrompt(prompt);
        if (index < 0 || index >= NumMasks) throw new Sam3PromptException($"mask index {index} is out of range [0, {NumMasks})");
        using var scope = NewDisposeScope();
        var m = IsBatched ? Masks[prompt, index] : Masks[index];
        return m.to(ScalarType.Byte).contiguous().data<byte>().ToArray();
    }

    public void Dispose()
    {
        Masks.Dispose();
        MaskLogits?.Dispose();
        IouScores.Dispose();
        LowResLogits.Dispose();
        ObjectScoreLogits.Dispose();
    }

    /// <summary>Copies into the public immutable form.</summary>
    public InteractivePrediction ToPublic()
    {
        int n = NumPrompts, c = NumMasks;
        var masks = new BinaryMask[n][];
        var iou = new float[n][];
        var low = new MaskLogits[n][];
        var up = MaskLogits is null ? null : new MaskLogits[n][];
        var obj = new float[n];
        using var scope = NewDisposeScope();
        var objAll = ObjectScoreLogits.to(ScalarType.Float32).contiguous().data<float>().ToArray();
        int lowSide = (int)LowResLogits.shape[^1];
        for (int p = 0; p < n; p++)
        {
            iou[p] = IouArray(p);
            obj[p] = objAll[IsBatched ? p * (objAll.Length / n) : 0];
            masks[p] = new BinaryMask[c];
            low[p] = new MaskLogits[c];
            if (up is not null) up[p] = new MaskLogits[c];
            for (int k = 0; k < c; k++)
            {
                masks[p][k] = BinaryMask.FromBytes(MaskBytes(k, p), Width, Height);
                var l = IsBatched ? LowResLogits[p, k] : LowResLogits[k];
                low[p][k] = new MaskLogits(lowSide, lowSide, l.contiguous().data<float>().ToArray());
                if (up is not null)
                {
                    var u = IsBatched ? MaskLogits![p, k] : MaskLogits![k];
                    up[p][k] = new MaskLogits(Width, Height, u.to(ScalarType.Float32).contiguous().data<float>().ToArray());
                }
            }
        }
        return new InteractivePrediction(ImageIndex, Width, Height, IsBatched, masks, iou, low, up, obj);
    }
}
