using Sam3.Torch.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Optim;

/// <summary>
/// AdamW exactly as torch 1.13's <c>_single_tensor_adamw</c> (amsgrad off, maximize off), float32 state:
/// <code>
/// step += 1;  p *= 1 - lr·wd
/// m = m·β1 + (1-β1)·g;  v = v·β2 + (1-β2)·g·g
/// p += -(lr / (1-β1^step)) · m / (sqrt(v)/sqrt(1-β2^step) + eps)
/// </code>
/// Parameters whose gradient is null are skipped entirely (no weight decay, no state); an all-zero gradient still decays.
/// Betas/eps come from the config (the same in every group).
/// </summary>
internal sealed class AdamW
{
    private sealed class State
    {
        public required Tensor ExpAvg;
        public required Tensor ExpAvgSq;
        public long Step;
    }

    private readonly Dictionary<string, State> _state = new(StringComparer.Ordinal);
    public IReadOnlyList<ParamGroup> Groups { get; }
    public OptimizerConfig Config { get; }

    public AdamW(IReadOnlyList<ParamGroup> groups, OptimizerConfig config)
    {
        Groups = groups;
        Config = config;
    }

    /// <summary>One step. <paramref name="gradOf"/> gives a parameter's gradient (default: <c>param.grad</c>).</summary>
    public void Step(Func<string, TorchSharp.Modules.Parameter, Tensor?>? gradOf = null)
    {
        gradOf ??= (_, p) => p.grad;
        double beta1 = Config.Beta1, beta2 = Config.Beta2, eps = Config.Eps;
        using var _ = no_grad();
        foreach (var group in Groups)
        {
            double lr = group.Lr, wd = group.WeightDecay;
            foreach (var (name, p) in group.Params)
            {
                var grad = gradOf(name, p);
                if (grad is null) continue;
                if (!_state.TryGetValue(name, out var st))
                {
                    st = new State { ExpAvg = zeros_like(p).DetachFromDisposeScope(), ExpAvgSq = zeros_like(p).DetachFromDisposeScope() };
                    _state[name] = st;
                }
                using var scope = NewDisposeScope();
                st.Step += 1;
                p.mul_(1 - lr * wd);
                st.ExpAvg.mul_(beta1).add_(grad, alpha: 1 - beta1);
                st.ExpAvgSq.mul_(beta2).addcmul_(grad, grad, value: 1 - beta2);
                double biasCorrection1 = 1 - Math.Pow(beta1, st.Step);
                double biasCorrection2 = 1 - Math.Pow(beta2, st.Step);
                double stepSize = lr / biasCorrection1;
                double bc2Sqrt = Math.Sqrt(biasCorrection2);
                var denom = (st.ExpAvgSq.sqrt() / bc2Sqrt).add_(eps);
                p.addcdiv_(st.ExpAvg, denom, value: -stepSize);
            }
        }
    }

    /// <summary>Saves the state (exp_avg, exp_avg_sq per parameter, step counts) as safetensors + a json of steps and group lrs.</summary>
    public void Save(string safetensorsPath)
    {
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var steps = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var (name, st) in _state)
        {
            tensors[name + ".exp_avg"] = st.ExpAvg;
            tensors[name + ".exp_avg_sq"] = st.ExpAvgSq;
            steps[name] = st.Step;
        }
        SafetensorsWriter.Write(safetensorsPath, tensors);
        var meta = new { steps, groups = Groups.Select(g => new { g.Index, g.Lr, g.LrBase, g.LrScale, g.WeightDecay, names = g.Params.Select(p => p.Name).ToArray() }) };
        File.WriteAllText(Path.ChangeExtension(safetensorsPath, ".json"), System.Text.Json.JsonSerializer.Serialize(meta, new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>Restores a state written by <see cref="Save"/> (parameters must have the same names and shapes).</summary>
    public void Load(string safetensorsPath)
    {
        var metaPath = Path.ChangeExtension(safetensorsPath, ".json");
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(metaPath));
        var known = Groups.SelectMany(g => g.Params).ToDictionary(p => p.Name, p => p.Param, StringComparer.Ordinal);
        using var file = SafetensorsFile.Open(safetensorsPath);
        foreach (var st in _state.Values) { st.ExpAvg.Dispose(); st.ExpAvgSq.Dispose(); }
        _state.Clear();
        foreach (var prop in doc.RootElement.GetProperty("steps").EnumerateObject())
        {
            if (!known.TryGetValue(prop.Name, out var p)) throw new Sam3CheckpointException($"optimizer state for unknown parameter '{prop.Name}'");
            var m = file.Load(prop.Name + ".exp_avg").to(p.device);
            var v = file.Load(prop.Name + ".exp_avg_sq").to(p.device);
            if (!m.shape.SequenceEqual(p.shape) || !v.shape.SequenceEqual(p.shape))
                throw new Sam3CheckpointException($"optimizer state of '{prop.Name}' has shape [{string.Join(",", m.shape)}], parameter [{string.Join(",", p.shape)}]");
            _state[prop.Name] = new State { ExpAvg = m.DetachFromDisposeScope(), ExpAvgSq = v.DetachFromDisposeScope(), Step = prop.Value.GetInt64() };
        }
    }

    /// <summary>Number of parameters with state (stepped at least once).</summary>
    public int StateCount => _state.Count;
}
