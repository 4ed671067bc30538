using static TorchSharp.torch;

namespace Sam3.Torch.Training.Optim;

/// <summary>
/// The optimizer side of upstream's <c>Trainer._step</c> / <c>train_epoch</c> for one model: parameter groups
/// (<see cref="ParamGroups"/>), <c>step_schedulers(where, step)</c>, <see cref="GradientClipper"/> over every parameter
/// with a gradient (model order) and the <see cref="AdamW"/> step.
/// </summary>
internal sealed class TrainingOptimizer
{
    private readonly nn.Module _model;
    public TrainingConfig Config { get; }
    public IReadOnlyList<ParamGroup> Groups { get; }
    public AdamW AdamW { get; }
    public GradientClipper Clipper { get; }

    private readonly IReadOnlyList<(string Name, TorchSharp.Modules.Parameter Param, string GroupOf)> _extra;

    /// <param name="allowlist">Parameters to train (frozen ones left out); null = all.</param>
    /// <param name="extra">Parameters outside the module (LoRA adapters), each joining the group of the model parameter
    /// named <c>GroupOf</c> (its lr, layer scale and weight decay); they are clipped and stepped with the others.</param>
    public TrainingOptimizer(nn.Module model, TrainingConfig config, ISet<string>? allowlist = null, int? trunkDepth = null,
        IReadOnlyList<(string Name, TorchSharp.Modules.Parameter Param, string GroupOf)>? extra = null)
    {
        _model = model;
        Config = config;
        _extra = extra ?? [];
        Groups = ParamGroups.WithExtra(ParamGroups.Build(model, config.Optimizer, trunkDepth, allowlist), _extra);
        AdamW = new AdamW(Groups, config.Optimizer);
        Clipper = new GradientClipper(config.GradientClip);
    }

    /// <summary>Sets every group's lr for training step <paramref name="step"/> at progress <paramref name="where"/> (0..1).</summary>
    public void StepSchedulers(int step, double where) => ParamGroups.StepSchedulers(Groups, Config.Schedule, step, where);

    /// <summary>
    /// Schedules, clips the gradients (<c>param.grad</c>, or <paramref name="gradOf"/>) and steps AdamW. Returns the
    /// gradient norm before clipping and the clip coefficient (null without clipping).
    /// </summary>
    public (Tensor TotalNorm, Tensor ClipCoef)? Step(int step, double where, Func<string, TorchSharp.Modules.Parameter, Tensor?>? gradOf = null)
    {
        gradOf ??= (_, p) => p.grad;
        StepSchedulers(step, where);
        var inGroups = Groups.SelectMany(g => g.Params.Select(p => p.Name)).ToHashSet(StringComparer.Ordinal);
        var grads = new List<Tensor>();
        foreach (var (name, p) in _model.named_parameters())
        {
            // upstream clips model.parameters(): every parameter with a gradient, trained or not
            var g = gradOf(name, p);
            if (g is not null) grads.Add(g);
        }
        foreach (var (name, p, _) in _extra)
            if (gradOf(name, p) is { } g) grads.Add(g);
        var clip = Clipper.Clip(grads);
        AdamW.Step((name, p) => inGroups.Contains(name) ? gradOf(name, p) : null);
        return clip;
    }
}
