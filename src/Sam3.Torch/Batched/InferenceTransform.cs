using Sam3.Torch.Config;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Batched;

/// <summary>
/// The inference transform of the batched API, upstream's
/// <c>ComposeAPI([RandomResizeAPI(sizes=S, max_size=S, square=True), ToTensorAPI(), NormalizeAPI(mean, std)])</c>:
/// <list type="number">
/// <item>RandomResizeAPI: every image squashed to S×S with Pillow's bilinear resize (<see cref="Processing.PilResize"/>, bilinear);
/// the query boxes (pixel xyxy) are multiplied by float32 (S/W, S/H, S/W, S/H), the ratios computed in double.</item>
/// <item>ToTensorAPI: float32(u8) / 255 (a true division), HWC → CHW.</item>
/// <item>NormalizeAPI: (x − mean) / std per channel; the boxes become cxcywh ((x0+x1)/2, (y0+y1)/2, x1−x0, y1−y0) divided
/// by float32 (S, S, S, S): normalised cxcywh.</item>
/// </list>
/// Every step is float32, in upstream's operation order.
/// </summary>
internal sealed class InferenceTransform
{
    private readonly float[] _mean;
    private readonly float[] _std;

    public InferenceTransform(Sam3Config config)
    {
        ArgumentNullException.ThrowIfNull(config);
        Size = config.ImageSize;
        _mean = config.ImageMean.Select(v => (float)v).ToArray();
        _std = config.ImageStd.Select(v => (float)v).ToArray();
        if (_mean.Length != 3 || _std.Length != 3) throw new Sam3ConfigException("image mean and std need 3 values (R, G, B)");
    }

    /// <summary>S: the side of the square model input.</summary>
    public int Size { get; }

    public IReadOnlyList<float> Mean => _mean;
    public IReadOnlyList<float> Std => _std;

    /// <summary>RandomResizeAPI on one image: uint8 [S,S,3] bytes.</summary>
    public byte[] Resize(RgbImage image) => Processing.PilResize.ResizeRgb(image.Data, image.Width, image.Height, Size, Size, filter: Processing.PilResize.Filter.Bilinear);

    /// <summary>ToTensorAPI + NormalizeAPI on resized uint8 HWC bytes: float32 [3,S,S] (in the caller's dispose scope).</summary>
    public Tensor ToNormalizedTensor(byte[] resizedHwc)
    {
        using var scope = NewDisposeScope();
        var u8 = torch.tensor(resizedHwc, dtype: ScalarType.Byte).view(Size, Size, 3).permute(2, 0, 1).contiguous();
        var x = u8.to(ScalarType.Float32).div(255.0);
        var mean = torch.tensor(_mean).view(3, 1, 1);
        var std = torch.tensor(_std).view(3, 1, 1);
        return x.sub(mean).div(std).MoveToOuterDisposeScope();
    }

    /// <summary>RandomResizeAPI + NormalizeAPI on one pixel xyxy box of an image of <paramref name="width"/>×<paramref name="height"/>:
    /// normalised cxcywh, float32 as upstream computes it.</summary>
    public (float Cx, float Cy, float W, float H) TransformBox(QueryBox box, int width, int height)
    {
        float rw = (float)((double)Size / width), rh = (float)((double)Size / height);
        float x0 = box.X0 * rw, y0 = box.Y0 * rh, x1 = box.X1 * rw, y1 = box.Y1 * rh;
        float s = Size;
        return ((x0 + x1) / 2f / s, (y0 + y1) / 2f / s, (x1 - x0) / s, (y1 - y0) / s);
    }
}
