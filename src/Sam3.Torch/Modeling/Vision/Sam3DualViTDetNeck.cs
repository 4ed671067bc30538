using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Vision;

/// <summary>
/// Simple-FPN neck of ViTDet, doubled for SAM3 and SAM2 (necks.py <c>Sam3DualViTDetNeck</c>). Holds the trunk (so
/// its keys are <c>trunk.*</c> below this module, as upstream) and one <c>nn.Sequential</c> per scale factor with the
/// upstream child names: 4.0 → <c>dconv_2x2_0</c>, <c>gelu</c>, <c>dconv_2x2_1</c>; 2.0 → <c>dconv_2x2</c>;
/// 1.0 → nothing; 0.5 → <c>maxpool_2x2</c>; each then <c>conv_1x1</c>, <c>conv_3x3</c>. <c>sam2_convs</c> is a second
/// copy with its own weights when <c>add_sam2_neck</c>. Every level gets a <see cref="PositionEmbeddingSine"/>
/// encoding, computed in float32 and cast to the feature dtype.
/// </summary>
internal sealed class Sam3DualViTDetNeck : nn.Module<Tensor, NeckOutput>
{
    public readonly ViT trunk;
    public readonly PositionEmbeddingSine position_encoding;
    public readonly ModuleList<Sequential> convs;
    public readonly ModuleList<Sequential>? sam2_convs;

    public IReadOnlyList<double> scale_factors { get; }
    public int d_model { get; }

    /// <param name="cfg">Whole configuration (Vit, Neck, PositionEncoding sections).</param>
    /// <param name="trunk">The ViT; built from <paramref name="cfg"/> when null.</param>
    public Sam3DualViTDetNeck(Sam3Config cfg, ViT? trunk = null)
        : this(trunk ?? new ViT(cfg), new PositionEmbeddingSine(cfg.PositionEncoding), cfg.Neck) { }

    public Sam3DualViTDetNeck(ViT trunk, PositionEmbeddingSine positionEncoding, NeckConfig neck) : base(nameof(Sam3DualViTDetNeck))
    {
        this.trunk = trunk;
        position_encoding = positionEncoding;
        scale_factors = neck.ScaleFactors.ToArray();
        d_model = neck.DModel;
        int dim = trunk.EmbedDim;
        convs = BuildConvs(dim, neck);
        if (neck.AddSam2Neck) sam2_convs = BuildConvs(dim, neck);
        RegisterComponents();
    }

    private static ModuleList<Sequential> BuildConvs(int dim, NeckConfig neck)
    {
        var list = new ModuleList<Sequential>();
        foreach (double scale in neck.ScaleFactors)
        {
            var seq = nn.Sequential();
            int outDim;
            if (scale == 4.0)
            {
                seq.append("dconv_2x2_0", nn.ConvTranspose2d(dim, dim / 2, kernel_size: 2, stride: 2));
                seq.append("gelu", nn.GELU());
                seq.append("dconv_2x2_1", nn.ConvTranspose2d(dim / 2, dim / 4, kernel_size: 2, stride: 2));
                outDim = dim / 4;
            }
            else if (scale == 2.0)
            {
                seq.append("dconv_2x2", nn.ConvTranspose2d(dim, dim / 2, kernel_size: 2, stride: 2));
                outDim = dim / 2;
            }
            else if (scale == 1.0)
            {
                outDim = dim;
            }
            else if (scale == 0.5)
            {
                seq.append("maxpool_2x2", nn.MaxPool2d(kernel_size: 2, stride: 2));
                outDim = dim;
            }
            else
            {
                throw new Sam3ConfigException($"neck scale_factor={scale} is not supported (4.0, 2.0, 1.0, 0.5)");
            }
            seq.append("conv_1x1", nn.Conv2d(outDim, neck.DModel, kernel_size: 1, bias: true));
            seq.append("conv_3x3", nn.Conv2d(neck.DModel, neck.DModel, kernel_size: 3, padding: 1L, bias: true));
            list.Add(seq);
        }
        return list;
    }

