using Sam3.Torch.Config;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Tracker;

/// <summary>
/// The tracker's <c>transformer</c> (model/model_misc.py TrackerTransformerWrapper built with <c>decoder=None</c>): it only holds
/// the memory attention as <c>encoder</c> and has no weights of its own.
/// </summary>
internal sealed class TrackerTransformerWrapper : nn.Module
{
    public readonly TransformerEncoderCrossAttention encoder;
    public int d_model { get; }

    public TrackerTransformerWrapper(Sam3Config cfg) : base(nameof(TrackerTransformerWrapper))
    {
        encoder = new TransformerEncoderCrossAttention(cfg);
        d_model = cfg.Tracker.MemoryAttention.DModel;
        RegisterComponents();
    }
}
