using Sam3.Torch.Training.Lora;
using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using MultiheadAttention = Sam3.Torch.Modeling.Common.MultiheadAttention;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Decoder;

/// <summary>
/// One layer of the DETR-style detector decoder (sam3/model/decoder.py TransformerDecoderLayer). <b>Post-norm</b>, seq-first:
/// self-attention over <c>[presence; queries]</c> → <c>norm2</c>, text cross-attention → <c>catext_norm</c>, image
/// cross-attention (additive boxRPB bias) → <c>norm1</c>, FFN → <c>norm3</c>. The norm names do not follow execution order.
/// With DAC (training) the second half of the queries ("one-to-many") skips self-attention.
/// State-dict keys: <c>cross_attn.*, norm1.*, ca_text.*, catext_norm.*, self_attn.*, norm2.*, linear1.*, linear2.*, norm3.*</c>.
/// </summary>
internal sealed class TransformerDecoderLayer : nn.Module
{
    // Field order = the reference's registration order (so state_dict() lists keys in the same order).
    public readonly MultiheadAttention cross_attn;
    public readonly LayerNorm norm1;
    public readonly MultiheadAttention? ca_text;
    public readonly LayerNorm? catext_norm;
    public readonly MultiheadAttention self_attn;
    public readonly LayerNorm norm2;
    public readonly Linear linear1;
    public readonly Linear linear2;
    public readonly LayerNorm norm3;

    /// <summary>Dropout of the residual branches (upstream dropout1..4, catext_dropout); active only in training, settable.</summary>
    public double dropout { get; set; }
    private readonly Func<Tensor, Tensor> activation;
    private readonly bool reluActivation;

    /// <summary>Whether the layer has the text cross-attention (<c>use_text_cross_attention</c>).</summary>
    public bool UseTextCrossAttention => ca_text is not null;

    public TransformerDecoderLayer(DecoderConfig d, HardcodedConfig hc) : base(nameof(TransformerDecoderLayer))
    {
        dropout = hc.DecoderDropout;
        activation = Activations.Get(d.Activation);
        reluActivation = string.Equals(d.Activation, "relu", StringComparison.OrdinalIgnoreCase);
        cross_attn = new MultiheadAttention(d.DModel, d.NumHeads, dropout);
        norm1 = nn.LayerNorm(d.DModel, hc.LayerNormEps);
        if (d.UseTextCrossAttention)
        {
            ca_text = new MultiheadAttention(d.DModel, d.NumHeads, dropout);
            catext_norm = nn.LayerNorm(d.DModel, hc.LayerNormEps);
        }
        self_attn = new MultiheadAttention(d.DModel, d.NumHeads, dropout);
        norm2 = nn.LayerNorm(d.DModel, hc.LayerNormEps);
        linear1 = nn.Linear(d.DModel, d.DimFeedforward);
        linear2 = nn.Linear(d.DimFeedforward, d.DModel);
        norm3 = nn.LayerNorm(d.DModel, hc.LayerNormEps);
        RegisterComponents();
    }

    private Tensor Drop(Tensor x) => training && dropout > 0 ? nn.functional.dropout(x, dropout, training) : x;

