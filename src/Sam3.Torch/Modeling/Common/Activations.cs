using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Common;

/// <summary>Activation functions by their config names ("relu", "gelu" = exact erf GELU).</summary>
internal static class Activations
{
    public static Func<Tensor, Tensor> Get(string name) => name.ToLowerInvariant() switch
    {
        "relu" => x => nn.functional.relu(x),
        "gelu" => x => nn.functional.gelu(x),
        _ => throw new Sam3ConfigException($"unknown activation '{name}' (expected relu or gelu)"),
    };
}
