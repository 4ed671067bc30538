using System.Runtime.CompilerServices;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Lora;

/// <summary>
/// The call sites of the adaptable projections (attention q/k/v/out, the ViT's fused qkv and proj, the layers' MLPs) go
/// through here: <c>y = W x + b</c>, plus the LoRA update <c>(alpha/r)·B A x</c> when an adapter is attached to that
/// projection of that model instance. Without any attached adapter this is the plain projection (one integer test).
/// </summary>
internal static class LoraHooks
{
    private static readonly ConditionalWeakTable<object, LoraAdapter> Linears = new();
    private static readonly ConditionalWeakTable<object, LoraAdapter?[]> InProjections = new();
    private static int _attached;

    /// <summary><c>layer.forward(x)</c> plus its adapter's update.</summary>
    public static Tensor Linear(Linear layer, Tensor x)
    {
        var y = layer.forward(Precision.PrecisionPolicy.ToWeightDtype(x, layer.weight!));
        if (Volatile.Read(ref _attached) == 0 || !Linears.TryGetValue(layer, out var a)) return y;
        return a.AddTo(y, x);
    }

    /// <summary>Adds the adapter of part <paramref name="part"/> (0 = q, 1 = k, 2 = v) of a fused input projection owned by <paramref name="owner"/>.</summary>
    public static Tensor InProjection(object owner, int part, Tensor x, Tensor y)
    {
        if (Volatile.Read(ref _attached) == 0 || !InProjections.TryGetValue(owner, out var parts) || parts[part] is not { } a) return y;
        return a.AddTo(y, x);
    }

    /// <summary>Whether an adapter is attached to <paramref name="target"/> (a Linear, or any part of a fused in-projection's owner).</summary>
    internal static bool HasAdapter(object target) =>
        Volatile.Read(ref _attached) != 0
        && (Linears.TryGetValue(target, out _) || InProjections.TryGetValue(target, out var parts) && parts.Any(a => a is not null));

    internal static void Attach(Linear layer, LoraAdapter adapter)
    {
        if (Linears.TryGetValue(layer, out _)) throw new Sam3Exception($"a LoRA adapter is already attached to {adapter.Target}");
        Linears.Add(layer, adapter);
        Interlocked.Increment(ref _attached);
    }

    internal static void Attach(object owner, int part, LoraAdapter adapter)
    {
        var parts = InProjections.GetValue(owner, _ => new LoraAdapter?[3]);
        if (parts[part] is not null) throw new Sam3Exception($"a LoRA adapter is already attached to {adapter.Target}");
        parts[part] = adapter;
        Interlocked.Increment(ref _attached);
    }

    internal static void Detach(Linear layer)
    {
        if (Linears.Remove(layer)) Interlocked.Decrement(ref _attached);
    }

    internal static void Detach(object owner, int part)
    {
        if (InProjections.TryGetValue(owner, out var parts) && parts[part] is not null)
        {
            parts[part] = null;
            Interlocked.Decrement(ref _attached);
        }
    }
}
