using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Batched;

/// <summary>
/// The batched query API (upstream's <c>sam3_image_batched_inference</c> flow): datapoints (images with their
/// <see cref="FindQuery"/>s) → transform → collate → one model forward → <see cref="PostProcessImage"/> → results keyed
/// by coco_image_id. In one forward every image goes through the backbone once, all query texts through the text
/// encoder once, and all queries of all images through the fusion encoder and decoder together.
/// </summary>
/// <example>
/// <code>
/// var predictor = model.CreateBatchedPredictor();
/// var image = ImageLoader.Load("truck.jpg");
/// var meta = (long id) =&gt; new InferenceMetadata(id, id, 1, image.Height, image.Width);
/// var dp = new Datapoint(image, [new FindQuery("car", meta(1)), new FindQuery("tire", meta(2))]);
/// var results = predictor.Predict([dp], new PostProcessImage { DetectionThreshold = 0.5, MaxDetsPerImg = 100 });
/// foreach (var d in results[1]) Console.WriteLine($"{d.Score:F2} {d.Box}"); // score, label, xyxy pixel box, mask
/// </code>
/// </example>
/// <remarks>
/// Bad queries (image index that does not exist, a box outside its image, neither text nor boxes, a repeated
/// coco_image_id) throw <see cref="Sam3QueryException"/> naming the query before the model runs. Not safe for concurrent
/// calls on one model; memory grows with the batch (images × backbone features, queries × mask logits).
/// </remarks>
public sealed class Sam3BatchedPredictor
{
    private readonly InferenceTransform _transform;

    internal Sam3BatchedPredictor(Sam3Model owner) : this(owner.Network, owner.Tokenizer) => _owner = owner;

    /// <param name="model">A loaded image model (eval mode).</param>
    /// <param name="tokenizer">The CLIP BPE tokenizer.</param>
    internal Sam3BatchedPredictor(Sam3ImageModel model, ClipBpeTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        Model = model;
        Tokenizer = tokenizer;
        _transform = new InferenceTransform(model.Config);
        Device = model.parameters().First().device;
    }

    private readonly Sam3Model? _owner;
    internal Sam3ImageModel Model { get; }
    internal ClipBpeTokenizer Tokenizer { get; }
    internal Device Device { get; }

    /// <summary>Runs every query of <paramref name="datapoints"/> in one forward and post-processes the outputs.</summary>
    /// <returns>Detections per id: immutable data the caller owns.</returns>
    /// <exception cref="Sam3QueryException">A query that cannot run (named in the message).</exception>
    public BatchedResults Predict(IReadOnlyList<Datapoint> datapoints, PostProcessImage postProcessor, CancellationToken cancellationToken = default)
    {
        if (_owner is not null) ObjectDisposedException.ThrowIf(_owner.IsDisposed, _owner);
        ArgumentNullException.ThrowIfNull(datapoints);
        using var tensors = PredictTensors(datapoints, postProcessor, cancellationToken);
        return BatchedResults.From(tensors);
    }

    internal InferenceTransform Transform => _transform;

    /// <summary>As <see cref="Predict"/>, with tensors (parity runner, CLI); owned by the caller (dispose them).</summary>
    internal BatchedResultTensors PredictTensors(IReadOnlyList<Datapoint> datapoints, PostProcessImage postProcessor, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(postProcessor);
        postProcessor.Validate();
        cancellationToken.ThrowIfCancellationRequested();
        using var batch = BatchedDatapoint.Collate(datapoints, _transform, postProcessor.MergeRepeatedIds,
            repeatedIdsNeedSameSize: postProcessor.IouType == IouType.Segm && postProcessor.UseOriginalSizesMask);
        cancellationToken.ThrowIfCancellationRequested();
        using var output = Forward(batch);
        return postProcessor.Process(output, batch.FindMetadatas);
    }

    /// <summary>Validation, transforms and collate_fn_api.</summary>
    internal BatchedDatapoint Collate(IReadOnlyList<Datapoint> datapoints, bool allowRepeatedIds = false)
        => BatchedDatapoint.Collate(datapoints, _transform, allowRepeatedIds);

    /// <summary>
    /// Sam3ImageModel.forward on a collated batch (one stage, no interactive steps): backbone on <c>img_batch</c>, text encoder
    /// on <c>find_text_batch</c>, geometric prompt from the input boxes, forward_grounding. <paramref name="probe"/>
    /// receives "text.out.{0,1,2}" and forward_grounding's intermediates.
    /// </summary>
    internal GroundingOutput Forward(BatchedDatapoint batch, Action<string, Tensor>? probe = null)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var dtype = Model.parameters().First().dtype;
        using var backbone = Model.backbone.ForwardImage(batch.ImgBatch.to(dtype).to(Device));
        var (ids, pad) = Tokenizer.TokenizeToTensors(batch.FindTextBatch, device: Device);
        probe?.Invoke("text.token_ids", ids);
        var text = Model.backbone.ForwardText(ids, pad);
        probe?.Invoke("text.out.0", text.LanguageMask);
        probe?.Invoke("text.out.1", text.LanguageFeatures);
        probe?.Invoke("text.out.2", text.LanguageEmbeds);
        var prompt = new Prompt(boxEmbeddings: batch.InputBoxes.to(dtype).to(Device), boxMask: batch.InputBoxesMask.to(Device),
            boxLabels: batch.InputBoxesLabel.to(Device));
        return Model.ForwardGrounding(backbone, text.LanguageFeatures, text.LanguageMask, batch.TextIds.to(Device), batch.ImgIds.to(Device), prompt, probe);
    }
}
