using System.Runtime.CompilerServices;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Precision;

/// <summary>
/// The explicit counterpart of upstream's CUDA bf16 autocast (TorchSharp has no autocast). Upstream keeps every weight
/// in fp32 and lets autocast cast, per op, the arguments of matmul/linear/conv/bmm/SDPA to bf16, while LayerNorm,
/// GroupNorm, softmax, sums, exp/log/pow run in fp32 and everything else runs in its inputs' (promoted) dtype. This
/// policy reproduces that at load time:
/// <list type="bullet">
/// <item>the weights of the GEMM modules (<c>Linear</c>, <c>Conv1d/2d</c>, <c>ConvTranspose2d</c>, the packed
/// <c>in_proj_weight/bias</c> of <see cref="Modeling.Common.MultiheadAttention"/>) become bf16 — exactly the rounding
/// autocast applies to them on every call;</item>
/// <item>every other parameter and buffer stays fp32 (LayerNorm/GroupNorm affine, embeddings, positional tables,
/// learned tokens, reference boxes), so residual streams that start from fp32 values stay fp32 by type promotion, as
/// under autocast;</item>
/// <item>the GEMM call sites cast their input to the weight's dtype (<see cref="ToWeightDtype"/>), the op-level cast
/// autocast does;</item>
/// <item>upstream's explicit fp32 islands keep fp32 weights (<see cref="Fp32Islands"/>): the detector decoder's FFN
/// (<c>decoder.py</c> runs it under <c>autocast(enabled=False)</c>). The other islands upstream names (RoPE math,
/// position encodings computed in fp32 then cast down, mask logits cast <c>.float()</c> before interpolation, box
/// coordinates) are already fp32 in the modules or follow from the fp32 parameters above;</item>
/// <item>on CUDA, TF32 for matmuls and cuDNN, as upstream's <c>model_builder._setup_tf32</c>.</item>
/// </list>
/// </summary>
internal static class PrecisionPolicy
{
    /// <summary>The reduced dtype of the GEMM weights.</summary>
    public const ScalarType Reduced = ScalarType.BFloat16;

    /// <summary>
    /// Module paths (dotted, as in the state dict) whose GEMM weights stay fp32: a path matches when it ends with one of
    /// these suffixes after a layer index. Upstream: <c>TransformerDecoderLayer.forward_ffn</c> runs
    /// <c>linear1/linear2</c> with autocast disabled (<c>sam3/model/decoder.py:71</c>).
    /// </summary>
    public static readonly IReadOnlyList<string> Fp32Islands = ["transformer.decoder.layers.*.linear1", "transformer.decoder.layers.*.linear2"];

    /// <summary>Whether <paramref name="path"/> (a module's dotted name) is one of <see cref="Fp32Islands"/>.</summary>
    public static bool IsFp32Island(string path)
    {
        foreach (var pattern in Fp32Islands)
        {
            int star = pattern.IndexOf('*');
            string head = pattern[..star], tail = pattern[(star + 1)..];
            int at = path.IndexOf(head, StringComparison.Ordinal);
            if (at < 0 || !path.EndsWith(tail, StringComparison.Ordinal)) continue;
            var middle = path.AsSpan(at + head.Length, path.Length - at - head.Length - tail.Length);
            if (middle.Length > 0 && int.TryParse(middle, out _)) return true;
        }
        return false;
    }

    /// <summary>Whether <paramref name="module"/>'s own parameters feed a GEMM (the ops autocast casts to bf16).</summary>
    public static bool IsGemmModule(nn.Module module) =>
        module is Linear or Conv1d or Conv2d or ConvTranspose2d or Modeling.Common.MultiheadAttention;

    /// <summary>What <see cref="Apply"/> did: GEMM modules cast to bf16, fp32 island modules kept, parameters kept fp32.</summary>
    internal sealed record Summary(int GemmModules, int IslandModules, long Bf16Elements, long Fp32Elements, bool Tf32);

