using Sam3.Torch.Visualization;

namespace Sam3.Torch;

/// <summary>
/// Mask logits of one mask, row-major <see cref="Height"/> × <see cref="Width"/> floats. Low-resolution logits of a
/// previous interactive call (4N × 4N, 288 × 288 for the released model) are what <see cref="InteractivePrompt.MaskInput"/> takes.
/// </summary>
public sealed class MaskLogits
{
    private readonly float[] _data;

    /// <summary>Wraps a copy of <paramref name="rowMajor"/> (Height × Width values).</summary>
    public MaskLogits(int width, int height, ReadOnlySpan<float> rowMajor)
    {
        if (width <= 0) throw new ArgumentOutOfRangeException(nameof(width), width, "width must be positive");
        if (height <= 0) throw new ArgumentOutOfRangeException(nameof(height), height, "height must be positive");
        if (rowMajor.Length != (long)width * height)
            throw new ArgumentException($"{rowMajor.Length} values for a {width}x{height} mask (expected {(long)width * height})", nameof(rowMajor));
        Width = width; Height = height; _data = rowMajor.ToArray();
    }

    internal MaskLogits(int width, int height, float[] owned)
    {
        Width = width; Height = height; _data = owned;
    }

    /// <summary>Columns.</summary>
    public int Width { get; }
    /// <summary>Rows.</summary>
    public int Height { get; }
    /// <summary>The logits, row-major (<c>[y * Width + x]</c>).</summary>
    public ReadOnlySpan<float> Values => _data;
    /// <summary>Logit at pixel (x, y).</summary>
    public float this[int x, int y] => (uint)x < (uint)Width && (uint)y < (uint)Height ? _data[y * Width + x]
        : throw new ArgumentOutOfRangeException(nameof(x), $"pixel ({x},{y}) outside {Width}x{Height}");

    /// <summary>The mask <c>logit &gt; threshold</c>.</summary>
    public BinaryMask ToMask(float threshold = 0f)
    {
        var bytes = new byte[_data.Length];
        for (int i = 0; i < bytes.Length; i++) bytes[i] = _data[i] > threshold ? (byte)1 : (byte)0;
        return BinaryMask.FromBytes(bytes, Width, Height);
    }

    internal float[] Data => _data;
}

/// <summary>
/// Result of <see cref="Sam3InteractivePredictor"/> for one image: per prompt set (one, or one per box of
/// <see cref="Sam3InteractivePredictor.PredictBoxes"/>) its masks at the original resolution (3 with multimask output,
/// else 1), their predicted IoU, their low-resolution logits (to refine with a next call) and the object-score logit.
/// Immutable data the caller owns.
/// </summary>
public sealed class InteractivePrediction
{
    private readonly BinaryMask[][] _masks;
    private readonly float[][] _iou;
    private readonly MaskLogits[][] _lowRes;
    private readonly MaskLogits[][]? _upsampled;
    private readonly float[] _objectScores;

    internal InteractivePrediction(int imageIndex, int width, int height, bool batched, BinaryMask[][] masks, float[][] iou,
        MaskLogits[][] lowRes, MaskLogits[][]? upsampled, float[] objectScores)
    {
        ImageIndex = imageIndex; Width = width; Height = height; IsBatched = batched;
        _masks = masks; _iou = iou; _lowRes = lowRes; _upsampled = upsampled; _objectScores = objectScores;
    }

    /// <summary>Index of the image in its state.</summary>
    public int ImageIndex { get; }
    /// <summary>Original image width.</summary>
    public int Width { get; }
    /// <summary>Original image height.</summary>
    public int Height { get; }
    /// <summary>True for <see cref="Sam3InteractivePredictor.PredictBoxes"/>.</summary>
    public bool IsBatched { get; }
    /// <summary>Number of prompt sets (boxes of a batched call; 1 otherwise).</summary>
    public int PromptCount => _masks.Length;
    /// <summary>Masks per prompt set (3 with multimask output, else 1).</summary>
    public int MaskCount => _iou[0].Length;
    /// <summary>Whether <see cref="UpsampledLogits"/> are available (<see cref="InteractivePrompt.ReturnLogits"/>).</summary>
    public bool HasUpsampledLogits => _upsampled is not null;

    /// <summary>Masks of prompt set <paramref name="prompt"/> (upsampled, hole-filled logits &gt; the mask threshold).</summary>
    public IReadOnlyList<BinaryMask> Masks(int prompt = 0) => _masks[CheckPrompt(prompt)];
    /// <summary>Predicted IoU of each mask of prompt set <paramref name="prompt"/>.</summary>
    public IReadOnlyList<float> IouScores(int prompt = 0) => _iou[CheckPrompt(prompt)];
    /// <summary>Low-resolution logits (clamped to ±32) of mask <paramref name="index"/>, usable as <see cref="InteractivePrompt.MaskInput"/>.</summary>
    public MaskLogits LowResLogits(int index, int prompt = 0) => _lowRes[CheckPrompt(prompt)][CheckMask(index)];
    /// <summary>Logits at the original resolution of mask <paramref name="index"/> (only with <see cref="InteractivePrompt.ReturnLogits"/>).</summary>
    public MaskLogits UpsampledLogits(int index, int prompt = 0) =>
        (_upsampled ?? throw new InvalidOperationException("upsampled logits were not requested (InteractivePrompt.ReturnLogits)"))[CheckPrompt(prompt)][CheckMask(index)];
    /// <summary>Object-score logit (&gt; 0: the heads think an object is present). Not returned by upstream's predict.</summary>
    public float ObjectScoreLogit(int prompt = 0) => _objectScores[CheckPrompt(prompt)];

    /// <summary>Index of the mask with the highest predicted IoU (the first on ties, as numpy's argmax).</summary>
    public int BestIndex(int prompt = 0)
    {
        var iou = _iou[CheckPrompt(prompt)];
        int best = 0;
        for (int i = 1; i < iou.Length; i++) if (iou[i] > iou[best]) best = i;
        return best;
    }

    /// <summary>The mask with the highest predicted IoU.</summary>
    public BinaryMask BestMask(int prompt = 0) => _masks[CheckPrompt(prompt)][BestIndex(prompt)];
    /// <summary>The best mask's low-resolution logits, ready to be a <see cref="InteractivePrompt.MaskInput"/>.</summary>
    public MaskLogits BestLowResLogits(int prompt = 0) => _lowRes[CheckPrompt(prompt)][BestIndex(prompt)];

    private int CheckPrompt(int prompt) => (uint)prompt < (uint)PromptCount ? prompt
        : throw new ArgumentOutOfRangeException(nameof(prompt), prompt, $"prompt index must be in [0, {PromptCount})");
    private int CheckMask(int index) => (uint)index < (uint)MaskCount ? index
        : throw new ArgumentOutOfRangeException(nameof(index), index, $"mask index must be in [0, {MaskCount})");
}
