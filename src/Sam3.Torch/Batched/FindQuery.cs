namespace Sam3.Torch.Batched;

/// <summary>A box of a query in pixel xyxy of its image (internal form of a <see cref="BoxPrompt"/>).</summary>
internal readonly record struct QueryBox(float X0, float Y0, float X1, float Y1, bool Positive = true);

/// <summary>
/// One "find" query on one image of a <see cref="Datapoint"/> (upstream <c>FindQueryLoaded</c>): a text (a noun phrase),
/// optional boxes with labels (pixel xyxy of the original image, as upstream before the transforms), or both (a text hint
/// with positive and negative boxes). A box-only query uses <see cref="VisualText"/> as its text, as the official
/// notebook does. Point prompts are not taken: the image model ignores them (upstream prints a warning).
/// </summary>
public sealed class FindQuery
{
    /// <summary>The text that upstream's examples give a query that has only boxes.</summary>
    public const string VisualText = "visual";

    /// <param name="queryText">Noun phrase; null or empty with boxes = <see cref="VisualText"/>.</param>
    /// <param name="inferenceMetadata">Result key and original size (see <see cref="InferenceMetadata"/>).</param>
    /// <param name="inputBoxes">Box prompts in any format and space (upstream: pixel xyxy of the original image); may be null or empty.</param>
    /// <param name="imageId">Index of the image in the datapoint's <see cref="Datapoint.Images"/> (upstream <c>image_id</c>).</param>
    public FindQuery(string? queryText, InferenceMetadata inferenceMetadata, IReadOnlyList<BoxPrompt>? inputBoxes = null, int imageId = 0)
    {
        ArgumentNullException.ThrowIfNull(inferenceMetadata);
        InputBoxes = inputBoxes?.ToArray() ?? [];
        QueryText = string.IsNullOrWhiteSpace(queryText) && InputBoxes.Count > 0 ? VisualText : queryText ?? "";
        InferenceMetadata = inferenceMetadata;
        ImageId = imageId;
    }

    /// <summary>The text prompt ("" when none was given and there are no boxes: rejected when the batch is built).</summary>
    public string QueryText { get; }

    /// <summary>Index of the queried image in its datapoint.</summary>
    public int ImageId { get; }

    /// <summary>Box prompts, as given.</summary>
    public IReadOnlyList<BoxPrompt> InputBoxes { get; }

    /// <summary>The boxes as pixel xyxy of an image of the given size.</summary>
    internal QueryBox[] PixelBoxes(int width, int height) => InputBoxes.Select(b =>
        b.Box.IsFinite && width > 0 && height > 0 && b.Box.ToPixels(width, height).ToXyxy() is var (x0, y0, x1, y1)
            ? new QueryBox(x0, y0, x1, y1, b.Positive)
            : new QueryBox(float.NaN, float.NaN, float.NaN, float.NaN, b.Positive)).ToArray();

    /// <summary>Result key and original size.</summary>
    public InferenceMetadata InferenceMetadata { get; }

    /// <summary>How errors name this query: its coco_image_id and text.</summary>
    public override string ToString() => $"query coco_image_id={InferenceMetadata.CocoImageId} text='{QueryText}'"
        + (InputBoxes.Count > 0 ? $" with {InputBoxes.Count} box(es)" : "");
}
