using Sam3.Torch.Training.Lora;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Vision;

/// <summary>
/// The ViT block MLP (timm <c>layers.VitMlp</c>): <c>fc2(drop(act(fc1(x))))</c> with exact-erf GELU. State-dict keys
/// <c>fc1.*</c>, <c>fc2.*</c>. (Not to be confused with <see cref="Common.VitMlp"/>, the model_misc MLP.)
/// </summary>
internal sealed class VitMlp : nn.Module<Tensor, Tensor>
{
    public readonly Linear fc1;
    public readonly Linear fc2;
    /// <summary>Dropout after the activation (0 in SAM3; active only in training, settable).</summary>
    public double drop { get; set; }

    public VitMlp(int inFeatures, int hiddenFeatures, double drop = 0.0) : base(nameof(VitMlp))
    {
        fc1 = nn.Linear(inFeatures, hiddenFeatures);
        fc2 = nn.Linear(hiddenFeatures, inFeatures);
        this.drop = drop;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = LoraHooks.Linear(fc1, x);
        // Inference: GELU in place on fc1's fresh output (the same kernel, one [.., hidden] allocation less).
        h = torch.is_grad_enabled() ? nn.functional.gelu(h) : h.gelu_();
        if (drop > 0 && training) h = nn.functional.dropout(h, drop, training);
        return LoraHooks.Linear(fc2, h).MoveToOuterDisposeScope();
    }
}
