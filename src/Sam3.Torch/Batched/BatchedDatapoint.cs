using Sam3.Torch.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Batched;

/// <summary>
/// The collated batch (upstream <c>BatchedDatapoint</c> of <c>collate_fn_api</c>, one stage): <see cref="ImgBatch"/>
/// float32 [N,3,S,S] (every image of every datapoint, in order), <see cref="FindTextBatch"/> (unique query texts in order
/// of first appearance) and per query (Q of them, datapoint order): <see cref="ImgIds"/> / <see cref="TextIds"/> int64 [Q],
/// <see cref="InputBoxes"/> [Nb,Q,4] normalised cxcywh (seq-first, zero-padded), <see cref="InputBoxesLabel"/> int64 [Nb,Q]
/// (1 = positive, 0 = negative or padding), <see cref="InputBoxesMask"/> bool [Q,Nb] (True = padding), and the
/// <see cref="FindMetadatas"/>. Owns its tensors (CPU).
/// </summary>
internal sealed class BatchedDatapoint : IDisposable
{
    public required Tensor ImgBatch { get; init; }
    public required IReadOnlyList<string> FindTextBatch { get; init; }
    public required Tensor ImgIds { get; init; }
    public required Tensor TextIds { get; init; }
    public required Tensor InputBoxes { get; init; }
    public required Tensor InputBoxesLabel { get; init; }
    public required Tensor InputBoxesMask { get; init; }
    public required IReadOnlyList<InferenceMetadata> FindMetadatas { get; init; }
    public required IReadOnlyList<FindQuery> Queries { get; init; }
    /// <summary>The resized uint8 images [S,S,3] (HWC bytes), one per entry of <see cref="ImgBatch"/>.</summary>
    public required IReadOnlyList<byte[]> ResizedImages { get; init; }

    public int NumQueries => FindMetadatas.Count;

    /// <summary>The metadata as the tensors collate_fn_api makes of them (int64, original_category_id int32, original_size [Q,2]).</summary>
    public Dictionary<string, Tensor> MetadataTensors()
    {
        var m = FindMetadatas;
        return new Dictionary<string, Tensor>
        {
            ["coco_image_id"] = torch.tensor(m.Select(x => x.CocoImageId).ToArray()),
            ["original_image_id"] = torch.tensor(m.Select(x => x.OriginalImageId).ToArray()),
            ["original_category_id"] = torch.tensor(m.Select(x => x.OriginalCategoryId).ToArray()),
            ["original_size"] = torch.tensor(m.SelectMany(x => new long[] { x.OriginalHeight, x.OriginalWidth }).ToArray()).view(-1, 2),
            ["object_id"] = torch.tensor(m.Select(x => x.ObjectId).ToArray()),
            ["frame_index"] = torch.tensor(m.Select(x => x.FrameIndex).ToArray()),
        };
    }

    /// <summary>
    /// Validates, transforms (<see cref="InferenceTransform"/>) and collates datapoints (collate_fn_api). Errors name the
    /// query: <see cref="Sam3QueryException"/>.
    /// </summary>
    /// <param name="allowRepeatedIds">Whether several queries may share a coco_image_id (upstream then concatenates their
    /// results); false = an error.</param>
    /// <param name="repeatedIdsNeedSameSize">Whether queries sharing an id must have the same original size (their masks
    /// are concatenated).</param>
    /// <param name="datapoints">The datapoints, in batch order.</param>
    /// <param name="transform">The inference transform.</param>
    public static BatchedDatapoint Collate(IReadOnlyList<Datapoint> datapoints, InferenceTransform transform, bool allowRepeatedIds,
        bool repeatedIdsNeedSameSize = false)
    {
        ArgumentNullException.ThrowIfNull(datapoints);
        if (datapoints.Count == 0) throw new Sam3ImageException("the batch has no datapoint");
        Validate(datapoints, allowRepeatedIds, repeatedIdsNeedSameSize);
        using var scope = NewDisposeScope();
        var resized = new List<byte[]>();
        var images = new List<Tensor>();
        var texts = new List<string>();
        var imgIds = new List<long>();
        var textIds = new List<long>();
        var boxes = new List<(float, float, float, float, bool)[]>();
        var metas = new List<InferenceMetadata>();
        var queries = new List<FindQuery>();
        int offset = 0;
        foreach (var dp in datapoints)
        {
            foreach (var img in dp.Images)
            {
                var r = transform.Resize(img);
                resized.Add(r);
                images.Add(transform.ToNormalizedTensor(r));
            }
            foreach (var q in dp.FindQueries)
            {
                imgIds.Add(q.ImageId + offset);
                int t = texts.IndexOf(q.QueryText);
                if (t < 0) { texts.Add(q.QueryText); t = texts.Count - 1; }
                textIds.Add(t);
                var img = dp.Images[q.ImageId];
                boxes.Add(q.PixelBoxes(img.Width, img.Height).Select(b =>
                {
                    var (cx, cy, w, h) = transform.TransformBox(b, img.Width, img.Height);
                    return (cx, cy, w, h, b.Positive);
                }).ToArray());
                metas.Add(q.InferenceMetadata);
                queries.Add(q);
            }
            offset += dp.Images.Count;
        }
        if (queries.Count == 0) throw new Sam3PromptException("the batch has no query");
        int nq = queries.Count, nb = boxes.Max(b => b.Length);
        var boxData = new float[nb * nq * 4];
        var labelData = new long[nb * nq];
        var maskData = new bool[nq * nb];
        for (int q = 0; q < nq; q++)
            for (int j = 0; j < nb; j++)
            {
                if (j < boxes[q].Length)
                {
                    var (cx, cy, w, h, pos) = boxes[q][j];
                    int o = (j * nq + q) * 4;
                    boxData[o] = cx; boxData[o + 1] = cy; boxData[o + 2] = w; boxData[o + 3] = h;
                    labelData[j * nq + q] = pos ? 1 : 0;
                }
                else maskData[q * nb + j] = true;
            }
        var batch = new BatchedDatapoint
        {
            ImgBatch = torch.stack(images, 0).DetachFromDisposeScope(),
            FindTextBatch = texts,
            ImgIds = torch.tensor(imgIds.ToArray()).DetachFromDisposeScope(),
            TextIds = torch.tensor(textIds.ToArray()).DetachFromDisposeScope(),
            InputBoxes = torch.tensor(boxData).view(nb, nq, 4).DetachFromDisposeScope(),
            InputBoxesLabel = torch.tensor(labelData).view(nb, nq).DetachFromDisposeScope(),
            InputBoxesMask = torch.tensor(maskData).view(nq, nb).DetachFromDisposeScope(),
            FindMetadatas = metas,
            Queries = queries,
            ResizedImages = resized,
        };
        return batch;
    }