    /// <summary>Runs the trunk on <paramref name="images"/> <c>[B, 3, S, S]</c>, then both necks.</summary>
    public override NeckOutput forward(Tensor images)
    {
        using var scope = NewDisposeScope();
        var x = trunk.forward(images);
        return ForwardNecks(x).MoveToOuterDisposeScope();
    }

    /// <summary>Both necks on a trunk feature <c>[B, E, N, N]</c> (upstream <c>xs[-1]</c>).</summary>
    /// <param name="x">The trunk's output.</param>
    /// <param name="withSam2">False: only the SAM3 neck (the SAM2 levels can follow from the same <paramref name="x"/>
    /// with <see cref="ForwardSam2Neck"/>, with identical values).</param>
    public NeckOutput ForwardNecks(Tensor x, bool withSam2 = true)
    {
        if (x.dim() != 4 || x.shape[1] != trunk.EmbedDim)
            throw new Sam3Exception($"neck expects a trunk feature [B,{trunk.EmbedDim},H,W], got [{string.Join(",", x.shape)}]");
        using var scope = NewDisposeScope();
        int n = convs.Count;
        var sam3Out = new Tensor[n];
        var sam3Pos = new Tensor[n];
        bool sam2 = withSam2 && sam2_convs is not null;
        var sam2Out = sam2 ? new Tensor[n] : null;
        var sam2Pos = sam2 ? new Tensor[n] : null;
        for (int i = 0; i < n; i++)
        {
            // a scope per level: the level's intermediates (transposed convolutions, GELU, 1×1 output: up to ~0.3 GB at
            // full size) are freed as soon as its output exists, not when both necks are done
            using var level = NewDisposeScope();
            sam3Out[i] = convs[i].forward(Precision.PrecisionPolicy.ToModuleDtype(x, convs[i])).MoveToOuterDisposeScope();
            sam3Pos[i] = position_encoding.forward(sam3Out[i]).to(sam3Out[i].dtype).MoveToOuterDisposeScope();
            if (sam2)
            {
                sam2Out![i] = sam2_convs![i].forward(Precision.PrecisionPolicy.ToModuleDtype(x, sam2_convs[i])).MoveToOuterDisposeScope();
                sam2Pos![i] = position_encoding.forward(sam2Out[i]).to(sam2Out[i].dtype).MoveToOuterDisposeScope();
            }
        }
        return new NeckOutput(sam3Out, sam3Pos, sam2Out, sam2Pos).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The SAM2 neck alone on a trunk feature (the levels <see cref="ForwardNecks"/> computes with <c>withSam2</c>):
    /// per scale factor the feature map and its position encoding.
    /// </summary>
    public (Tensor[] Out, Tensor[] Pos) ForwardSam2Neck(Tensor x)
    {
        if (sam2_convs is null) throw new Sam3StateException("the neck has no SAM2 convolutions (add_sam2_neck = false)");
        if (x.dim() != 4 || x.shape[1] != trunk.EmbedDim)
            throw new Sam3Exception($"neck expects a trunk feature [B,{trunk.EmbedDim},H,W], got [{string.Join(",", x.shape)}]");
        int n = sam2_convs.Count;
        var outs = new Tensor[n];
        var pos = new Tensor[n];
        for (int i = 0; i < n; i++)
        {
            using var level = NewDisposeScope(); // the outputs go to the caller's scope, the intermediates die here
            outs[i] = sam2_convs[i].forward(Precision.PrecisionPolicy.ToModuleDtype(x, sam2_convs[i])).MoveToOuterDisposeScope();
            pos[i] = position_encoding.forward(outs[i]).to(outs[i].dtype).MoveToOuterDisposeScope();
        }
        return (outs, pos);
    }
}
