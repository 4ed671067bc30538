using System.Collections;
using Sam3.Torch.Processing;
using static TorchSharp.torch;

namespace Sam3.Torch.Batched;

/// <summary>
/// The detections of one result key (a coco_image_id; upstream's dict <c>{scores, labels, boxes, masks | masks_rle}</c>),
/// on the CPU, owned by the caller: <see cref="Scores"/> float32 [K], <see cref="Labels"/> int64 [K], <see cref="Boxes"/>
/// float32 [K,4] xyxy (pixels of the original image when <see cref="PostProcessImage.UseOriginalSizesBox"/>), and for
/// <see cref="IouType.Segm"/> either <see cref="Masks"/> bool [K,1,H,W] or <see cref="MasksRle"/>.
/// </summary>
internal sealed class QueryResultTensors : IDisposable
{
    internal QueryResultTensors(long id, Tensor scores, Tensor labels, Tensor boxes, Tensor? masks, IReadOnlyList<CocoRle>? masksRle)
    {
        Id = id;
        Scores = scores;
        Labels = labels;
        Boxes = boxes;
        Masks = masks;
        MasksRle = masksRle;
    }

    /// <summary>The key: coco_image_id (original_image_id with <see cref="PostProcessImage.UseOriginalIds"/>).</summary>
    public long Id { get; }
    public Tensor Scores { get; }
    public Tensor Labels { get; }
    public Tensor Boxes { get; }
    /// <summary>bool [K,1,H,W], or null (bbox only, or RLE requested).</summary>
    public Tensor? Masks { get; }
    /// <summary>COCO RLE per detection when <see cref="PostProcessImage.ConvertMaskToRle"/>, else null.</summary>
    public IReadOnlyList<CocoRle>? MasksRle { get; }

    public int Count => (int)Scores.shape[0];

    /// <summary>Whether <see cref="Boxes"/> are in pixels of the original image (else normalised).</summary>
    public bool BoxesInPixels { get; init; } = true;

    /// <summary>Scores as an array.</summary>
    public float[] ScoreArray() => Count == 0 ? [] : Scores.data<float>().ToArray();

    /// <summary>Labels as an array.</summary>
    public long[] LabelArray() => Count == 0 ? [] : Labels.data<long>().ToArray();

    /// <summary>Boxes as [K][x0,y0,x1,y1].</summary>
    public float[][] BoxArray()
    {
        if (Count == 0) return [];
        using var contiguous = Boxes.contiguous();
        var flat = contiguous.data<float>().ToArray();
        return Enumerable.Range(0, Count).Select(i => flat.AsSpan(i * 4, 4).ToArray()).ToArray();
    }

    public void Dispose()
    {
        Scores.Dispose();
        Labels.Dispose();
        Boxes.Dispose();
        Masks?.Dispose();
    }
}

/// <summary>Results of a batch keyed by id (upstream's <c>results[coco_image_id]</c>), in first-appearance order. Owned by
/// the caller: disposing it disposes every <see cref="QueryResultTensors"/>.</summary>
internal sealed class BatchedResultTensors : IReadOnlyDictionary<long, QueryResultTensors>, IDisposable
{
    private readonly Dictionary<long, QueryResultTensors> _byId = new();
    private readonly List<long> _order = new();

    internal void Add(QueryResultTensors d)
    {
        _byId.Add(d.Id, d);
        _order.Add(d.Id);
    }

    public QueryResultTensors this[long key] => _byId.TryGetValue(key, out var d) ? d
        : throw new KeyNotFoundException($"no results for id {key} (have: {string.Join(", ", _order)})");
    public IEnumerable<long> Keys => _order;
    public IEnumerable<QueryResultTensors> Values => _order.Select(k => _byId[k]);
    public int Count => _order.Count;
    public bool ContainsKey(long key) => _byId.ContainsKey(key);
    public bool TryGetValue(long key, out QueryResultTensors value) => _byId.TryGetValue(key, out value!);
    public IEnumerator<KeyValuePair<long, QueryResultTensors>> GetEnumerator() => _order.Select(k => new KeyValuePair<long, QueryResultTensors>(k, _byId[k])).GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    public void Dispose()
    {
        foreach (var d in _byId.Values) d.Dispose();
        _byId.Clear();
        _order.Clear();
    }
}
