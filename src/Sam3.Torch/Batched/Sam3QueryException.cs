namespace Sam3.Torch.Batched;

/// <summary>
/// A query of a batch that cannot run: its image does not exist, a box lies outside the image or is degenerate, it has
/// neither text nor boxes, or its result key repeats another query's. The message names the query (its coco_image_id and
/// text); <see cref="CocoImageId"/> gives the key.
/// </summary>
public sealed class Sam3QueryException : Sam3PromptException
{
    public Sam3QueryException(long cocoImageId, string message) : base(message) => CocoImageId = cocoImageId;

    /// <summary>The coco_image_id of the offending query.</summary>
    public long CocoImageId { get; }
}
