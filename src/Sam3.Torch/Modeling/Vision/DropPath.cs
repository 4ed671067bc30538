using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Vision;

/// <summary>
/// Stochastic depth per sample (timm <c>DropPath</c>, <c>scale_by_keep=True</c>): in training, each sample's residual
/// branch is zeroed with probability <see cref="drop_prob"/> and the kept ones are scaled by 1/(1−p). Identity at eval
/// or when p = 0. Has no weights.
/// </summary>
internal sealed class DropPath : nn.Module<Tensor, Tensor>
{
    private double _dropProb;

    /// <summary>Drop probability (settable, e.g. 0 for deterministic training); must be in [0, 1).</summary>
    public double drop_prob
    {
        get => _dropProb;
        set
        {
            if (value < 0 || value >= 1) throw new Sam3ConfigException($"drop_path probability must be in [0, 1), got {value}");
            _dropProb = value;
        }
    }

    public DropPath(double dropProb) : base(nameof(DropPath))
    {
        drop_prob = dropProb;
    }

    public override Tensor forward(Tensor x)
    {
        if (drop_prob == 0.0 || !training) return x.alias();
        using var scope = NewDisposeScope();
        double keep = 1.0 - drop_prob;
        var shape = new long[x.dim()];
        shape[0] = x.shape[0];
        for (int i = 1; i < shape.Length; i++) shape[i] = 1;
        var mask = torch.empty(shape, dtype: x.dtype, device: x.device).bernoulli_(keep);
        if (keep > 0) mask.div_(keep);
        return (x * mask).MoveToOuterDisposeScope();
    }
}
