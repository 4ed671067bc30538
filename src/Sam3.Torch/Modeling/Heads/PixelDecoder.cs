using Sam3.Torch.Config;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Heads;

/// <summary>
/// FPN-style pixel decoder (sam3/model/maskformer_segmentation.py PixelDecoder): starting from the coarsest level, repeatedly
/// upsample (nearest by default) to the next finer level, add it, conv3×3, GroupNorm, ReLU. Keys:
/// <c>conv_layers.{i}.*</c>, <c>norms.{i}.*</c>, one pair per upsampling stage.
/// <para>Quirk (reproduced): the module builds <c>num_upsampling_stages</c> (3) conv/norm pairs, but the loop runs once per
/// level finer than the coarsest, i.e. 2 times for the 3 levels SAM3 passes; <c>conv_layers.2</c>/<c>norms.2</c> are stored
/// in the checkpoint and never used.</para>
/// </summary>
internal sealed class PixelDecoder : nn.Module<IList<Tensor>, Tensor>
{
    public readonly ModuleList<Conv2d> conv_layers;
    public readonly ModuleList<GroupNorm> norms;

    public int hidden_dim { get; }
    public int num_upsampling_stages { get; }
    public string interpolation_mode { get; }
    public int out_dim => hidden_dim;
    private readonly InterpolationMode mode;

    public PixelDecoder(SegmentationHeadConfig s, HardcodedConfig hc) : base(nameof(PixelDecoder))
    {
        hidden_dim = s.HiddenDim;
        num_upsampling_stages = s.UpsamplingStages;
        interpolation_mode = s.InterpolationMode;
        mode = s.InterpolationMode.ToLowerInvariant() switch
        {
            "nearest" => InterpolationMode.Nearest,
            "bilinear" => InterpolationMode.Bilinear,
            "bicubic" => InterpolationMode.Bicubic,
            _ => throw new Sam3ConfigException($"unsupported pixel decoder interpolation_mode '{s.InterpolationMode}'"),
        };
        conv_layers = new ModuleList<Conv2d>();
        norms = new ModuleList<GroupNorm>();
        for (int i = 0; i < s.UpsamplingStages; i++)
        {
            conv_layers.Add(nn.Conv2d(hidden_dim, hidden_dim, 3, stride: 1, padding: 1));
            norms.Add(nn.GroupNorm(hc.PixelDecoderGroupNormGroups, hidden_dim, hc.GroupNormEps));
        }
        RegisterComponents();
    }

    /// <summary>
    /// <paramref name="backboneFeats"/>: NCHW levels from finest to coarsest, all with hidden_dim channels (SAM3: [4N, 2N, N],
    /// the last replaced by the prompt-attended encoder memory). Returns [B, hidden_dim, H0, W0] at the finest resolution.
    /// Batch sizes broadcast (a batch-1 level is shared by every prompt).
    /// </summary>
    public override Tensor forward(IList<Tensor> backboneFeats)
    {
        if (backboneFeats.Count < 1) throw new Sam3Exception("pixel decoder needs at least one feature level");
        int stages = backboneFeats.Count - 1;
        if (stages > conv_layers.Count)
            throw new Sam3Exception($"pixel decoder has {conv_layers.Count} stages, got {backboneFeats.Count} levels");
        using var scope = NewDisposeScope();
        var prev = backboneFeats[^1];
        // finer levels, coarsest first; stage i uses conv_layers[i]/norms[i] (see the quirk above)
        for (int i = 0; i < stages; i++)
        {
            var cur = backboneFeats[stages - 1 - i];
            var up = mode == InterpolationMode.Nearest
                ? nn.functional.interpolate(prev, size: [cur.shape[^2], cur.shape[^1]], mode: mode)
                : nn.functional.interpolate(prev, size: [cur.shape[^2], cur.shape[^1]], mode: mode, align_corners: false);
            prev = cur + up;
            prev = conv_layers[i].forward(Precision.PrecisionPolicy.ToWeightDtype(prev, conv_layers[i].weight!));
            prev = nn.functional.relu(Precision.PrecisionPolicy.Norm(norms[i], prev));
        }
        if (stages == 0) prev = prev.alias();
        return prev.MoveToOuterDisposeScope();
    }
}
