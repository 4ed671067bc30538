using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Lora;

/// <summary>
/// A low-rank update of one projection <c>W</c> [out, in]: <c>ΔW = (alpha / rank) · B A</c> with <see cref="lora_A"/>
/// [rank, in] (Kaiming-uniform, as PEFT) and <see cref="lora_B"/> [out, rank] (zeros: the adapted model starts equal to
/// the base model). Owns its two parameters.
/// </summary>
internal sealed class LoraAdapter : IDisposable
{
    public string Target { get; }
    public int Rank { get; }
    public double Alpha { get; }
    public double Scale => Alpha / Rank;
    public Parameter lora_A { get; }
    public Parameter lora_B { get; }

    public LoraAdapter(string target, long inFeatures, long outFeatures, int rank, double alpha, ScalarType dtype, Device device)
    {
        if (rank < 1) throw new ArgumentOutOfRangeException(nameof(rank), rank, $"LoRA rank of {target} must be at least 1");
        if (!(alpha > 0)) throw new ArgumentOutOfRangeException(nameof(alpha), alpha, $"LoRA alpha of {target} must be positive");
        Target = target;
        Rank = rank;
        Alpha = alpha;
        using var scope = NewDisposeScope();
        var a = torch.empty(rank, inFeatures, dtype: dtype, device: device);
        using (torch.no_grad()) nn.init.kaiming_uniform_(a, Math.Sqrt(5));
        lora_A = new Parameter(a.DetachFromDisposeScope());
        lora_B = new Parameter(torch.zeros(outFeatures, rank, dtype: dtype, device: device).DetachFromDisposeScope());
    }

    /// <summary><paramref name="y"/> + scale · (x Aᵀ) Bᵀ.</summary>
    public Tensor AddTo(Tensor y, Tensor x)
    {
        using var scope = NewDisposeScope();
        var delta = nn.functional.linear(nn.functional.linear(x, lora_A), lora_B);
        return (y + delta * Scale).MoveToOuterDisposeScope();
    }

    /// <summary>ΔW [out, in] (in the caller's dispose scope).</summary>
    public Tensor Delta() => lora_B.matmul(lora_A) * Scale;

    public void Dispose()
    {
        lora_A.Dispose();
        lora_B.Dispose();
    }
}
