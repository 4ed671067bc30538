using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training;

/// <summary>
/// Sam3ImageModel.forward in training mode (sam3_image.py <c>forward</c> → <c>forward_grounding</c> with
/// <c>self.training</c>): the backbone on <see cref="TrainingBatch.ImgBatch"/>, the text encoder on
/// <see cref="TrainingBatch.FindTextBatch"/>, the geometric prompt from the batch's input boxes (none = empty prompt),
/// the fusion encoder, the decoder with DAC query doubling (2Q queries: self-attention over the first Q and the presence
/// token only, <c>norm2</c>/cross-attentions/FFN over all; reference boxes detached between layers), scores and boxes of
/// every layer (aux outputs = layers 0..L-2), o2o <c>[:Q]</c> and o2m <c>[Q:]</c> splits, masks for both halves
/// (<c>o2m_mask_predict</c>) and the semantic segmentation of the final layer. Matching is not done here (the loss does it).
/// The model must be in training mode (<see cref="TrainingMode.Apply"/>); gradients are recorded unless the caller
/// disabled them. The returned tensors are owned by the result (outside every dispose scope) and keep the autograd graph.
/// </summary>
internal static class Sam3TrainingForward
{
    /// <param name="model">The image model, in training mode.</param>
    /// <param name="tokenizer">Tokenizer of the text queries.</param>
    /// <param name="batch">A collated batch (one find stage).</param>
    /// <param name="probe">Receives intermediates, named as in <c>h_training_step</c> without the <c>fwd.</c> prefix:
    /// "text.language_mask", "text.language_features", "vision_features", "encoder_hidden_states", "decoder.hs",
    /// "decoder.ref_boxes", "decoder.presence_logits"; plus forward_grounding's own ("enc.layer0", "dec.rpb", ...).
    /// Tensors are only valid during the call.</param>
    public static TrainingForwardOutputs Forward(Sam3ImageModel model, ClipBpeTokenizer tokenizer, TrainingBatch batch,
        Action<string, Tensor>? probe = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(batch);
        if (!model.training)
            throw new Sam3Exception("the training forward needs the model in training mode (TrainingMode.Apply)");
        Validate(batch);

        using var scope = NewDisposeScope();
        var first = model.parameters().First();
        var device = first.device;
        var dtype = first.dtype;
        using var backbone = model.backbone.ForwardImage(batch.ImgBatch.to(dtype).to(device));
        probe?.Invoke("vision_features", backbone.VisionFeatures);

        var (ids, pad) = tokenizer.TokenizeToTensors(batch.FindTextBatch, device: device);
        probe?.Invoke("text.token_ids", ids);
        var text = model.backbone.ForwardText(ids, pad);
        probe?.Invoke("text.language_mask", text.LanguageMask);
        probe?.Invoke("text.language_features", text.LanguageFeatures);

        long numQueries = batch.FindImgIds.shape[0];
        var prompt = batch.InputBoxes is null
            ? Prompt.Empty(numQueries, device)
            : new Prompt(boxEmbeddings: batch.InputBoxes.to(dtype).to(device), boxMask: batch.InputBoxesMask?.to(device),
                         boxLabels: batch.InputBoxesLabel?.to(device));

        Action<string, Tensor>? inner = probe is null ? null : (name, t) =>
        {
            probe(name, t);
            switch (name)
            {
                case "enc.out.memory": probe("encoder_hidden_states", t); break;
                case "dec.out.0": probe("decoder.hs", t); break;
                case "dec.out.1": probe("decoder.ref_boxes", t); break;
                case "dec.out.2": probe("decoder.presence_logits", t); break;
            }
        };
        using var output = model.ForwardGrounding(backbone, text.LanguageFeatures, text.LanguageMask,
            batch.FindTextIds.to(device), batch.FindImgIds.to(device), prompt, inner);
        return ToTrainingOutputs(output);
    }

