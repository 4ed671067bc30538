using Sam3.Torch.IO;

namespace Sam3.Torch.Batched;

/// <summary>
/// An image (or several) and the queries on it (upstream <c>sam3_image_dataset.Datapoint</c>). Each image's features are
/// computed once per batch, however many queries it has.
/// </summary>
public sealed class Datapoint
{
    /// <param name="images">The images; queries address them by <see cref="FindQuery.ImageId"/>.</param>
    /// <param name="findQueries">The queries.</param>
    public Datapoint(IReadOnlyList<RgbImage> images, IReadOnlyList<FindQuery> findQueries)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(findQueries);
        Images = images.ToArray();
        FindQueries = findQueries.ToArray();
    }

    /// <summary>One image and its queries (the notebook's layout).</summary>
    public Datapoint(RgbImage image, IReadOnlyList<FindQuery> findQueries) : this([image], findQueries)
    {
    }

    public IReadOnlyList<RgbImage> Images { get; }
    public IReadOnlyList<FindQuery> FindQueries { get; }
}