    /// <summary>
    /// Applies the policy to an fp32 network in place (see the class summary). Parameters are replaced by bf16 copies
    /// module by module (peak: the fp32 weights plus one module's bf16 copy).
    /// </summary>
    public static Summary Apply(nn.Module network)
    {
        ArgumentNullException.ThrowIfNull(network);
        int gemm = 0, islands = 0;
        foreach (var (name, module) in network.named_modules())
        {
            if (!IsGemmModule(module)) continue;
            if (IsFp32Island(name)) { islands++; continue; }
            module.to(Reduced);
            gemm++;
        }
        long bf = 0, fp = 0;
        foreach (var p in network.parameters())
        {
            if (p.dtype == Reduced) bf += p.numel();
            else if (p.dtype == ScalarType.Float32) fp += p.numel();
        }
        // the dtype ToModuleDtype needs, per module, recorded now (the policy is the only thing that changes it)
        foreach (var (_, module) in network.named_modules())
        {
            var first = module.parameters().FirstOrDefault();
            if (first is not null) ModuleDtypes.AddOrUpdate(module, new StrongBox<ScalarType>(first.dtype));
        }
        bool tf32 = false;
        var device = network.parameters().FirstOrDefault()?.device;
        if (device is { type: DeviceType.CUDA }) tf32 = EnableTf32();
        return new Summary(gemm, islands, bf, fp, tf32);
    }

    /// <summary>
    /// The op-level cast of autocast at a GEMM call site: <paramref name="x"/> in the dtype of the weight it meets
    /// (bf16 for the policy's GEMM modules, fp32 in the islands and in fp32 models, where this is a no-op).
    /// </summary>
    public static Tensor ToWeightDtype(Tensor x, Tensor weight) =>
        x.dtype == weight.dtype || !x.is_floating_point() ? x : x.to(weight.dtype);

    /// <summary>
    /// A normalisation (<c>LayerNorm</c>, <c>GroupNorm</c>) as autocast runs it: both are on autocast's fp32 list, so a
    /// bf16 input (a GEMM output fed straight to a norm) is normalised in fp32 and the result is fp32 — where the module
    /// itself would hand back bf16. Other inputs go through unchanged (a no-op in fp32 models).
    /// </summary>
    public static Tensor Norm(nn.Module<Tensor, Tensor> norm, Tensor x) =>
        norm.forward(x.dtype == Reduced ? x.to(ScalarType.Float32) : x);

    /// <summary>First-parameter dtype of every module of a network the policy was applied to (recorded by <see cref="Apply"/>).</summary>
    private static readonly ConditionalWeakTable<nn.Module, StrongBox<ScalarType>> ModuleDtypes = new();

    /// <summary>
    /// <see cref="ToWeightDtype"/> for a composite module (a <c>Sequential</c>): the dtype of its first parameter, as
    /// recorded by <see cref="Apply"/> (no parameter enumeration per call); modules of networks the policy was not
    /// applied to enumerate their parameters.
    /// </summary>
    public static Tensor ToModuleDtype(Tensor x, nn.Module module)
    {
        if (ModuleDtypes.TryGetValue(module, out var known))
            return x.dtype == known.Value || !x.is_floating_point() ? x : x.to(known.Value);
        foreach (var p in module.parameters())
            return ToWeightDtype(x, p);
        return x;
    }

    /// <summary>
    /// <c>seq.forward(x)</c> with the op-level cast in front of each GEMM child (<see cref="IsGemmModule"/>): inside a
    /// <c>Sequential</c>, a norm that returns fp32 as autocast does (<see cref="Modeling.Common.LayerNorm2d"/>) feeds the
    /// next convolution fp32, which autocast casts to bf16 per call. In fp32 models this is exactly <c>seq.forward(x)</c>.
    /// </summary>
    public static Tensor ForwardSequential(Sequential seq, Tensor x)
    {
        ArgumentNullException.ThrowIfNull(seq);
        using var scope = NewDisposeScope();
        foreach (var child in seq.children())
        {
            if (child is not nn.Module<Tensor, Tensor> m)
                throw new InvalidOperationException($"ForwardSequential: child {child.GetName()} is not a tensor-to-tensor module");
            x = m.forward(IsGemmModule(child) ? ToModuleDtype(x, child) : x);
        }
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <c>torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True</c> (upstream sets both in
    /// <c>model_builder._setup_tf32</c> on Ampere or newer GPUs). Returns false when LibTorch has no CUDA.
    /// </summary>
    public static bool EnableTf32()
    {
        if (!torch.cuda.is_available()) return false;
        torch.backends.cuda.matmul.allow_tf32 = true;
        torch.backends.cudnn.allow_tf32 = true;
        return true;
    }
}
