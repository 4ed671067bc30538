using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Data;

/// <summary>
/// Collates transformed datapoints into a <see cref="TrainingBatch"/> exactly as upstream's <c>collate_fn_api</c>
/// (sam3/train/data/collator.py) does for one find stage: images stacked in datapoint order; queries in datapoint
/// then query order, each with its image index (offset by the images before it) and the index of its text in
/// <see cref="TrainingBatch.FindTextBatch"/> (distinct texts in order of first use); targets packed in query order
/// then target order (boxes normalised cxcywh, object ids = object index within its image), padded per query (boxes
/// with 0, object ids with −1); masks as bool [N, H, W] with an all-false mask and <c>is_valid_segment</c> false for
/// an object without one. Input boxes (geometric queries) are padded to the longest query, [K, B, 4] with mask
/// [B, K] (True = padding) and labels [K, B]; null when no query has one.
/// </summary>
internal static class TrainingCollator
{
    public static TrainingBatch Collate(IReadOnlyList<Datapoint> batch, bool withSegMasks)
    {
        if (batch.Count == 0) throw new ArgumentException("empty batch", nameof(batch));
        if (batch.Any(d => d.FindQueries.Any(q => q.QueryProcessingOrder != 0)))
            throw new NotSupportedException("collate: only single-stage find queries (query_processing_order 0) are supported");
        using var scope = NewDisposeScope();

        var images = new List<Tensor>();
        var texts = new List<string>();
        var imgIds = new List<long>();
        var textIds = new List<long>();
        var numBoxes = new List<long>();
        var isExhaustive = new List<bool>();
        var boxes = new List<float>();
        var objectIds = new List<long>();
        var segments = new List<Tensor>();
        var validSegment = new List<bool>();
        var inputBoxes = new List<float[][]>();
        var inputLabels = new List<long[]>();
        int offsetImg = 0;
        foreach (var dp in batch)
        {
            foreach (var img in dp.Images)
                images.Add(img.Data ?? throw new InvalidOperationException("collate: an image was not converted to a tensor (ToTensor missing)"));
            foreach (var q in dp.FindQueries)
            {
                imgIds.Add(q.ImageId + offsetImg);
                int t = texts.IndexOf(q.QueryText);
                if (t < 0) { t = texts.Count; texts.Add(q.QueryText); }
                textIds.Add(t);
                inputBoxes.Add(q.InputBbox ?? []);
                inputLabels.Add(q.InputBbox == null ? [] : q.InputBboxLabel ?? Enumerable.Repeat(1L, q.InputBbox.Length).ToArray());
                var image = dp.Images[q.ImageId];
                foreach (int o in q.ObjectIdsOutput)
                {
                    var obj = image.Objects[o];
                    boxes.AddRange(obj.Bbox);
                    objectIds.Add(o);
                    if (withSegMasks)
                    {
                        if (obj.Segment is { } seg) { segments.Add(seg.to(ScalarType.Bool)); validSegment.Add(true); }
                        else if (obj.SegmentRle != null) throw new InvalidOperationException("collate: a mask is still RLE-encoded (DecodeRle missing)");
                        else
                        {
                            var d = image.Data!;
                            segments.Add(zeros(d.shape[^2], d.shape[^1], ScalarType.Bool));
                            validSegment.Add(false);
                        }
                    }
                }
                numBoxes.Add(q.ObjectIdsOutput.Count);
                isExhaustive.Add(q.IsExhaustive);
            }
            offsetImg += dp.Images.Count;
        }
        foreach (var im in images.Skip(1))
            if (!im.shape.SequenceEqual(images[0].shape))
                throw new InvalidOperationException($"collate: all images must have the same size, got [{string.Join(",", images[0].shape)}] and [{string.Join(",", im.shape)}]");

        int b = numBoxes.Count, n = objectIds.Count;
        int maxN = numBoxes.Count == 0 ? 0 : (int)numBoxes.Max();
        var boxesT = tensor(boxes.ToArray(), [n, 4], ScalarType.Float32);
        var (cx, cy, w, h) = (boxesT[.., 0], boxesT[.., 1], boxesT[.., 2], boxesT[.., 3]);
        var boxesXyxy = stack([cx - 0.5f * w, cy - 0.5f * h, cx + 0.5f * w, cy + 0.5f * h], dim: -1);
        var padded = zeros(b, maxN, 4, ScalarType.Float32);
        var idsPadded = full(b, maxN, -1L, ScalarType.Int64);
        var objectIdsT = tensor(objectIds.ToArray(), ScalarType.Int64);
        int prev = 0;
        for (int i = 0; i < b; i++)
        {
            int k = (int)numBoxes[i];
            if (k > 0)
            {
                padded[i, TensorIndex.Slice(0, k)] = boxesT[TensorIndex.Slice(prev, prev + k)];
                idsPadded[i, TensorIndex.Slice(0, k)] = objectIdsT[TensorIndex.Slice(prev, prev + k)];
            }
            prev += k;
        }

        Tensor? segT = null, validT = null;
        if (withSegMasks)
        {
            segT = n > 0 ? stack(segments) : zeros(0, images[0].shape[^2], images[0].shape[^1], ScalarType.Bool);
            validT = tensor(validSegment.ToArray(), ScalarType.Bool);
        }

        Tensor? inBoxes = null, inMask = null, inLabels = null;
        int maxK = inputBoxes.Max(x => x.Length);
        if (maxK > 0)
        {
            var ib = new float[maxK * b * 4];
            var il = new long[maxK * b];
            var im = new bool[b * maxK];
            for (int qi = 0; qi < b; qi++)
                for (int k = 0; k < maxK; k++)
                {
                    bool present = k < inputBoxes[qi].Length;
                    im[qi * maxK + k] = !present;
                    if (!present) continue;
                    for (int c = 0; c < 4; c++) ib[(k * b + qi) * 4 + c] = inputBoxes[qi][k][c];
                    il[k * b + qi] = inputLabels[qi][k];
                }
            inBoxes = tensor(ib, [maxK, b, 4], ScalarType.Float32);
            inLabels = tensor(il, [maxK, b], ScalarType.Int64);
            inMask = tensor(im, [b, maxK], ScalarType.Bool);
        }

        var targets = new FindTargets
        {
            NumBoxes = tensor(numBoxes.ToArray(), ScalarType.Int64).MoveToOuterDisposeScope(),
            Boxes = boxesT.MoveToOuterDisposeScope(),
            BoxesXyxy = boxesXyxy.MoveToOuterDisposeScope(),
            BoxesPadded = padded.MoveToOuterDisposeScope(),
            ObjectIds = objectIdsT.MoveToOuterDisposeScope(),
            ObjectIdsPadded = idsPadded.MoveToOuterDisposeScope(),
            IsExhaustive = tensor(isExhaustive.ToArray(), ScalarType.Bool).MoveToOuterDisposeScope(),
            Segments = segT?.MoveToOuterDisposeScope(),
            IsValidSegment = validT?.MoveToOuterDisposeScope(),
        };
        return new TrainingBatch
        {
            ImgBatch = stack(images).MoveToOuterDisposeScope(),
            FindTextBatch = texts,
            FindImgIds = tensor(imgIds.ToArray(), ScalarType.Int64).MoveToOuterDisposeScope(),
            FindTextIds = tensor(textIds.ToArray(), ScalarType.Int64).MoveToOuterDisposeScope(),
            InputBoxes = inBoxes?.MoveToOuterDisposeScope(),
            InputBoxesMask = inMask?.MoveToOuterDisposeScope(),
            InputBoxesLabel = inLabels?.MoveToOuterDisposeScope(),
            Targets = targets,
        };
    }
}
