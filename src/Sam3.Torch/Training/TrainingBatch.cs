using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training;

/// <summary>
/// One collated training batch, the counterpart of upstream's <c>BatchedDatapoint</c> with a single find stage
/// (<c>collate_fn_api</c>): images, the find queries (one text per query, an image index per query) and their targets.
/// Owns its tensors.
/// </summary>
internal sealed class TrainingBatch : IDisposable
{
    /// <summary>[B_img, 3, S, S] normalised images (<c>img_batch</c>).</summary>
    public required Tensor ImgBatch { get; init; }

    /// <summary>The distinct query texts (<c>find_text_batch</c>); <see cref="FindTextIds"/> index into it.</summary>
    public required IReadOnlyList<string> FindTextBatch { get; init; }

    /// <summary>int64 [B]: image index of each find query (<c>find_inputs[0].img_ids</c>).</summary>
    public required Tensor FindImgIds { get; init; }

    /// <summary>int64 [B]: text index of each find query (<c>find_inputs[0].text_ids</c>).</summary>
    public required Tensor FindTextIds { get; init; }

    /// <summary>Optional geometric input prompts of each query: [K, B, 4] cxcywh normalised boxes, [B, K] mask (True = padding), [K, B] labels. Null for text-only queries.</summary>
    public Tensor? InputBoxes { get; init; }
    public Tensor? InputBoxesMask { get; init; }
    public Tensor? InputBoxesLabel { get; init; }

    /// <summary>The targets of the find queries.</summary>
    public required FindTargets Targets { get; init; }

    public void Dispose()
    {
        ImgBatch.Dispose(); FindImgIds.Dispose(); FindTextIds.Dispose();
        InputBoxes?.Dispose(); InputBoxesMask?.Dispose(); InputBoxesLabel?.Dispose();
        Targets.Dispose();
    }
}

/// <summary>
/// Targets of the find queries of a batch, in upstream's <c>back_convert</c> layout: packed over all queries
/// (N = sum of <see cref="NumBoxes"/>) and padded per query.
/// </summary>
internal sealed class FindTargets : IDisposable
{
    /// <summary>int64 [B]: number of targets per query (0 = a negative query).</summary>
    public required Tensor NumBoxes { get; init; }
    /// <summary>[N, 4] normalised cxcywh, packed in query order.</summary>
    public required Tensor Boxes { get; init; }
    /// <summary>[N, 4] normalised xyxy.</summary>
    public required Tensor BoxesXyxy { get; init; }
    /// <summary>[B, maxN, 4] normalised cxcywh, zero padded.</summary>
    public required Tensor BoxesPadded { get; init; }
    /// <summary>int64 [N].</summary>
    public required Tensor ObjectIds { get; init; }
    /// <summary>int64 [B, maxN], -1 padding.</summary>
    public required Tensor ObjectIdsPadded { get; init; }
    /// <summary>bool [B].</summary>
    public required Tensor IsExhaustive { get; init; }
    /// <summary>bool [N, S, S] instance masks (null for box-only data).</summary>
    public Tensor? Segments { get; init; }
    /// <summary>bool [N].</summary>
    public Tensor? IsValidSegment { get; init; }
    /// <summary>bool [B, S, S] union of each query's instance masks (semantic target), or null to derive it from <see cref="Segments"/>.</summary>
    public Tensor? SemanticSegments { get; init; }

    public void Dispose()
    {
        NumBoxes.Dispose(); Boxes.Dispose(); BoxesXyxy.Dispose(); BoxesPadded.Dispose(); ObjectIds.Dispose();
        ObjectIdsPadded.Dispose(); IsExhaustive.Dispose(); Segments?.Dispose(); IsValidSegment?.Dispose(); SemanticSegments?.Dispose();
    }
}
