using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Processing;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Batched;

/// <summary>What the post-processor returns (upstream <c>iou_type</c>).</summary>
public enum IouType
{
    /// <summary>Scores, labels and boxes.</summary>
    Bbox,
    /// <summary>Also masks (bool, or COCO RLE with <see cref="PostProcessImage.ConvertMaskToRle"/>).</summary>
    Segm,
}

/// <summary>
/// Turns the model's raw outputs into per-id detections (upstream <c>sam3.eval.postprocessors.PostProcessImage</c> and its
/// <c>process_results</c>): score = sigmoid(logit)·sigmoid(presence) (max over classes), boxes cxcywh → xyxy scaled by the
/// original size, optional score threshold, masks upsampled (bilinear, align_corners=False) to the original size,
/// sigmoid &gt; 0.5, optionally COCO RLE; results of queries with the same id concatenated; then the top
/// <see cref="MaxDetsPerImg"/> by score (torch.topk, i.e. sorted by descending score) when more survive.
/// </summary>
/// <remarks>Results always come back on the CPU (upstream <c>to_cpu=True</c>).</remarks>
public sealed class PostProcessImage
{
    /// <summary>Upstream's mask threshold on the upsampled probabilities.</summary>
    public const double MaskProbabilityThreshold = 0.5;

    /// <summary>Detections kept per id (top-k by score); 0 or negative = all.</summary>
    public int MaxDetsPerImg { get; init; } = -1;
    public IouType IouType { get; init; } = IouType.Segm;
    /// <summary>Scale boxes to the original image (else they stay normalised, upstream's default false).</summary>
    public bool UseOriginalSizesBox { get; init; } = true;
    /// <summary>Upsample masks to the original image (else to 1×1, upstream's default false).</summary>
    public bool UseOriginalSizesMask { get; init; } = true;
    /// <summary>Return masks as COCO RLE instead of bool tensors.</summary>
    public bool ConvertMaskToRle { get; init; }
    /// <summary>Keep detections with score &gt; this; 0 or negative = no threshold (upstream default -1).</summary>
    public double DetectionThreshold { get; init; } = -1.0;
    /// <summary>Multiply the class probability by the presence probability (upstream default true).</summary>
    public bool UsePresence { get; init; } = true;
    /// <summary>Key by original_image_id and label by original_category_id (else coco_image_id and label 1).</summary>
    public bool UseOriginalIds { get; init; }
    /// <summary>
    /// Let several queries share a key and concatenate their detections (upstream's behaviour). Off by default: a
    /// repeated id is then a <see cref="Sam3QueryException"/> naming the query, found before the model runs.
    /// </summary>
    public bool MergeRepeatedIds { get; init; }

    internal void Validate()
    {
        if (!double.IsFinite(DetectionThreshold) || DetectionThreshold >= 1)
            throw new ArgumentOutOfRangeException(nameof(DetectionThreshold), DetectionThreshold, "the detection threshold must be finite and below 1");
    }

