using Sam3.Torch.Batched;
using Sam3.Torch.Processing;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Data;

/// <summary>
/// One step of a datapoint pipeline (upstream's <c>*API</c> transforms of sam3/train/transforms). Randomness comes
/// from the <see cref="Random"/> passed in (System.Random, seeded by the caller): the same seed gives the same
/// samples, but not the same draws as upstream's Python <c>random</c> / <c>torch.randn</c>.
/// </summary>
internal interface IDatapointTransform
{
    Datapoint Apply(Datapoint dp, Random rng);
}

/// <summary>Applies transforms in order (upstream <c>ComposeAPI</c>).</summary>
internal sealed class ComposeTransforms(IReadOnlyList<IDatapointTransform> transforms) : IDatapointTransform
{
    public IReadOnlyList<IDatapointTransform> Transforms { get; } = transforms;

    public Datapoint Apply(Datapoint dp, Random rng)
    {
        foreach (var t in Transforms) dp = t.Apply(dp, rng);
        return dp;
    }
}

/// <summary>
/// Decodes every object's RLE into a uint8 [H, W] mask (upstream <c>DecodeRle</c>); an empty RLE becomes the
/// object's box filled with ones (upstream: "empty mask found, approximating from box").
/// </summary>
internal sealed class DecodeRle : IDatapointTransform
{
    public Datapoint Apply(Datapoint dp, Random rng)
    {
        foreach (var img in dp.Images)
        {
            var (w, h) = img.PixelSize;
            foreach (var obj in img.Objects)
            {
                if (obj.SegmentRle is not { } rle) continue;
                if (rle.Height != h || rle.Width != w)
                    throw new InvalidOperationException($"mask of size [{rle.Height}, {rle.Width}] on an image of size [{h}, {w}]");
                Tensor seg;
                if (rle.Area() == 0)
                {
                    seg = zeros(h, w, ScalarType.Byte);
                    int x1 = (int)obj.Bbox[0], y1 = (int)obj.Bbox[1], x2 = (int)obj.Bbox[2], y2 = (int)obj.Bbox[3];
                    int yEnd = Math.Min(h, Math.Max(y2, y1 + 1)), xEnd = Math.Min(w, Math.Max(x1 + 1, x2));
                    if (yEnd > y1 && xEnd > x1) seg[TensorIndex.Slice(y1, yEnd), TensorIndex.Slice(x1, xEnd)] = 1;
                }
                else seg = tensor(rle.Decode(), [h, w], ScalarType.Byte);
                obj.Segment?.Dispose();
                obj.Segment = seg;
                obj.SegmentRle = null;
            }
        }
        return dp;
    }
}

/// <summary>
/// Adds Gaussian noise to the input boxes of geometric queries (upstream <c>RandomizeInputBbox</c> / <c>noise_box</c>):
/// noise ~ std·N(0,1)·(w, h, w, h), clamped to ±max pixels, box clamped to the image, kept only if its area stays
/// above <see cref="MinimumBoxArea"/>. Text-only queries are untouched.
/// </summary>
internal sealed class RandomizeInputBbox(double boxNoiseStd, double? boxNoiseMax, double minimumBoxArea = 0) : IDatapointTransform
{
    public double BoxNoiseStd { get; } = boxNoiseStd;
    public double? BoxNoiseMax { get; } = boxNoiseMax;
    public double MinimumBoxArea { get; } = minimumBoxArea;

    public Datapoint Apply(Datapoint dp, Random rng)
    {
        foreach (var q in dp.FindQueries)
        {
            if (q.InputBbox == null) continue;
            var (w, h) = dp.Images[q.ImageId].PixelSize;
            for (int b = 0; b < q.InputBbox.Length; b++) q.InputBbox[b] = NoiseBox(q.InputBbox[b], h, w, rng);
        }
        return dp;
    }

    private float[] NoiseBox(float[] box, int h, int w, Random rng)
    {
        if (BoxNoiseStd <= 0) return box;
        float bw = box[2] - box[0], bh = box[3] - box[1];
        float[] scale = [bw, bh, bw, bh];
        float[] clampTo = [w, h, w, h];
        var result = new float[4];
        for (int k = 0; k < 4; k++)
        {
            float noise = (float)BoxNoiseStd * StandardNormal(rng) * scale[k];
            if (BoxNoiseMax is { } max) noise = Math.Clamp(noise, (float)-max, (float)max);
            result[k] = Math.Min(Math.Max(box[k] + noise, 0f), clampTo[k]);
        }
        if ((result[2] - result[0]) * (result[3] - result[1]) <= MinimumBoxArea) return box;
        return result;
    }

    /// <summary>Box–Muller from two uniform draws.</summary>
    internal static float StandardNormal(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2));
    }
}

