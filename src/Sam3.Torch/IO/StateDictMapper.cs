namespace Sam3.Torch.IO;

/// <summary>Key layouts a SAM3 checkpoint can have.</summary>
internal enum CheckpointLayout
{
    Unknown,
    /// <summary>The released <c>sam3.pt</c>: the video model's state dict, keys <c>detector.*</c> and <c>tracker.*</c>.</summary>
    Released,
    /// <summary>The image model's own state dict (<c>backbone.*</c>, <c>transformer.*</c>, ...), e.g. written by this library.</summary>
    ImageModel,
    /// <summary>Hugging Face transformers (<c>Sam3Model</c>/<c>Sam3VideoModel</c>): <c>detector_model.*</c>, <c>tracker_model.*</c>, renamed modules, split q/k/v.</summary>
    HuggingFace,
}

/// <summary>A checkpoint key and the model key it loads into.</summary>
internal sealed record KeyMapping(string Source, string Target);

/// <summary>
/// Checkpoint-key → model-key mappings.
/// <para>
/// Released → image model reproduces <c>model_builder._load_checkpoint</c> (guide §1.1) exactly, quirks included:
/// every key that <em>contains</em> the substring "detector" is kept with every "detector." removed (plain
/// <c>str.replace</c>, not a prefix strip); with instance interactivity, every key containing "tracker" is also kept with
/// "tracker." replaced by "inst_interactive_predictor.model.", and these entries are applied as a <c>dict.update</c>
/// after the detector ones (a later key with the same target replaces the value but keeps the first position).
/// The reference then loads with <c>strict=False</c>; <see cref="StrictLoader"/> is strict instead, so the caller
/// states what may stay unused (e.g. <see cref="IsSam2NeckKey"/> for an image model built without interactivity).
/// </para>
/// <para>
/// Hugging Face layout: transformers' <c>convert_sam3_video_to_hf.py</c> renames nearly every module
/// (<c>backbone.vision_backbone.trunk.blocks.N.attn.proj</c> → <c>vision_encoder.backbone.layers.N.attention.o_proj</c>,
/// <c>freqs_cis</c> → <c>rotary_emb.rope_embeddings</c>, ...) and splits every fused <c>qkv</c>/<c>in_proj_*</c> tensor into
/// <c>q_proj/k_proj/v_proj</c>, so loading it needs tensor concatenation, not only renaming: see <see cref="HuggingFaceLayout"/>
/// and <see cref="HuggingFaceCheckpoint"/> (the mapping functions here refuse it with a message saying so).
/// </para>
/// </summary>
internal static class StateDictMapper
{
    public const string DetectorPrefix = "detector.";
    public const string TrackerPrefix = "tracker.";
    public const string InstInteractivePrefix = "inst_interactive_predictor.model.";

    /// <summary>Identifies the layout of a key set (first matching rule wins: HF, released, image model).</summary>
    public static CheckpointLayout DetectLayout(IEnumerable<string> keys)
    {
        var list = keys as IReadOnlyCollection<string> ?? keys.ToList();
        if (list.Any(IsHuggingFaceKey)) return CheckpointLayout.HuggingFace;
        if (list.Any(k => k.StartsWith(DetectorPrefix, StringComparison.Ordinal) || k.StartsWith(TrackerPrefix, StringComparison.Ordinal)))
            return CheckpointLayout.Released;
        if (list.Any(k => k.StartsWith("backbone.", StringComparison.Ordinal) || k.StartsWith("transformer.", StringComparison.Ordinal)
                          || k.StartsWith("segmentation_head.", StringComparison.Ordinal) || k.StartsWith("geometry_encoder.", StringComparison.Ordinal)))
            return CheckpointLayout.ImageModel;
        return CheckpointLayout.Unknown;
    }

    private static bool IsHuggingFaceKey(string k) =>
        k.StartsWith("detector_model.", StringComparison.Ordinal) || k.StartsWith("tracker_model.", StringComparison.Ordinal)
        || k.StartsWith("vision_encoder.backbone.", StringComparison.Ordinal) || k.StartsWith("text_encoder.text_model.", StringComparison.Ordinal)
        || k.StartsWith("detr_encoder.", StringComparison.Ordinal) || k.StartsWith("detr_decoder.", StringComparison.Ordinal);

