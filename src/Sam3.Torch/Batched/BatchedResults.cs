using System.Collections;
using Sam3.Torch.Visualization;
using static TorchSharp.torch;

namespace Sam3.Torch.Batched;

/// <summary>
/// One detection of a batched query: score, label (the query's <c>original_category_id</c>), box (xyxy, in pixels of the
/// original image with <see cref="PostProcessImage.UseOriginalSizesBox"/>, else normalised) and, for
/// <see cref="IouType.Segm"/>, the mask (<see cref="Mask"/>, or <see cref="Rle"/> with
/// <see cref="PostProcessImage.ConvertMaskToRle"/>). Immutable.
/// </summary>
public sealed record BatchedDetection(float Score, long Label, Box Box, BinaryMask? Mask, CocoRle? Rle);

/// <summary>
/// Results of a batch keyed by id (upstream's <c>results[coco_image_id]</c>), in first-appearance order; each value is the
/// list of that id's detections. Immutable data the caller owns.
/// </summary>
public sealed class BatchedResults : IReadOnlyDictionary<long, IReadOnlyList<BatchedDetection>>
{
    private readonly Dictionary<long, IReadOnlyList<BatchedDetection>> _byId = new();
    private readonly List<long> _order = new();

    private BatchedResults() { }

    internal static BatchedResults From(BatchedResultTensors tensors)
    {
        var r = new BatchedResults();
        foreach (var (id, t) in tensors)
        {
            var scores = t.ScoreArray();
            var labels = t.LabelArray();
            var boxes = t.BoxArray();
            var space = t.BoxesInPixels ? CoordinateSpace.Pixels : CoordinateSpace.Normalized;
            var items = new BatchedDetection[t.Count];
            for (int k = 0; k < t.Count; k++)
            {
                BinaryMask? mask = null;
                if (t.Masks is { } m)
                {
                    using var scope = NewDisposeScope();
                    mask = BinaryMask.FromTensor(m[k].squeeze(0));
                }
                items[k] = new BatchedDetection(scores[k], labels[k], Box.FromXyxy(boxes[k][0], boxes[k][1], boxes[k][2], boxes[k][3], space),
                    mask, t.MasksRle?[k]);
            }
            r._byId.Add(id, items);
            r._order.Add(id);
        }
        return r;
    }

    /// <summary>The detections of <paramref name="key"/>.</summary>
    public IReadOnlyList<BatchedDetection> this[long key] => _byId.TryGetValue(key, out var d) ? d
        : throw new KeyNotFoundException($"no results for id {key} (have: {string.Join(", ", _order)})");
    public IEnumerable<long> Keys => _order;
    public IEnumerable<IReadOnlyList<BatchedDetection>> Values => _order.Select(k => _byId[k]);
    public int Count => _order.Count;
    public bool ContainsKey(long key) => _byId.ContainsKey(key);
    public bool TryGetValue(long key, out IReadOnlyList<BatchedDetection> value) => _byId.TryGetValue(key, out value!);
    public IEnumerator<KeyValuePair<long, IReadOnlyList<BatchedDetection>>> GetEnumerator() =>
        _order.Select(k => new KeyValuePair<long, IReadOnlyList<BatchedDetection>>(k, _byId[k])).GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