    /// <summary>
    /// process_results for one stage: <paramref name="output"/> holds Q queries, <paramref name="metadata"/> their
    /// metadata. <paramref name="probe"/> receives "post.query_scores" [Q,C→max].
    /// </summary>
    internal BatchedResultTensors Process(GroundingOutput output, IReadOnlyList<InferenceMetadata> metadata, Action<string, Tensor>? probe = null)
    {
        Validate();
        var logits = output.PredLogits ?? throw new Sam3StateException("the model output has no pred_logits");
        var predBoxes = output.PredBoxes ?? throw new Sam3StateException("the model output has no pred_boxes");
        int nq = metadata.Count;
        if (logits.shape[0] != nq) throw new Sam3StateException($"{logits.shape[0]} query outputs for {nq} metadata entries");
        // Masks stay at the model's resolution (kept queries only) until the top-k is known: only the detections that
        // are returned are upsampled to the original size (MaskUpsampler: chunked, straight to bool).
        var perQuery = new List<(long Id, Tensor Scores, Tensor Labels, Tensor Boxes, Tensor? LowRes, (int H, int W) Size)>();
        var results = new BatchedResultTensors();
        try
        {
            using (var scope = NewDisposeScope())
            {
                var probs = logits.to(ScalarType.Float32).sigmoid();
                if (UsePresence)
                {
                    var presence = output.PresenceLogitDec ?? throw new Sam3StateException("the model output has no presence_logit_dec");
                    probs = probs * presence.to(ScalarType.Float32).sigmoid().unsqueeze(1);
                }
                probs = probs.cpu();
                var scoresAll = probs.max(-1).values; // [Q,N]
                probe?.Invoke("post.query_scores", scoresAll);
                var sizes = torch.tensor(metadata.SelectMany(m => new long[] { m.OriginalHeight, m.OriginalWidth }).ToArray()).view(-1, 2);
                var boxSizes = UseOriginalSizesBox ? sizes : torch.ones_like(sizes);
                var maskSizes = UseOriginalSizesMask ? sizes : torch.ones_like(sizes);
                var hw = boxSizes.unbind(1);
                var scale = torch.stack([hw[1], hw[0], hw[1], hw[0]], 1);
                var boxesAll = (BoxOps.CxcywhToXyxy(predBoxes.to(ScalarType.Float32)) * scale.to(predBoxes.device).unsqueeze(1)).cpu();
                bool threshold = DetectionThreshold > 0;
                var masksAll = IouType == IouType.Segm ? output.PredMasks ?? throw new Sam3StateException("the model output has no pred_masks") : null;
                var maskHw = maskSizes.data<long>().ToArray();
                for (int i = 0; i < nq; i++)
                {
                    var s = scoresAll[i];
                    var labels = UseOriginalIds
                        ? torch.full(s.shape, (long)metadata[i].OriginalCategoryId, dtype: ScalarType.Int64)
                        : torch.ones(s.shape, dtype: ScalarType.Int64);
                    var b = boxesAll[i];
                    Tensor? keepIdx = null;
                    if (threshold)
                    {
                        keepIdx = s.gt(DetectionThreshold).nonzero().flatten();
                        s = s.index_select(0, keepIdx);
                        labels = labels.index_select(0, keepIdx);
                        b = b.index_select(0, keepIdx);
                    }
                    Tensor? lowRes = null;
                    if (masksAll is not null)
                    {
                        var m = masksAll[i];
                        lowRes = (keepIdx is not null ? m.index_select(0, keepIdx.to(m.device)) : m.alias()).DetachFromDisposeScope();
                    }
                    long id = UseOriginalIds ? metadata[i].OriginalImageId : metadata[i].CocoImageId;
                    perQuery.Add((id, s.contiguous().DetachFromDisposeScope(), labels.contiguous().DetachFromDisposeScope(),
                        b.contiguous().DetachFromDisposeScope(), lowRes, ((int)maskHw[2 * i], (int)maskHw[2 * i + 1])));
                }
            }
            // merge by id (first-appearance order), then top-k
            foreach (var group in perQuery.GroupBy(p => p.Id))
            {
                using var scope = NewDisposeScope();
                var items = group.ToList();
                if (items[0].LowRes is not null && items.Any(x => x.Size != items[0].Size))
                    throw new Sam3QueryException(group.Key, $"the queries sharing id {group.Key} have masks of different original sizes: they cannot be merged (use distinct ids or IouType.Bbox)");
                var scores = items.Count == 1 ? items[0].Scores.alias() : torch.cat(items.Select(x => x.Scores).ToArray(), 0);
                var labels = items.Count == 1 ? items[0].Labels.alias() : torch.cat(items.Select(x => x.Labels).ToArray(), 0);
                var boxes = items.Count == 1 ? items[0].Boxes.alias() : torch.cat(items.Select(x => x.Boxes).ToArray(), 0);
                Tensor? lowRes = items[0].LowRes is null ? null
                    : items.Count == 1 ? items[0].LowRes!.alias() : torch.cat(items.Select(x => x.LowRes!).ToArray(), 0);
                if (MaxDetsPerImg > 0 && scores.shape[0] > MaxDetsPerImg)
                {
                    var top = scores.topk(MaxDetsPerImg, dim: 0).indexes;
                    scores = scores.index_select(0, top);
                    labels = labels.index_select(0, top);
                    boxes = boxes.index_select(0, top);
                    lowRes = lowRes?.index_select(0, top.to(lowRes.device));
                }
                Tensor? masks = null;
                List<CocoRle>? rle = null;
                if (lowRes is not null)
                {
                    var (h, w) = items[0].Size;
                    var up = MaskUpsampler.Masks(lowRes, h, w, MaskProbabilityThreshold).unsqueeze(1); // bool [K,1,H,W]
                    if (ConvertMaskToRle) rle = up.shape[0] == 0 ? [] : CocoRle.EncodeMany(up.squeeze(1)).ToList();
                    else masks = up;
                }
                results.Add(new QueryResultTensors(group.Key, scores.DetachFromDisposeScope(), labels.DetachFromDisposeScope(),
                    boxes.DetachFromDisposeScope(), masks?.DetachFromDisposeScope(), rle) { BoxesInPixels = UseOriginalSizesBox });
            }
        }
        catch
        {
            results.Dispose();
            throw;
        }
        finally
        {
            foreach (var p in perQuery) { p.Scores.Dispose(); p.Labels.Dispose(); p.Boxes.Dispose(); p.LowRes?.Dispose(); }
        }
        return results;
    }
}
