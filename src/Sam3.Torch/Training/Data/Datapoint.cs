using Sam3.Torch.Processing;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Data;

/// <summary>
/// One training sample, the counterpart of upstream's <c>Datapoint</c> (sam3/train/data/sam3_image_dataset.py): the
/// images and the find queries that refer to their objects. Mutable on purpose: the transforms rewrite it in place,
/// as upstream's do. Owns the tensors it holds (image data after <c>ToTensor</c>, decoded masks).
/// </summary>
internal sealed class Datapoint : IDisposable
{
    public List<DatapointImage> Images { get; set; } = [];
    public List<DatapointQuery> FindQueries { get; set; } = [];

    public void Dispose()
    {
        foreach (var img in Images) img.Dispose();
    }
}

/// <summary>
/// One image of a <see cref="Datapoint"/> (upstream <c>Image</c>): the pixels, either still as 8-bit RGB
/// (<see cref="Rgb"/>, HWC, the PIL stage) or as a float tensor [3, H, W] after <c>ToTensor</c> (<see cref="Data"/>),
/// its objects and its current size.
/// </summary>
internal sealed class DatapointImage : IDisposable
{
    /// <summary>8-bit RGB pixels (the PIL stage); null once converted to <see cref="Data"/>.</summary>
    public RgbImage? Rgb { get; set; }
    /// <summary>float32 [3, H, W] after <c>ToTensorAPI</c> (then normalised in place of the old value).</summary>
    public Tensor? Data { get; set; }
    public List<DatapointObject> Objects { get; set; } = [];
    /// <summary>Current (height, width) (upstream <c>Image.size</c>).</summary>
    public (int Height, int Width) Size { get; set; }

    /// <summary>Width and height of the pixels as they are now (upstream reads <c>img.data.size</c> / <c>shape[-2:]</c>).</summary>
    public (int Width, int Height) PixelSize => Rgb != null ? (Rgb.Width, Rgb.Height)
        : Data is not null ? ((int)Data.shape[^1], (int)Data.shape[^2])
        : throw new InvalidOperationException("image has no pixels");

    public void Dispose()
    {
        Data?.Dispose(); Data = null;
        foreach (var o in Objects) o.Dispose();
    }
}

/// <summary>
/// One annotated object (upstream <c>Object</c>). <see cref="Bbox"/> is float32 xyxy in pixels until
/// <c>NormalizeAPI</c>, then normalised cx, cy, w, h. <see cref="Area"/> keeps upstream's bookkeeping (the loader's
/// normalised box area, multiplied by the resize ratios), which only feeds <c>FilterEmptyTargets</c>.
/// </summary>
internal sealed class DatapointObject : IDisposable
{
    public required float[] Bbox { get; set; }
    public double Area { get; set; }
    public int ObjectId { get; set; } = -1;
    public bool IsCrowd { get; set; }
    /// <summary>The still-encoded mask (before <c>DecodeRle</c>).</summary>
    public CocoRle? SegmentRle { get; set; }
    /// <summary>uint8 [H, W] 0/1 mask after <c>DecodeRle</c>.</summary>
    public Tensor? Segment { get; set; }

    public bool HasSegment => SegmentRle != null || Segment is not null;

    public void Dispose() { Segment?.Dispose(); Segment = null; }
}

/// <summary>
/// One find query (upstream <c>FindQueryLoaded</c>): a text, the image it looks at, the indices of the objects of that
/// image it must find (empty = a negative query), optional input boxes (xyxy pixels, then normalised cxcywh).
/// </summary>
internal sealed class DatapointQuery
{
    public required string QueryText { get; set; }
    public int ImageId { get; set; }
    public List<int> ObjectIdsOutput { get; set; } = [];
    public bool IsExhaustive { get; set; } = true;
    public int QueryProcessingOrder { get; set; }
    /// <summary>[K][4] input boxes, or null.</summary>
    public float[][]? InputBbox { get; set; }
    /// <summary>[K] labels of the input boxes (1 = positive), or null.</summary>
    public long[]? InputBboxLabel { get; set; }
    /// <summary>Category id of the source annotation file (upstream <c>inference_metadata.original_category_id</c>).</summary>
    public long OriginalCategoryId { get; set; } = -1;
    /// <summary>Image id of the source annotation file (upstream <c>coco_image_id</c>; -1 in training as upstream).</summary>
    public long CocoImageId { get; set; } = -1;
    /// <summary>(height, width) of the image as loaded.</summary>
    public (int Height, int Width) OriginalSize { get; set; }
}