/// <summary>
/// Resizes every image to a size drawn from <see cref="Sizes"/> (upstream <c>RandomResizeAPI</c> + <c>resize</c>):
/// square (S × S) or shorter side = S with the longer side capped at <see cref="MaxSize"/>; the image with PIL's
/// bilinear filter (<see cref="PilResize"/>, bilinear), boxes scaled by the float32 ratios, masks with torchvision's
/// antialiased bilinear resize + round (<see cref="MaskResize"/>). One draw for all images when consistent.
/// </summary>
internal sealed class RandomResize(IReadOnlyList<int> sizes, int? maxSize, bool square, bool consistentTransform) : IDatapointTransform
{
    public IReadOnlyList<int> Sizes { get; } = sizes.Count > 0 ? sizes : throw new ArgumentException("no resize sizes", nameof(sizes));
    public int? MaxSize { get; } = maxSize;
    public bool Square { get; } = square;
    public bool ConsistentTransform { get; } = consistentTransform;

    public Datapoint Apply(Datapoint dp, Random rng)
    {
        int size = 0;
        if (ConsistentTransform) size = Sizes[rng.Next(Sizes.Count)];
        for (int i = 0; i < dp.Images.Count; i++)
        {
            if (!ConsistentTransform) size = Sizes[rng.Next(Sizes.Count)];
            ResizeImage(dp, i, size, MaxSize, Square);
        }
        return dp;
    }

    /// <summary>upstream <c>get_size_with_aspect_ratio</c>: (h, w) with the shorter side <paramref name="size"/> and the longer at most <paramref name="maxSize"/>.</summary>
    public static (int Height, int Width) SizeWithAspectRatio(int w, int h, double size, int? maxSize)
    {
        if (maxSize is { } max)
        {
            double minOrig = Math.Min(w, h), maxOrig = Math.Max(w, h);
            if (maxOrig / minOrig * size > max) size = max * minOrig / maxOrig;
        }
        if ((w <= h && w == size) || (h <= w && h == size)) return (h, w);
        int ow, oh;
        if (w < h) { ow = (int)Math.Round(size); oh = (int)Math.Round(size * h / w); }
        else { oh = (int)Math.Round(size); ow = (int)Math.Round(size * w / h); }
        return (oh, ow);
    }

    /// <summary>upstream <c>resize(datapoint, index, size, max_size, square)</c> on an image still in RGB form.</summary>
    public static void ResizeImage(Datapoint dp, int index, int size, int? maxSize, bool square)
    {
        var img = dp.Images[index];
        var rgb = img.Rgb ?? throw new InvalidOperationException("RandomResize works on RGB images (before ToTensor)");
        var (outH, outW) = square ? (size, size) : SizeWithAspectRatio(rgb.Width, rgb.Height, size, maxSize);
        int oldW = rgb.Width, oldH = rgb.Height;
        if (outW != oldW || outH != oldH)
            img.Rgb = new RgbImage(outW, outH, PilResize.ResizeRgb(rgb.Data, oldW, oldH, outW, outH, filter: PilResize.Filter.Bilinear));
        double ratioW = (double)outW / oldW, ratioH = (double)outH / oldH;
        float rw = (float)ratioW, rh = (float)ratioH;
        foreach (var obj in img.Objects)
        {
            obj.Bbox = [obj.Bbox[0] * rw, obj.Bbox[1] * rh, obj.Bbox[2] * rw, obj.Bbox[3] * rh];
            obj.Area *= ratioW * ratioH;
            if (obj.Segment is { } seg)
            {
                obj.Segment = MaskResize.Resize(seg, outH, outW);
                seg.Dispose();
            }
        }
        foreach (var q in dp.FindQueries)
            if (q.ImageId == index && q.InputBbox != null)
                q.InputBbox = q.InputBbox.Select(b => new[] { b[0] * rw, b[1] * rh, b[2] * rw, b[3] * rh }).ToArray();
        img.Size = (outH, outW);
    }
}

/// <summary>
/// Pads every image to <see cref="Size"/> × <see cref="Size"/> with zeros (upstream <c>PadToSizeAPI</c> + <c>pad</c>):
/// at a random offset (left ∈ [0, size − w], top ∈ [0, size − h]) or at the bottom right; boxes shifted by the offset,
/// masks padded alike.
/// </summary>
internal sealed class PadToSize(int size, bool consistentTransform, bool bottomRight = false) : IDatapointTransform
{
    public int Size { get; } = size;
    public bool ConsistentTransform { get; } = consistentTransform;
    public bool BottomRight { get; } = bottomRight;

    public Datapoint Apply(Datapoint dp, Random rng)
    {
        (int L, int T, int R, int B) padding = default;
        bool drawn = false;
        for (int i = 0; i < dp.Images.Count; i++)
        {
            var (w, h) = dp.Images[i].PixelSize;
            if (!ConsistentTransform || !drawn)
            {
                int padX = Size - w, padY = Size - h;
                if (padX < 0 || padY < 0) throw new InvalidOperationException($"PadToSize({Size}): image {w}x{h} is larger than the pad size");
                if (BottomRight) padding = (0, 0, padX, padY);
                else
                {
                    int left = rng.Next(padX + 1), top = rng.Next(padY + 1);
                    padding = (left, top, padX - left, padY - top);
                }
                drawn = true;
            }
            Pad(dp, i, padding, shiftBoxes: !BottomRight);
        }
        return dp;
    }

