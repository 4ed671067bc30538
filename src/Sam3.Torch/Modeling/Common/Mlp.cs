using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Common;

/// <summary>
/// Multi-layer perceptron with ReLU between layers (sam3.model.model_misc.MLP, and sam.mask_decoder.MLP when
/// <c>sigmoidOutput</c> is set). State-dict keys: <c>layers.{i}.weight/bias</c>, and <c>out_norm.*</c> when an output
/// LayerNorm is used.
/// </summary>
internal sealed class Mlp : nn.Module<Tensor, Tensor>
{
    public readonly ModuleList<Linear> layers;
    public readonly LayerNorm? out_norm;
    private readonly int num_layers;
    private readonly bool residual;
    private readonly bool sigmoid_output;
    /// <summary>Dropout between the layers (active only in training; settable for deterministic training).</summary>
    public double dropout { get; set; }

    public Mlp(int inputDim, int hiddenDim, int outputDim, int numLayers, double dropout = 0.0,
               bool residual = false, double? outNormEps = null, bool sigmoidOutput = false) : base(nameof(Mlp))
    {
        if (numLayers < 1) throw new ArgumentOutOfRangeException(nameof(numLayers));
        if (residual && inputDim != outputDim) throw new ArgumentException("residual is only supported if input_dim == output_dim");
        num_layers = numLayers;
        this.residual = residual;
        sigmoid_output = sigmoidOutput;
        this.dropout = dropout;
        layers = new ModuleList<Linear>();
        for (int i = 0; i < numLayers; i++)
        {
            int n = i == 0 ? inputDim : hiddenDim;
            int k = i == numLayers - 1 ? outputDim : hiddenDim;
            layers.Add(nn.Linear(n, k));
        }
        if (outNormEps is double eps) out_norm = nn.LayerNorm(outputDim, eps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var orig = x;
        for (int i = 0; i < num_layers; i++)
        {
            x = layers[i].forward(Precision.PrecisionPolicy.ToWeightDtype(x, layers[i].weight!));
            if (i < num_layers - 1)
            {
                x = nn.functional.relu(x);
                if (dropout > 0 && training) x = nn.functional.dropout(x, dropout, training);
            }
        }
        if (residual) x = x + orig;
        if (out_norm is not null) x = out_norm.forward(x);
        if (sigmoid_output) x = x.sigmoid();
        return x.MoveToOuterDisposeScope();
    }
}
