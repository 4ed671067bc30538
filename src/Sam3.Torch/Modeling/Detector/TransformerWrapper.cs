using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Decoder;
using Sam3.Torch.Modeling.Encoder;
using TorchSharp;

namespace Sam3.Torch.Modeling.Detector;

/// <summary>The detector's encoder + decoder pair (model_misc.TransformerWrapper): keys <c>encoder.*</c>, <c>decoder.*</c>.</summary>
internal sealed class TransformerWrapper : torch.nn.Module
{
    public readonly TransformerEncoderFusion encoder;
    public readonly TransformerDecoder decoder;
    public int d_model { get; }

    public TransformerWrapper(Sam3Config cfg) : base(nameof(TransformerWrapper))
    {
        encoder = new TransformerEncoderFusion(cfg);
        decoder = new TransformerDecoder(cfg);
        d_model = cfg.Decoder.DModel;
        RegisterComponents();
    }
}
