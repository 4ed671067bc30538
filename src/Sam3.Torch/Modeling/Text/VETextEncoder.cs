using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Text;

/// <summary>Output of <see cref="VETextEncoder.forward(Tensor, Tensor?)"/>, in the upstream order and layouts.</summary>
/// <param name="LanguageMask">bool [B,L], True = padding (used as key_padding_mask downstream).</param>
/// <param name="LanguageFeatures">resizer(text tokens), seq-first [L,B,d_model].</param>
/// <param name="LanguageEmbeds">token embeddings before the transformer, seq-first [L,B,width].</param>
internal sealed record TextEncoderOutput(Tensor LanguageMask, Tensor LanguageFeatures, Tensor LanguageEmbeds);

/// <summary>
/// SAM3 text encoder (text_encoder_ve.py <c>VETextEncoder</c>) for already tokenized text: <c>encoder</c>
/// (<see cref="TextTransformer"/>) and <c>resizer</c> (Linear width → d_model). Checkpoint prefix
/// <c>detector.backbone.language_backbone.</c>. The tokenizer lives elsewhere; this module takes its int64 ids.
/// </summary>
internal sealed class VETextEncoder : nn.Module
{
    public readonly TextTransformer encoder;
    public readonly Linear resizer;
    public int context_length { get; }

    private bool _useSkinnyLinear = true;

    /// <summary>
    /// Whether few-token fp32 CPU inference (a prompt's real tokens) runs the transformer's and the resizer's projections
    /// on <see cref="SkinnyLinear"/> (default true: weights read once at the memory bandwidth); false keeps LibTorch's
    /// <c>linear</c> everywhere (the previous path; the two agree within fp32 rounding).
    /// </summary>
    internal bool UseSkinnyLinear
    {
        get => _useSkinnyLinear;
        set
        {
            _useSkinnyLinear = value;
            foreach (var block in encoder.transformer.resblocks) block.UseSkinnyLinear = value;
        }
    }

    public VETextEncoder(Sam3Config cfg) : base(nameof(VETextEncoder))
    {
        var t = cfg.Text;
        context_length = t.ContextLength;
        encoder = new TextTransformer(t, cfg.HardcodedInClasses.TextLayerNormEps);
        resizer = nn.Linear(t.Width, t.DModel);
        RegisterComponents();
    }

    /// <summary>
    /// Encodes token ids int64 [B,L] (L ≤ context_length, normally exactly the context length, zero padded).
    /// </summary>
    /// <param name="tokenIds">Tokenizer output, int64 [B,L], values in [0, vocab_size).</param>
    /// <param name="paddingMask">
    /// null (default) reproduces upstream: mask = (ids == 0). Upstream quirk: id 0 is also the BPE id of a bare "!"
    /// piece, so such a token is masked like padding. Pass the tokenizer's true padding mask (bool [B,L], True = pad)
    /// to avoid that.
    /// </param>
    /// <param name="skipPaddedPositions">
    /// false (default) runs the transformer over all L positions, as upstream. true runs it only over the positions up to
    /// the last unmasked one of the batch (for "truck": 3 of 32) and returns zeros at the later, masked positions. The
    /// causal mask means no unmasked position depends on a later one, and every consumer of the features in the detector
    /// masks the padded positions (fusion encoder, decoder and segmentation-head cross-attention via key_padding_mask,
    /// the scoring's masked mean; <c>add_pooled_text_to_img_feat</c> is off in the released model), so the detector's
    /// outputs do not change; only <see cref="TextEncoderOutput.LanguageFeatures"/> at the masked positions differs from
    /// upstream's (zeros instead of the values nothing reads). The transformer's cost drops with the token count (the
    /// 24 CLIP layers read their 1.2 GB of fp32 weights either way).
    /// </param>
    public TextEncoderOutput forward(Tensor tokenIds, Tensor? paddingMask = null, bool skipPaddedPositions = false)
    {
        if (tokenIds.dim() != 2) throw new Sam3PromptException($"text token ids must be [B,L], got [{string.Join(",", tokenIds.shape)}]");
        if (tokenIds.dtype != ScalarType.Int64 && tokenIds.dtype != ScalarType.Int32)
            throw new Sam3PromptException($"text token ids must be integers, got {tokenIds.dtype}");
        if (tokenIds.shape[1] > context_length)
            throw new Sam3PromptException($"text has {tokenIds.shape[1]} tokens, the context length is {context_length}");
        if (paddingMask is not null && (!paddingMask.shape.SequenceEqual(tokenIds.shape) || paddingMask.dtype != ScalarType.Bool))
            throw new Sam3PromptException("the text padding mask must be bool with the shape of the token ids");
        using var scope = NewDisposeScope();
        var ids = tokenIds.to(ScalarType.Int64);
        if (ids.numel() > 0)
        {
            long min = ids.min().item<long>(), max = ids.max().item<long>();
            if (min < 0 || max >= encoder.vocab_size)
                throw new Sam3PromptException($"text token ids must be in [0, {encoder.vocab_size}), got [{min}, {max}]");
        }
        var mask = paddingMask ?? ids.eq(0);
        var embeds = encoder.token_embedding.forward(ids);        // [B,L,W]
        long length = ids.shape[1];
        long used = skipPaddedPositions ? UsedPositions(mask) : length;
        var memory = encoder.forward(used == length ? ids : ids[.., TensorIndex.Slice(0, used)]); // [B,used,W]
        var seqFirst = memory.transpose(0, 1);
        var features = (_useSkinnyLinear ? SkinnyLinear.TryLinear(seqFirst, resizer.weight!, resizer.bias) : null)
                       ?? resizer.forward(Precision.PrecisionPolicy.ToWeightDtype(seqFirst, resizer.weight!));   // [used,B,d]
        if (used < length)
            features = cat([features, zeros(length - used, features.shape[1], features.shape[2], dtype: features.dtype, device: features.device)], 0);
        return new TextEncoderOutput(mask.alias().MoveToOuterDisposeScope(), features.MoveToOuterDisposeScope(),
                                     embeds.transpose(0, 1).MoveToOuterDisposeScope());
    }

    /// <summary>1 + the index of the last unmasked position over the batch (at least 1): the positions anything reads.</summary>
    private static long UsedPositions(Tensor mask)
    {
        using var scope = NewDisposeScope();
        var valid = mask.logical_not().any(0).nonzero(); // [n,1] positions unmasked in some prompt
        return valid.numel() == 0 ? 1 : valid.max().item<long>() + 1;
    }
}