    /// <summary>
    /// The reference's released → image-model mapping (<c>_load_checkpoint</c>), in the reference's resulting dict order.
    /// Keys containing neither "detector" nor (with interactivity) "tracker" are dropped, as in the reference.
    /// </summary>
    public static IReadOnlyList<KeyMapping> ReleasedToImageModel(IEnumerable<string> checkpointKeys, bool enableInstInteractivity)
    {
        var keys = checkpointKeys.ToList();
        var order = new List<string>();
        var source = new Dictionary<string, string>(StringComparer.Ordinal);
        void Put(string target, string src)
        {
            if (!source.ContainsKey(target)) order.Add(target);
            source[target] = src; // Python dict semantics: later value wins, first position kept
        }
        foreach (var k in keys)
            if (k.Contains("detector", StringComparison.Ordinal)) Put(k.Replace(DetectorPrefix, "", StringComparison.Ordinal), k);
        if (enableInstInteractivity)
            foreach (var k in keys)
                if (k.Contains("tracker", StringComparison.Ordinal)) Put(k.Replace(TrackerPrefix, InstInteractivePrefix, StringComparison.Ordinal), k);
        return order.Select(t => new KeyMapping(source[t], t)).ToList();
    }

    /// <summary>Every key maps to itself.</summary>
    public static IReadOnlyList<KeyMapping> Identity(IEnumerable<string> checkpointKeys) =>
        checkpointKeys.Select(k => new KeyMapping(k, k)).ToList();

    /// <summary>
    /// Mapping for loading <paramref name="checkpointKeys"/> into the image model: released layout → the reference
    /// mapping; image-model layout → identity; Hugging Face or unknown → <see cref="Sam3CheckpointException"/>.
    /// </summary>
    public static IReadOnlyList<KeyMapping> ForImageModel(IReadOnlyList<string> checkpointKeys, bool enableInstInteractivity) =>
        DetectLayout(checkpointKeys) switch
        {
            CheckpointLayout.Released => ReleasedToImageModel(checkpointKeys, enableInstInteractivity),
            CheckpointLayout.ImageModel => Identity(checkpointKeys),
            var layout => throw LayoutError(layout, checkpointKeys),
        };

    /// <summary>Mapping for the video model, whose state dict is the released layout itself (the reference loads it with strict=True).</summary>
    public static IReadOnlyList<KeyMapping> ForVideoModel(IReadOnlyList<string> checkpointKeys) =>
        DetectLayout(checkpointKeys) switch
        {
            CheckpointLayout.Released => Identity(checkpointKeys),
            CheckpointLayout.ImageModel => throw new Sam3CheckpointException(
                $"the checkpoint is in image-model layout (first key '{checkpointKeys[0]}'); the video model needs the released layout (detector.*, tracker.*)"),
            var layout => throw LayoutError(layout, checkpointKeys),
        };

    private static Sam3CheckpointException LayoutError(CheckpointLayout layout, IReadOnlyList<string> keys)
    {
        string first = keys.FirstOrDefault(IsHuggingFaceKey) ?? keys.FirstOrDefault() ?? "<no keys>";
        return layout == CheckpointLayout.HuggingFace
            ? new Sam3CheckpointException($"Hugging Face transformers layout ({first}) is not a key renaming (q/k/v split, tensors restacked): " +
                                          "Sam3ModelLoader loads it through HuggingFaceCheckpoint, and 'sam3 convert IN OUT --layout original' writes the released layout")
            : new Sam3CheckpointException($"unrecognised checkpoint key layout (first key '{first}'); expected the released SAM3 layout (detector.*, tracker.*) or the image model's own keys");
    }

    /// <summary>
    /// Keys of the tracker-side neck (<c>backbone.vision_backbone.sam2_convs.*</c>, 22 in the full model): the image builder
    /// without interactivity has no such module, and the reference drops them silently (strict=False).
    /// </summary>
    public static bool IsSam2NeckKey(string imageModelKey) =>
        imageModelKey.StartsWith("backbone.vision_backbone.sam2_convs.", StringComparison.Ordinal);
}
