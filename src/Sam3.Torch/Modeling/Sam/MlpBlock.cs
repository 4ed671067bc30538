using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Sam;

/// <summary>
/// Two-layer MLP of the SAM transformer blocks (sam/common.py MLPBlock): <c>lin2(act(lin1(x)))</c>. The activation is
/// parameter-free (TwoWayTransformer passes ReLU).
/// </summary>
internal sealed class MlpBlock : nn.Module<Tensor, Tensor>
{
    public readonly Linear lin1;
    public readonly Linear lin2;
    private readonly Func<Tensor, Tensor> act;

    public MlpBlock(int embeddingDim, int mlpDim, Func<Tensor, Tensor> activation) : base(nameof(MlpBlock))
    {
        lin1 = nn.Linear(embeddingDim, mlpDim);
        lin2 = nn.Linear(mlpDim, embeddingDim);
        act = activation;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return lin2.forward(act(lin1.forward(Precision.PrecisionPolicy.ToWeightDtype(x, lin1.weight!)))).MoveToOuterDisposeScope();
    }
}
