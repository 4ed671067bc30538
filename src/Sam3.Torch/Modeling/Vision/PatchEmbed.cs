using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Vision;

/// <summary>Image to patch embedding (vitdet.py <c>PatchEmbed</c>): a strided conv, output channels-last <c>[B, H/p, W/p, E]</c>.</summary>
internal sealed class PatchEmbed : nn.Module<Tensor, Tensor>
{
    public readonly Conv2d proj;

    public PatchEmbed(int patchSize, int inChans, int embedDim, bool bias) : base(nameof(PatchEmbed))
    {
        proj = nn.Conv2d(inChans, embedDim, kernel_size: patchSize, stride: patchSize, padding: 0L, bias: bias);
        RegisterComponents();
    }

    /// <param name="x">Images <c>[B, C, H, W]</c>.</param>
    /// <returns><c>[B, H/p, W/p, E]</c> (a permuted view of the conv output, as upstream).</returns>
    public override Tensor forward(Tensor x)
    {
        if (x.dim() != 4) throw new Sam3Exception($"PatchEmbed expects images [B,C,H,W], got [{string.Join(",", x.shape)}]");
        using var scope = NewDisposeScope();
        return proj.forward(Precision.PrecisionPolicy.ToWeightDtype(x, proj.weight!)).permute(0, 2, 3, 1).MoveToOuterDisposeScope();
    }
}
