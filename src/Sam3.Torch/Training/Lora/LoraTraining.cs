using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Lora;

/// <summary>How <see cref="Loop.Sam3Trainer"/> trains LoRA adapters: each adapter parameter joins the optimizer group of the
/// weight it adapts (a fused attention input projection's q/k/v parts: <c>in_proj_weight</c>; a Linear: its <c>weight</c>).</summary>
internal static class LoraTraining
{
    /// <summary>(adapter parameter name, parameter, name of the adapted model weight) for every adapter of <paramref name="lora"/>.</summary>
    /// <exception cref="Sam3Exception">An adapter's target has no weight in <paramref name="model"/>.</exception>
    public static IReadOnlyList<(string Name, Parameter Param, string GroupOf)> OptimizerEntries(nn.Module model, LoraModel lora)
    {
        var names = model.named_parameters().Select(p => p.name).ToHashSet(StringComparer.Ordinal);
        var list = new List<(string, Parameter, string)>();
        foreach (var (name, p) in lora.Parameters())
        {
            string target = name[..name.LastIndexOf('.')];
            list.Add((name, p, BaseWeight(target, names)));
        }
        return list;
    }

    internal static string BaseWeight(string target, ISet<string> parameterNames)
    {
        if (parameterNames.Contains(target + ".weight")) return target + ".weight";
        int dot = target.LastIndexOf('.');
        if (dot > 0 && target[(dot + 1)..] is "q_proj" or "k_proj" or "v_proj" && parameterNames.Contains(target[..dot] + ".in_proj_weight"))
            return target[..dot] + ".in_proj_weight";
        throw new Sam3Exception($"LoRA target '{target}' has no weight in the model");
    }
}
