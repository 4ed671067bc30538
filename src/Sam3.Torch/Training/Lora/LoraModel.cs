using System.Text.Json;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Decoder;
using Sam3.Torch.Modeling.Vision;
using TorchSharp;
using TorchSharp.Modules;
using EncoderLayer = Sam3.Torch.Modeling.Encoder.TransformerEncoderLayer;
using TransformerDecoderLayer = Sam3.Torch.Modeling.Decoder.TransformerDecoderLayer;
using MultiheadAttention = Sam3.Torch.Modeling.Common.MultiheadAttention;
using VitMlp = Sam3.Torch.Modeling.Vision.VitMlp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Lora;

/// <summary>
/// LoRA adapters attached to one image model: created from <see cref="LoraOptions"/>, trained through
/// <see cref="Parameters"/>, saved and loaded on their own (a safetensors file with <c>&lt;target&gt;.lora_A</c> /
/// <c>&lt;target&gt;.lora_B</c> and the ranks/alphas in its metadata; the base weights are not in it), and mergeable into the
/// base weights (<c>W += (alpha/r)·B A</c>; the merged model is a plain model with the checkpoint's key layout).
/// Disposing detaches the adapters (the model returns to its base behaviour).
/// </summary>
internal sealed class LoraModel : IDisposable
{
    /// <summary>Safetensors metadata key holding the adapter list (target, rank, alpha).</summary>
    public const string MetadataKey = "sam3_lora";

    private readonly List<(LoraAdapter Adapter, Action Detach, Func<Tensor> Weight)> _adapters = new();
    public IReadOnlyList<LoraAdapter> Adapters => _adapters.Select(a => a.Adapter).ToList();

    private LoraModel() { }

    /// <summary>A projection of the model that can carry an adapter.</summary>
    internal sealed record Target(string Name, long In, long Out, Func<Tensor> Weight, Action<LoraAdapter> Attach, Action Detach);

    /// <summary>Every adaptable projection of <paramref name="model"/>, by name (module order).</summary>
    public static IReadOnlyList<Target> Targets(nn.Module model)
    {
        var list = new List<Target>();
        void AddLinear(string name, Linear l) =>
            list.Add(new Target(name, l.weight!.shape[1], l.weight.shape[0], () => l.weight!, a => LoraHooks.Attach(l, a), () => LoraHooks.Detach(l)));
        foreach (var (name, module) in model.named_modules())
        {
            if (name.StartsWith(LoraOptions.ExcludedPrefix, StringComparison.Ordinal)) continue;
            switch (module)
            {
                case MultiheadAttention m:
                    string[] parts = ["q_proj", "k_proj", "v_proj"];
                    for (int p = 0; p < 3; p++)
                    {
                        int part = p;
                        long e = m.embed_dim;
                        list.Add(new Target($"{name}.{parts[p]}", e, e, () => m.in_proj_weight.narrow(0, part * e, e),
                            a => LoraHooks.Attach(m, part, a), () => LoraHooks.Detach(m, part)));
                    }
                    AddLinear($"{name}.out_proj", m.out_proj);
                    break;
                case VitAttention v:
                    AddLinear($"{name}.qkv", v.qkv);
                    AddLinear($"{name}.proj", v.proj);
                    break;
                case VitMlp mlp:
                    AddLinear($"{name}.fc1", mlp.fc1);
                    AddLinear($"{name}.fc2", mlp.fc2);
                    break;
                case TransformerDecoderLayer d:
                    AddLinear($"{name}.linear1", d.linear1);
                    AddLinear($"{name}.linear2", d.linear2);
                    break;
                case EncoderLayer enc:
                    AddLinear($"{name}.linear1", enc.linear1);
                    AddLinear($"{name}.linear2", enc.linear2);
                    break;
            }
        }
        return list;
    }

    /// <summary>Attaches fresh adapters (B = 0: outputs unchanged) to every target matched by a part of <paramref name="options"/>.</summary>
    /// <exception cref="ArgumentException">A part matches no target.</exception>
    public static LoraModel Attach(nn.Module model, LoraOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        var targets = Targets(model);
        foreach (var part in options.Parts)
            if (!targets.Any(t => part.Patterns.Any(p => ParameterFreezing.Matches(t.Name, p))))
                throw new ArgumentException($"LoRA part '{part.Name}' (patterns {string.Join(", ", part.Patterns)}) matches no adaptable projection",
                    $"{nameof(options)}.{nameof(LoraOptions.Parts)}");
        var chosen = new List<(Target, int, double)>();
        foreach (var t in targets)
        {
            var part = options.Parts.FirstOrDefault(p => p.Patterns.Any(pat => ParameterFreezing.Matches(t.Name, pat)));
            if (part is not null) chosen.Add((t, part.Rank, part.Alpha));
        }
        var lora = Create(chosen);
        if (options.FreezeBase) foreach (var p in model.parameters()) p.requires_grad = false;
        return lora;
    }