    /// <summary>The checks that name a bad query (before any image is transformed).</summary>
    internal static void Validate(IReadOnlyList<Datapoint> datapoints, bool allowRepeatedIds, bool repeatedIdsNeedSameSize = false)
    {
        var seen = new Dictionary<long, FindQuery>();
        for (int d = 0; d < datapoints.Count; d++)
        {
            var dp = datapoints[d] ?? throw new Sam3ImageException($"datapoint {d} is null");
            for (int i = 0; i < dp.Images.Count; i++)
                if (dp.Images[i] is null) throw new Sam3ImageException($"datapoint {d}: image {i} is null");
            foreach (var q in dp.FindQueries)
            {
                if (q is null) throw new Sam3PromptException($"datapoint {d} has a null query");
                long id = q.InferenceMetadata.CocoImageId;
                if (q.ImageId < 0 || q.ImageId >= dp.Images.Count)
                    throw new Sam3QueryException(id, $"{q}: image {q.ImageId} does not exist (datapoint {d} has {dp.Images.Count} image(s))");
                var img = dp.Images[q.ImageId];
                var meta = q.InferenceMetadata;
                if (meta.OriginalHeight <= 0 || meta.OriginalWidth <= 0)
                    throw new Sam3QueryException(id, $"{q}: original size {meta.OriginalWidth}x{meta.OriginalHeight} is not positive");
                if (string.IsNullOrWhiteSpace(q.QueryText) && q.InputBoxes.Count == 0)
                    throw new Sam3QueryException(id, $"{q}: empty query text and no boxes (give a text, boxes, or both)");
                foreach (var b in q.PixelBoxes(img.Width, img.Height))
                {
                    string box = $"({b.X0}, {b.Y0}, {b.X1}, {b.Y1})";
                    if (!float.IsFinite(b.X0) || !float.IsFinite(b.Y0) || !float.IsFinite(b.X1) || !float.IsFinite(b.Y1))
                        throw new Sam3QueryException(id, $"{q}: box {box} has a non-finite coordinate");
                    if (b.X1 <= b.X0 || b.Y1 <= b.Y0)
                        throw new Sam3QueryException(id, $"{q}: box {box} is empty or inverted (pixel x0,y0,x1,y1 expected)");
                    if (b.X0 < 0 || b.Y0 < 0 || b.X1 > img.Width || b.Y1 > img.Height)
                        throw new Sam3QueryException(id, $"{q}: box {box} lies outside the {img.Width}x{img.Height} image");
                }
                if (!seen.TryAdd(id, q))
                {
                    var first = seen[id];
                    if (!allowRepeatedIds)
                        throw new Sam3QueryException(id, $"{q}: coco_image_id {id} is already used by {first} (ids key the results; use distinct ids)");
                    var m0 = first.InferenceMetadata;
                    if (repeatedIdsNeedSameSize && (m0.OriginalHeight != meta.OriginalHeight || m0.OriginalWidth != meta.OriginalWidth))
                        throw new Sam3QueryException(id, $"{q}: shares id {id} with {first} but the two have different original sizes "
                            + $"({meta.OriginalWidth}x{meta.OriginalHeight} vs {m0.OriginalWidth}x{m0.OriginalHeight}): their masks cannot be merged (use distinct ids or IouType.Bbox)");
                }
            }
        }
    }

    public void Dispose()
    {
        foreach (var t in new[] { ImgBatch, ImgIds, TextIds, InputBoxes, InputBoxesLabel, InputBoxesMask }) t.Dispose();
    }
}
