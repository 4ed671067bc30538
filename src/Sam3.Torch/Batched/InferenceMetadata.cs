namespace Sam3.Torch.Batched;

/// <summary>
/// What the post-processor needs to know about a query (upstream <c>sam3_image_dataset.InferenceMetadata</c>): the id
/// its results are keyed by, the original image's size (boxes and masks are scaled back to it), and ids carried through
/// for evaluators.
/// </summary>
/// <param name="CocoImageId">Key of this query's results (upstream's class-agnostic "image" of the COCO evaluator: one
/// per query).</param>
/// <param name="OriginalImageId">Id of the image in the original dataset (the key instead when
/// <see cref="PostProcessImage.UseOriginalIds"/> is set).</param>
/// <param name="OriginalCategoryId">Category id in the original dataset (the result label when
/// <see cref="PostProcessImage.UseOriginalIds"/> is set).</param>
/// <param name="OriginalHeight">Height of the raw image in pixels.</param>
/// <param name="OriginalWidth">Width of the raw image in pixels.</param>
/// <param name="ObjectId">Id of the object in the media (0 for detection queries).</param>
/// <param name="FrameIndex">Frame index in the media (0 for a single image).</param>
public sealed record InferenceMetadata(long CocoImageId, long OriginalImageId, int OriginalCategoryId, int OriginalHeight, int OriginalWidth,
    long ObjectId = 0, long FrameIndex = 0);