    /// <summary>
    /// One layer. Shapes (seq-first): <paramref name="tgt"/> [Q,B,d] (Q = 2·num_queries with DAC),
    /// <paramref name="queryPos"/> [Q,B,d], <paramref name="memoryText"/> [S,B,d] with <paramref name="textAttentionMask"/>
    /// [B,S] (True = padding), <paramref name="memory"/>/<paramref name="memoryPos"/> [HW,B,d],
    /// <paramref name="memoryKeyPaddingMask"/> [B,HW] (True = padding), <paramref name="crossAttnMask"/> [B·heads,Q,HW]
    /// additive (boxRPB; a zero row is prepended here for the presence token, unless
    /// <paramref name="crossAttnMaskHasPresenceRow"/> says the mask is already [B·heads,1+Q,HW] with that zero row first),
    /// <paramref name="presenceToken"/> [1,B,d].
    /// <paramref name="memoryKey"/>, if given, is <c>memory + memoryPos</c> already added (the decoder adds it once for all
    /// layers in inference); <paramref name="inPlaceActivation"/> rectifies the FFN's hidden tensor in place (inference only:
    /// no autograd, ReLU).
    /// Returns the queries [Q,B,d] (un-normed) and the presence token [1,B,d] (null without one).
    /// </summary>
    public (Tensor tgt, Tensor? presence) forward(
        Tensor tgt, Tensor queryPos, Tensor memory,
        Tensor? memoryPos = null, Tensor? memoryText = null, Tensor? textAttentionMask = null,
        Tensor? memoryKeyPaddingMask = null, Tensor? selfAttnMask = null, Tensor? crossAttnMask = null,
        bool dac = false, bool dacUseSelfattLn = true, Tensor? presenceToken = null, bool crossAttnMaskHasPresenceRow = false,
        Tensor? memoryKey = null, bool inPlaceActivation = false, (Tensor k, Tensor v)? memoryKvProjected = null)
    {
        using var scope = NewDisposeScope();

        // ---- self-attention (only the one-to-one half with DAC), then norm2
        Tensor tgtO2o, posO2o;
        Tensor? tgtO2m = null;
        if (dac)
        {
            if (tgt.shape[0] % 2 != 0)
                throw new Sam3Exception($"DAC needs an even number of queries, got {tgt.shape[0]}");
            long n = tgt.shape[0] / 2;
            tgtO2o = tgt[TensorIndex.Slice(0, n)];
            posO2o = queryPos[TensorIndex.Slice(0, n)];
            tgtO2m = tgt[TensorIndex.Slice(n, null)];
        }
        else
        {
            tgtO2o = tgt;
            posO2o = queryPos;
        }
        if (presenceToken is not null)
        {
            // the presence token is prepended with a zero position embedding
            var zeroPos = zeros_like(presenceToken);
            tgtO2o = cat([presenceToken, tgtO2o], 0);
            posO2o = cat([zeroPos, posO2o], 0);
            queryPos = cat([zeroPos, queryPos], 0);
        }
        var qk = tgtO2o + posO2o;
        var sa = self_attn.forward(qk, qk, tgtO2o, attn_mask: selfAttnMask);
        tgtO2o = tgtO2o + Drop(sa);
        if (dac)
        {
            if (!dacUseSelfattLn) tgtO2o = norm2.forward(tgtO2o);
            tgt = cat([tgtO2o, tgtO2m!], 0);
            if (dacUseSelfattLn) tgt = norm2.forward(tgt);
        }
        else
        {
            tgt = norm2.forward(tgtO2o);
        }

        // ---- text cross-attention, then catext_norm
        if (ca_text is not null)
        {
            if (memoryText is null) throw new Sam3Exception("decoder layer: text cross-attention needs memory_text (the prompt)");
            var ca = ca_text.forward(tgt + queryPos, memoryText, memoryText, key_padding_mask: textAttentionMask);
            tgt = catext_norm!.forward(tgt + Drop(ca));
        }

        // ---- image cross-attention with the boxRPB bias, then norm1
        if (presenceToken is not null && crossAttnMask is not null && !crossAttnMaskHasPresenceRow)
        {
            var zeroRow = zeros_like(crossAttnMask[.., TensorIndex.Slice(0, 1), ..]);
            crossAttnMask = cat([zeroRow, crossAttnMask], 1); // (B·heads, 1+Q, HW)
        }
        var key = memoryKey ?? (memoryPos is null ? memory : memory + memoryPos);
        var xa = memoryKvProjected is { } kv
            ? cross_attn.ForwardProjectedKv(tgt + queryPos, key, memory, kv.k, kv.v, memoryKeyPaddingMask, crossAttnMask)
            : cross_attn.forward(tgt + queryPos, key, memory, key_padding_mask: memoryKeyPaddingMask, attn_mask: crossAttnMask);
        tgt = norm1.forward(tgt + Drop(xa));

        // ---- FFN (upstream runs it with autocast disabled, i.e. in fp32), then norm3
        var hidden = LoraHooks.Linear(linear1, tgt);
        hidden = inPlaceActivation && reluActivation && !training && !torch.is_grad_enabled() ? hidden.relu_() : activation(hidden);
        var ffn = LoraHooks.Linear(linear2, Drop(hidden));
        tgt = norm3.forward(tgt + Drop(ffn));

        Tensor? presenceOut = null;
        if (presenceToken is not null)
        {
            presenceOut = tgt[TensorIndex.Slice(0, 1)].MoveToOuterDisposeScope();
            tgt = tgt[TensorIndex.Slice(1, null)];
        }
        return (tgt.MoveToOuterDisposeScope(), presenceOut);
    }
}
