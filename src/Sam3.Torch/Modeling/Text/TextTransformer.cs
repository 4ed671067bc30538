using Sam3.Torch.Config;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Text;

/// <summary>
/// CLIP-style text transformer (text_encoder_ve.py <c>TextTransformer</c>, as built by VETextEncoder: output_tokens,
/// pool_type "none", causal mask, ln_final). Keys: <c>token_embedding.weight</c>, <c>positional_embedding</c>,
/// <c>transformer.resblocks.{i}.*</c>, <c>ln_final.*</c>, <c>text_projection</c> (a raw parameter whose product
/// upstream computes and SAM3 never uses; it is kept for key parity and not computed here).
/// The causal mask is a non-persistent buffer upstream: here it is built lazily per device and not registered.
/// </summary>
internal sealed class TextTransformer : nn.Module<Tensor, Tensor>
{
    public readonly Embedding token_embedding;
    public readonly Parameter positional_embedding;
    public readonly Transformer transformer;
    public readonly LayerNorm? ln_final;
    public readonly Parameter text_projection;

    public int context_length { get; }
    public int vocab_size { get; }
    public int width { get; }
    public int heads { get; }
    public int output_dim { get; }
    public bool causal_mask { get; }

    private readonly Dictionary<(DeviceType, int), Tensor> _maskCache = new();

    public TextTransformer(TextConfig c, double layerNormEps) : base(nameof(TextTransformer))
    {
        context_length = c.ContextLength;
        vocab_size = c.VocabSize;
        width = c.Width;
        heads = c.Heads;
        output_dim = c.OutputDim;
        causal_mask = c.CausalMask;
        token_embedding = nn.Embedding(c.VocabSize, c.Width);
        // open_clip's init_parameters (random-weight models only; a checkpoint overwrites both)
        positional_embedding = new Parameter(torch.randn(c.ContextLength, c.Width) * PositionalInitStd);
        transformer = new Transformer(c.Width, c.Layers, c.Heads, c.MlpHiddenDim, layerNormEps);
        if (c.UseLnPost) ln_final = nn.LayerNorm(c.Width, layerNormEps);
        text_projection = new Parameter(torch.randn(c.Width, c.OutputDim) * Math.Pow(c.Width, -0.5));
        RegisterComponents();
    }

    /// <summary>Standard deviation of the random positional embedding (open_clip <c>init_parameters</c>).</summary>
    private const double PositionalInitStd = 0.01;

    /// <summary>Additive causal mask [L,L] (−inf above the diagonal, 0 elsewhere), cached per device.</summary>
    public Tensor CausalMask(Device device, int seqLen)
    {
        var key = (device.type, device.index);
        if (!_maskCache.TryGetValue(key, out var mask))
        {
            using (var scope = NewDisposeScope())
            {
                mask = torch.full(context_length, context_length, float.NegativeInfinity, dtype: ScalarType.Float32, device: device)
                    .triu(1).MoveToOuterDisposeScope();
            }
            mask.DetachFromDisposeScope();
            _maskCache[key] = mask;
        }
        return mask[TensorIndex.Slice(null, seqLen), TensorIndex.Slice(null, seqLen)];
    }

    /// <summary>Token ids int64 [B,L] (L ≤ context_length) → token features after ln_final, [B,L,width].</summary>
    public override Tensor forward(Tensor text)
    {
        if (text.dim() != 2) throw new Sam3PromptException($"text token ids must be [B,L], got [{string.Join(",", text.shape)}]");
        int seqLen = (int)text.shape[1];
        if (seqLen > context_length) throw new Sam3PromptException($"text has {seqLen} tokens, the context length is {context_length}");
        using var scope = NewDisposeScope();
        var x = token_embedding.forward(text);
        var mask = causal_mask ? CausalMask(x.device, seqLen) : null;
        x = x + positional_embedding[TensorIndex.Slice(null, seqLen)];
        x = transformer.forward(x, mask);
        if (ln_final is not null) x = ln_final.forward(x);
        return x.MoveToOuterDisposeScope();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            foreach (var t in _maskCache.Values) t.Dispose();
            _maskCache.Clear();
        }
        base.Dispose(disposing);
    }
}