    /// <summary>upstream <c>pad</c>: (left, top, right, bottom) zeros around the image and its masks; boxes moved by (left, top) when <paramref name="shiftBoxes"/> (the 4-value form).</summary>
    public static void Pad(Datapoint dp, int index, (int L, int T, int R, int B) p, bool shiftBoxes)
    {
        var img = dp.Images[index];
        var rgb = img.Rgb ?? throw new InvalidOperationException("PadToSize works on RGB images (before ToTensor)");
        int w = rgb.Width, h = rgb.Height, nw = w + p.L + p.R, nh = h + p.T + p.B;
        if (nw != w || nh != h)
        {
            var data = new byte[(long)nw * nh * 3];
            for (int y = 0; y < h; y++)
                Buffer.BlockCopy(rgb.Data, y * w * 3, data, ((y + p.T) * nw + p.L) * 3, w * 3);
            img.Rgb = new RgbImage(nw, nh, data);
        }
        var (sh, sw) = img.Size;
        img.Size = (sh + p.T + p.B, sw + p.L + p.R);
        foreach (var obj in img.Objects)
        {
            if (shiftBoxes) obj.Bbox = [obj.Bbox[0] + p.L, obj.Bbox[1] + p.T, obj.Bbox[2] + p.L, obj.Bbox[3] + p.T];
            if (obj.Segment is { } seg && (nw != w || nh != h))
            {
                obj.Segment = nn.functional.pad(seg, [p.L, p.R, p.T, p.B], PaddingModes.Constant, 0);
                seg.Dispose();
            }
        }
        if (shiftBoxes)
            foreach (var q in dp.FindQueries)
                if (q.ImageId == index && q.InputBbox != null)
                    q.InputBbox = q.InputBbox.Select(b => new[] { b[0] + p.L, b[1] + p.T, b[2] + p.L, b[3] + p.T }).ToArray();
    }
}

/// <summary>RGB bytes → float32 [3, H, W] in [0, 1] (upstream <c>ToTensorAPI</c> = torchvision <c>to_tensor</c>: <c>u8.float().div(255)</c>).</summary>
internal sealed class ToTensorTransform : IDatapointTransform
{
    public Datapoint Apply(Datapoint dp, Random rng)
    {
        foreach (var img in dp.Images)
        {
            if (img.Rgb is not { } rgb) continue;
            using var scope = NewDisposeScope();
            var t = tensor(rgb.Data, [rgb.Height, rgb.Width, 3], ScalarType.Byte).permute(2, 0, 1).contiguous().to(ScalarType.Float32).div(255f);
            img.Data?.Dispose();
            img.Data = t.MoveToOuterDisposeScope();
            img.Rgb = null;
        }
        return dp;
    }
}

/// <summary>
/// <c>(x − mean) / std</c> per channel, and boxes xyxy pixels → cx, cy, w, h normalised by the padded image size
/// (upstream <c>NormalizeAPI</c>), for the objects and the input boxes.
/// </summary>
internal sealed class NormalizeTransform(float[] mean, float[] std) : IDatapointTransform
{
    public float[] Mean { get; } = mean.Length == 3 ? mean : throw new ArgumentException("mean needs 3 values", nameof(mean));
    public float[] Std { get; } = std.Length == 3 ? std : throw new ArgumentException("std needs 3 values", nameof(std));

    public Datapoint Apply(Datapoint dp, Random rng)
    {
        foreach (var img in dp.Images)
        {
            var data = img.Data ?? throw new InvalidOperationException("NormalizeTransform needs ToTensor first");
            using (NewDisposeScope())
            {
                var m = tensor(Mean).view(3, 1, 1);
                var s = tensor(Std).view(3, 1, 1);
                img.Data = data.sub(m).div(s).MoveToOuterDisposeScope();
            }
            data.Dispose();
            int curH = (int)img.Data.shape[^2], curW = (int)img.Data.shape[^1];
            foreach (var obj in img.Objects) obj.Bbox = ToNormalizedCxcywh(obj.Bbox, curW, curH);
        }
        foreach (var q in dp.FindQueries)
        {
            if (q.InputBbox == null) continue;
            var d = dp.Images[q.ImageId].Data!;
            int curH = (int)d.shape[^2], curW = (int)d.shape[^1];
            q.InputBbox = q.InputBbox.Select(b => ToNormalizedCxcywh(b, curW, curH)).ToArray();
        }
        return dp;
    }

    /// <summary><c>box_xyxy_to_cxcywh(b) / (W, H, W, H)</c> in float32.</summary>
    public static float[] ToNormalizedCxcywh(float[] b, int w, int h)
    {
        float fw = w, fh = h;
        return [(b[0] + b[2]) / 2f / fw, (b[1] + b[3]) / 2f / fh, (b[2] - b[0]) / fw, (b[3] - b[1]) / fh];
    }
}
