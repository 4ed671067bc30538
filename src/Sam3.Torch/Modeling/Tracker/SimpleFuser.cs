using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Tracker;

/// <summary>
/// A stack of independent CXBlocks (model/memory.py SimpleFuser; <c>get_clones</c> gives each layer its own weights),
/// optionally after a 1×1 input projection (off in SAM3, where <c>proj</c> is the identity).
/// </summary>
internal sealed class SimpleFuser : nn.Module<Tensor, Tensor>
{
    public readonly Conv2d? proj;
    public readonly ModuleList<CXBlock> layers;

    public SimpleFuser(Func<CXBlock> layer, int numLayers, int? dim = null, bool inputProjection = false) : base(nameof(SimpleFuser))
    {
        if (inputProjection)
        {
            if (dim is null) throw new Sam3ConfigException("SimpleFuser: input_projection needs dim");
            proj = nn.Conv2d(dim.Value, dim.Value, kernel_size: 1);
        }
        layers = new ModuleList<CXBlock>();
        for (int i = 0; i < numLayers; i++) layers.Add(layer());
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        if (proj is not null) x = proj.forward(Precision.PrecisionPolicy.ToWeightDtype(x, proj.weight!));
        foreach (var l in layers) x = l.forward(x);
        return x.MoveToOuterDisposeScope();
    }
}
