using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Text;

/// <summary>Stack of <see cref="ResidualAttentionBlock"/> (text_encoder_ve.py <c>Transformer</c>); keys <c>resblocks.{i}.*</c>.</summary>
internal sealed class Transformer : nn.Module<Tensor, Tensor?, Tensor>
{
    public readonly ModuleList<ResidualAttentionBlock> resblocks;
    public int width { get; }
    public int layers { get; }

    public Transformer(int width, int layers, int heads, int mlpWidth, double layerNormEps) : base(nameof(Transformer))
    {
        this.width = width;
        this.layers = layers;
        resblocks = new ModuleList<ResidualAttentionBlock>();
        for (int i = 0; i < layers; i++) resblocks.Add(new ResidualAttentionBlock(width, heads, mlpWidth, layerNormEps));
        RegisterComponents();
    }

    /// <summary><paramref name="x"/> [B,L,W] batch-first.</summary>
    public override Tensor forward(Tensor x, Tensor? attnMask)
    {
        using var scope = NewDisposeScope();
        foreach (var block in resblocks) x = block.forward(x, attnMask);
        return x.MoveToOuterDisposeScope();
    }
}
