using System.Collections;
using Sam3.Torch.Visualization;

namespace Sam3.Torch;

/// <summary>
/// One detected instance: its score (<c>sigmoid(logit)·sigmoid(presence)</c>), its box in pixels of the original image
/// (xyxy, not clamped to the image, as upstream) and its mask at the original resolution. Immutable; the caller owns it.
/// </summary>
public sealed class Detection
{
    internal Detection(int index, int queryIndex, float score, Box box, BinaryMask mask)
    {
        Index = index; QueryIndex = queryIndex; Score = score; Box = box; Mask = mask;
    }

    /// <summary>Position in <see cref="ImageDetections"/> (query order).</summary>
    public int Index { get; }
    /// <summary>The decoder query that produced it.</summary>
    public int QueryIndex { get; }
    /// <summary>Confidence in [0, 1].</summary>
    public float Score { get; }
    /// <summary>Box, xyxy in pixels of the original image; <c>Box.ToNormalized(w, h)</c> or <c>Box.As(BoxFormat.Xywh)</c> for other spaces.</summary>
    public Box Box { get; }
    /// <summary>Mask at the original resolution (mask probability &gt; 0.5).</summary>
    public BinaryMask Mask { get; }

    /// <summary>The mask as COCO compressed RLE (as pycocotools' <c>mask.encode</c>).</summary>
    public CocoRle ToRle() => Mask.StoredRle ?? CocoRle.Encode(Mask.Data, Mask.Height, Mask.Width);

    /// <summary>e.g. <c>#0 0.87 xyxy(...) px, 1234 px²</c>.</summary>
    public override string ToString() => $"#{Index} {Score:F3} {Box}, {Mask.Area()} px²";
}

/// <summary>
/// The detections of one image, in query order (upstream keeps every query above the threshold: no NMS, no top-k).
/// Immutable data the caller owns; nothing to dispose.
/// </summary>
public sealed class ImageDetections : IReadOnlyList<Detection>
{
    private readonly Detection[] _items;

    internal ImageDetections(int imageIndex, int width, int height, Detection[] items)
    {
        ImageIndex = imageIndex; Width = width; Height = height; _items = items;
    }

    /// <summary>Index of the image in the state it was predicted on.</summary>
    public int ImageIndex { get; }
    /// <summary>Original image width.</summary>
    public int Width { get; }
    /// <summary>Original image height.</summary>
    public int Height { get; }
    /// <summary>Number of detections.</summary>
    public int Count => _items.Length;
    /// <summary>Detection <paramref name="index"/>.</summary>
    public Detection this[int index] => (uint)index < (uint)_items.Length ? _items[index]
        : throw new ArgumentOutOfRangeException(nameof(index), index, $"detection index must be in [0, {_items.Length})");

    /// <summary>Scores of all detections.</summary>
    public float[] Scores() => _items.Select(d => d.Score).ToArray();
    /// <summary>Boxes of all detections (xyxy pixels).</summary>
    public Box[] Boxes() => _items.Select(d => d.Box).ToArray();
    /// <summary>Masks of all detections.</summary>
    public IReadOnlyList<BinaryMask> Masks() => _items.Select(d => d.Mask).ToArray();

    public IEnumerator<Detection> GetEnumerator() => ((IEnumerable<Detection>)_items).GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => _items.GetEnumerator();
}