    private static LoraModel Create(IEnumerable<(Target Target, int Rank, double Alpha)> chosen)
    {
        var lora = new LoraModel();
        try
        {
            foreach (var (t, rank, alpha) in chosen)
            {
                var w = t.Weight();
                var adapter = new LoraAdapter(t.Name, t.In, t.Out, rank, alpha, w.dtype, w.device);
                t.Attach(adapter);
                lora._adapters.Add((adapter, t.Detach, t.Weight));
            }
            return lora;
        }
        catch
        {
            lora.Dispose();
            throw;
        }
    }

    /// <summary>The trainable adapter parameters, named <c>&lt;target&gt;.lora_A</c> / <c>.lora_B</c>.</summary>
    public IEnumerable<(string Name, Parameter Parameter)> Parameters()
    {
        foreach (var (a, _, _) in _adapters)
        {
            yield return (a.Target + ".lora_A", a.lora_A);
            yield return (a.Target + ".lora_B", a.lora_B);
        }
    }

    /// <summary>Writes only the adapters (safetensors; ranks and alphas in the metadata).</summary>
    public void Save(string path)
    {
        var meta = JsonSerializer.Serialize(_adapters.Select(a => new AdapterInfo(a.Adapter.Target, a.Adapter.Rank, a.Adapter.Alpha)).ToList());
        var tensors = Parameters().Select(p => new KeyValuePair<string, Tensor>(p.Name, p.Parameter.detach().cpu()));
        SafetensorsWriter.Write(path, tensors.ToList(), new Dictionary<string, string> { [MetadataKey] = meta });
    }

    /// <summary>Attaches the adapters stored in <paramref name="path"/> (by <see cref="Save"/>) to <paramref name="model"/>.</summary>
    /// <exception cref="Sam3Exception">The file is not an adapter file or does not fit the model.</exception>
    public static LoraModel Load(nn.Module model, string path, bool freezeBase = true)
    {
        using var file = SafetensorsFile.Open(path);
        if (!file.Metadata.TryGetValue(MetadataKey, out var json))
            throw new Sam3Exception($"{path}: not a LoRA adapter file (no '{MetadataKey}' metadata)");
        var infos = JsonSerializer.Deserialize<List<AdapterInfo>>(json) ?? throw new Sam3Exception($"{path}: empty adapter list");
        var targets = Targets(model).ToDictionary(t => t.Name);
        var chosen = new List<(Target, int, double)>();
        foreach (var i in infos)
        {
            if (!targets.TryGetValue(i.Target, out var t)) throw new Sam3Exception($"{path}: adapter target '{i.Target}' is not in the model");
            chosen.Add((t, i.Rank, i.Alpha));
        }
        var lora = Create(chosen);
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = torch.no_grad();
            foreach (var (name, p) in lora.Parameters())
            {
                if (!file.Contains(name)) throw new Sam3Exception($"{path}: missing tensor '{name}'");
                var src = file.Load(name);
                if (!src.shape.SequenceEqual(p.shape))
                    throw new Sam3Exception($"{path}: '{name}' is [{string.Join(",", src.shape)}], the model needs [{string.Join(",", p.shape)}]");
                p.copy_(src);
            }
            if (file.Names.Count != infos.Count * 2) throw new Sam3Exception($"{path}: {file.Names.Count} tensors for {infos.Count} adapters");
        }
        catch
        {
            lora.Dispose();
            throw;
        }
        if (freezeBase) foreach (var p in model.parameters()) p.requires_grad = false;
        return lora;
    }

    /// <summary>Adds every adapter's ΔW into its base weight and detaches the adapters (this object is then empty).</summary>
    public void MergeIntoBase()
    {
        using (var scope = NewDisposeScope())
        using (torch.no_grad())
        {
            foreach (var (a, _, weight) in _adapters)
                weight().add_(a.Delta().to(weight().dtype));
        }
        Dispose();
    }

    public void Dispose()
    {
        foreach (var (a, detach, _) in _adapters)
        {
            detach();
            a.Dispose();
        }
        _adapters.Clear();
    }

    private sealed record AdapterInfo(string Target, int Rank, double Alpha);
}