    private static void Validate(TrainingBatch batch)
    {
        if (batch.ImgBatch.dim() != 4 || batch.ImgBatch.shape[1] != 3)
            throw new ArgumentException($"img_batch must be [B_img,3,S,S], got [{string.Join(",", batch.ImgBatch.shape)}]", nameof(batch));
        if (batch.FindImgIds.dim() != 1 || batch.FindTextIds.dim() != 1 || batch.FindImgIds.shape[0] != batch.FindTextIds.shape[0])
            throw new ArgumentException($"find img_ids [{string.Join(",", batch.FindImgIds.shape)}] and text_ids [{string.Join(",", batch.FindTextIds.shape)}] must be [B]", nameof(batch));
        if (batch.FindImgIds.shape[0] == 0) throw new ArgumentException("the batch has no find queries", nameof(batch));
        if (batch.FindTextBatch.Count == 0) throw new ArgumentException("find_text_batch is empty", nameof(batch));
        using var scope = NewDisposeScope();
        long maxImg = batch.FindImgIds.max().item<long>(), minImg = batch.FindImgIds.min().item<long>();
        if (minImg < 0 || maxImg >= batch.ImgBatch.shape[0])
            throw new ArgumentException($"find img_ids must be in [0, {batch.ImgBatch.shape[0]}), got [{minImg}, {maxImg}]", nameof(batch));
        long maxTxt = batch.FindTextIds.max().item<long>(), minTxt = batch.FindTextIds.min().item<long>();
        if (minTxt < 0 || maxTxt >= batch.FindTextBatch.Count)
            throw new ArgumentException($"find text_ids must be in [0, {batch.FindTextBatch.Count}), got [{minTxt}, {maxTxt}]", nameof(batch));
    }

    /// <summary>Moves the grounding output's tensors into the training output types (the grounding output gives them up).</summary>
    internal static TrainingForwardOutputs ToTrainingOutputs(GroundingOutput g)
    {
        if (g.PredLogits is null || g.PredBoxes is null || g.PredBoxesXyxy is null)
            throw new Sam3Exception("forward_grounding returned no predictions");
        var aux = new List<FindOutputs>();
        foreach (var a in g.AuxOutputs)
        {
            aux.Add(new FindOutputs
            {
                PredLogits = Take(() => a.PredLogits, v => a.PredLogits = v)!,
                PredBoxes = Take(() => a.PredBoxes, v => a.PredBoxes = v)!,
                PredBoxesXyxy = Take(() => a.PredBoxesXyxy, v => a.PredBoxesXyxy = v)!,
                PresenceLogitDec = Take(() => a.PresenceLogitDec, v => a.PresenceLogitDec = v),
                PredLogitsO2m = Take(() => a.PredLogitsO2m, v => a.PredLogitsO2m = v),
                PredBoxesO2m = Take(() => a.PredBoxesO2m, v => a.PredBoxesO2m = v),
                PredBoxesXyxyO2m = Take(() => a.PredBoxesXyxyO2m, v => a.PredBoxesXyxyO2m = v),
            });
        }
        var final = new FindOutputs
        {
            PredLogits = Take(() => g.PredLogits, v => g.PredLogits = v)!,
            PredBoxes = Take(() => g.PredBoxes, v => g.PredBoxes = v)!,
            PredBoxesXyxy = Take(() => g.PredBoxesXyxy, v => g.PredBoxesXyxy = v)!,
            PresenceLogitDec = Take(() => g.PresenceLogitDec, v => g.PresenceLogitDec = v),
            PredLogitsO2m = Take(() => g.PredLogitsO2m, v => g.PredLogitsO2m = v),
            PredBoxesO2m = Take(() => g.PredBoxesO2m, v => g.PredBoxesO2m = v),
            PredBoxesXyxyO2m = Take(() => g.PredBoxesXyxyO2m, v => g.PredBoxesXyxyO2m = v),
            PredMasks = Take(() => g.PredMasks, v => g.PredMasks = v),
            PredMasksO2m = Take(() => g.PredMasksO2m, v => g.PredMasksO2m = v),
            SemanticSeg = Take(() => g.SemanticSeg, v => g.SemanticSeg = v),
        };
        return new TrainingForwardOutputs { Final = final, Aux = aux };
    }

    private static Tensor? Take(Func<Tensor?> get, Action<Tensor?> clear)
    {
        var t = get();
        clear(null);
        return t;
    }
}
