using Sam3.Torch.Config;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Tracker;

/// <summary>Output of the memory attention (seq-first, as upstream's dict): <c>memory</c> [HW, B, d] and <c>pos_embed</c> [HW, B, d].</summary>
internal sealed record MemoryAttentionOutput(Tensor Memory, Tensor? PosEmbed) : IDisposable
{
    public void Dispose()
    {
        Memory.Dispose();
        PosEmbed?.Dispose();
    }
}

/// <summary>
/// The tracker's memory attention (model/decoder.py TransformerEncoderCrossAttention, built with batch_first=True and no
/// removed cross-attention layers): <c>src + 0.1·src_pos</c> (pos_enc_at_input), the layers in batch-first layout, then
/// the final LayerNorm. Inputs and outputs are seq-first like upstream's module boundary.
/// </summary>
internal sealed class TransformerEncoderCrossAttention : nn.Module
{
    public readonly ModuleList<TransformerDecoderLayerv2> layers;
    public readonly LayerNorm norm;

    public int d_model { get; }
    public int num_layers { get; }
    public bool pos_enc_at_input { get; }
    private readonly double _inputPosScale;

    public TransformerEncoderCrossAttention(Sam3Config cfg) : base(nameof(TransformerEncoderCrossAttention))
    {
        var c = cfg.Tracker.MemoryAttention;
        d_model = c.DModel;
        num_layers = c.NumLayers;
        pos_enc_at_input = c.PosEncAtInput;
        _inputPosScale = cfg.HardcodedInClasses.MemoryAttentionInputPosScale;
        layers = new ModuleList<TransformerDecoderLayerv2>();
        for (int i = 0; i < c.NumLayers; i++) layers.Add(new TransformerDecoderLayerv2(cfg));
        norm = nn.LayerNorm(c.DModel, cfg.HardcodedInClasses.LayerNormEps);
        RegisterComponents();
    }

    /// <summary>
    /// <paramref name="src"/> current-frame features [HW, B, d]; <paramref name="prompt"/> memory tokens [M, B, mem_dim]
    /// (spatial memories first, then <paramref name="numObjPtrTokens"/> object-pointer tokens); <paramref name="srcPos"/>
    /// [HW, B, d]; <paramref name="promptPos"/> [M, B, mem_dim].
    /// </summary>
    public MemoryAttentionOutput forward(Tensor src, Tensor prompt, Tensor? srcPos, Tensor? promptPos, int numObjPtrTokens = 0)
    {
        if (src.dim() != 3 || prompt.dim() != 3) throw new Sam3Exception("memory attention expects seq-first [L, B, C] inputs");
        if (src.shape[1] != prompt.shape[1]) throw new Sam3Exception($"memory attention: batch size {src.shape[1]} of src differs from {prompt.shape[1]} of the memory");
        using var scope = NewDisposeScope();
        var output = src;
        if (pos_enc_at_input && srcPos is not null) output = output + _inputPosScale * srcPos;
        // batch-first inside the layers
        output = output.transpose(0, 1);
        var qPos = srcPos?.transpose(0, 1);
        var mem = prompt.transpose(0, 1);
        var mPos = promptPos?.transpose(0, 1);
        foreach (var layer in layers)
            output = layer.forward(output, mem, mPos, qPos, numObjPtrTokens);
        var normed = Precision.PrecisionPolicy.Norm(norm, output).transpose(0, 1); // fp32 under the bf16 policy, as autocast
        return new MemoryAttentionOutput(normed.MoveToOuterDisposeScope(), srcPos?.alias().MoveToOuterDisposeScope());
    }
}
