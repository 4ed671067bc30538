using System.Text.RegularExpressions;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training.Optim;

/// <summary>One optimizer parameter group: its parameters (model order), lr = schedule(base lr) × layer scale, weight decay.</summary>
internal sealed class ParamGroup
{
    public required int Index { get; init; }
    public required double LrBase { get; init; }
    /// <summary>Layer-wise decay factor (ValueScaler.mult_val); 1 outside the decayed trunk.</summary>
    public required double LrScale { get; init; }
    public required double WeightDecay { get; init; }
    public required IReadOnlyList<(string Name, TorchSharp.Modules.Parameter Param)> Params { get; init; }
    /// <summary>The current learning rate (set by the schedule).</summary>
    public double Lr { get; set; }
}

/// <summary>
/// Upstream's <c>construct_optimizer</c> with the fine-tuning config's options and <c>layer_decay_param_modifier</c>:
/// lr groups (default = transformer and heads, vision backbone, language backbone), the vision backbone's trunk split
/// per layer (layer id of <c>ViT.get_layer_id</c>: patch_embed/ln_pre/pos_embed 0, block i → i+1, rest depth+1; scale
/// <c>decay^(depth+1-id)</c>; overrides by pattern, e.g. pos_embed × 1), names sorted to order the layer groups as
/// upstream; weight-decay groups (default wd, and 0 for <c>*bias*</c> and parameters owned directly by a LayerNorm);
/// groups = product(lr groups, wd groups) in that order, empty ones dropped, parameters in model order.
/// </summary>
internal static class ParamGroups
{
    /// <summary>fnmatch.fnmatchcase: shell pattern (*, ?, [seq], [!seq]) over the whole name, case-sensitive.</summary>
    public static bool FnMatch(string name, string pattern) => Regex.IsMatch(name, GlobToRegex(pattern), RegexOptions.CultureInvariant);

    private static string GlobToRegex(string pattern)
    {
        var sb = new System.Text.StringBuilder("^");
        for (int i = 0; i < pattern.Length; i++)
        {
            char ch = pattern[i];
            if (ch == '*') sb.Append(".*");
            else if (ch == '?') sb.Append('.');
            else if (ch == '[')
            {
                int j = pattern.IndexOf(']', i + 2 <= pattern.Length ? i + 2 : pattern.Length);
                if (j < 0) { sb.Append("\\["); continue; }
                string body = pattern[(i + 1)..j];
                if (body.StartsWith('!')) body = "^" + body[1..];
                sb.Append('[').Append(body.Replace("\\", "\\\\")).Append(']');
                i = j;
            }
            else sb.Append(Regex.Escape(ch.ToString()));
        }
        return sb.Append("$").ToString(); // fnmatch anchors the whole string (\Z)
    }

    /// <summary>ViT.get_layer_id of a full parameter name (BEiT rule).</summary>
    public static int VitLayerId(string name, int depth)
    {
        if (name.Contains("rel_pos")) return depth + 1;
        if (name.Contains("ln_pre")) return 0;
        if (name.Contains("pos_embed") || name.Contains("cls_token")) return 0;
        if (name.Contains("patch_embed")) return 0;
        int k = name.IndexOf("blocks", StringComparison.Ordinal);
        if (k >= 0)
        {
            var rest = name[(k + "blocks".Length)..].Split('.');
            return int.Parse(rest[1], System.Globalization.CultureInfo.InvariantCulture) + 1;
        }
        return depth + 1;
    }

    private sealed record LrSpec(double BaseLr, double Scale, HashSet<string> Names);

    /// <param name="model">The trained module (the image detector; names as upstream's Sam3Image).</param>
    /// <param name="trunkDepth">Number of blocks of the decayed trunk (ViT.get_num_layers); null = count
    /// <c>{apply_to}.blocks.N</c> in the parameter names.</param>
    /// <param name="allowlist">Only these parameters (names); null = all.</param>
    public static List<ParamGroup> Build(nn.Module model, OptimizerConfig cfg, int? trunkDepth = null, ISet<string>? allowlist = null)
    {
        var named = model.named_parameters().Where(p => allowlist is null || allowlist.Contains(p.name)).ToList();
        var all = named.Select(p => p.name).ToHashSet(StringComparer.Ordinal);

        // lr options: vision, language, default = the rest (set_default_parameters)
        HashSet<string> Match(string pattern)
        {
            var s = all.Where(n => FnMatch(n, pattern)).ToHashSet(StringComparer.Ordinal);
            if (s.Count == 0) throw new Sam3ConfigException($"optimizer param_names pattern '{pattern}' matches no parameter");
            return s;
        }
        var vision = Match(cfg.VisionBackbonePattern);
        var language = Match(cfg.LanguageBackbonePattern);
        var defaultLr = all.Where(n => !vision.Contains(n) && !language.Contains(n)).ToHashSet(StringComparer.Ordinal);
        var lrCfgs = new List<(double BaseLr, HashSet<string> Names)>
        {
            (cfg.LrTransformerBase * cfg.LrScale, defaultLr),
            (cfg.LrVisionBackboneBase * cfg.LrScale, vision),
            (cfg.LrLanguageBackboneBase * cfg.LrScale, language),
        };

        // wd options: default wd, and 0 for bias-like names and LayerNorm-owned parameters
        var noWd = new HashSet<string>(StringComparer.Ordinal);
        foreach (var pat in cfg.NoWeightDecayPatterns) noWd.UnionWith(Match(pat));
        if (cfg.NoWeightDecayForLayerNorm)
        {
            var owned = new HashSet<string>(StringComparer.Ordinal);
            foreach (var (modName, module) in model.named_modules())
            {
                if (module.GetType() != typeof(TorchSharp.Modules.LayerNorm)) continue;
                foreach (var (pn, _) in module.named_parameters(recurse: false))
                {
                    string full = modName.Length == 0 ? pn : modName + "." + pn;
                    if (all.Contains(full)) owned.Add(full);
                }
            }
            if (owned.Count == 0) throw new Sam3ConfigException("module_cls_names torch.nn.LayerNorm does not match any parameter of the model");
            noWd.UnionWith(owned);
        }
        var wdCfgs = new List<(double Wd, HashSet<string> Names)>
        {
            (cfg.WeightDecay, all.Where(n => !noWd.Contains(n)).ToHashSet(StringComparer.Ordinal)),
            (0.0, noWd),
        };

        // layer_decay_param_modifier on the lr options
        string applyTo = cfg.LayerDecayApplyTo;
        int depth = trunkDepth ?? CountBlocks(all, applyTo);
        int numLayers = depth + 1;
        var decays = Enumerable.Range(0, numLayers + 1).Select(i => Math.Pow(cfg.LayerDecay, numLayers - i)).ToArray();
        if (cfg.LayerDecayMin is double mn) decays = decays.Select(v => Math.Max(v, mn)).ToArray();
        var lrSpecs = new List<LrSpec>();
        foreach (var (baseLr, names) in lrCfgs)
        {
            var byLayer = new Dictionary<string, LrSpec>();
            var order = new List<string>();
            foreach (var name in names.OrderBy(n => n, StringComparer.Ordinal))
            {
                string layerKey = numLayers.ToString(System.Globalization.CultureInfo.InvariantCulture);
                double scale = decays[numLayers];
                if (name.StartsWith(applyTo, StringComparison.Ordinal))
                {
                    int id = VitLayerId(name, depth);
                    layerKey = id.ToString(System.Globalization.CultureInfo.InvariantCulture);
                    scale = decays[id];
                    foreach (var (pattern, value) in cfg.LayerDecayOverrides)
                        if (FnMatch(name, pattern)) { scale = value; layerKey = "pattern:" + pattern; break; }
                }
                if (!byLayer.TryGetValue(layerKey, out var spec))
                {
                    spec = new LrSpec(baseLr, scale, new HashSet<string>(StringComparer.Ordinal));
                    byLayer[layerKey] = spec;
                    order.Add(layerKey);
                }
                spec.Names.Add(name);
            }
            lrSpecs.AddRange(order.Select(k => byLayer[k]));
        }

        var groups = new List<ParamGroup>();
        foreach (var lr in lrSpecs)
            foreach (var (wd, wdNames) in wdCfgs)
            {
                var ps = named.Where(p => lr.Names.Contains(p.name) && wdNames.Contains(p.name)).Select(p => (p.name, p.parameter)).ToList();
                if (ps.Count == 0) continue;
                groups.Add(new ParamGroup { Index = groups.Count, LrBase = lr.BaseLr, LrScale = lr.Scale, WeightDecay = wd, Params = ps, Lr = 0 });
            }
        return groups;
    }

    private static int CountBlocks(IEnumerable<string> names, string applyTo)
    {
        var rx = new Regex("^" + Regex.Escape(applyTo) + @"\.blocks\.(\d+)\.");
        int max = -1;
        foreach (var n in names)
        {
            var m = rx.Match(n);
            if (m.Success) max = Math.Max(max, int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
        }
        return max + 1;
    }

    /// <summary>Optimizer.step_schedulers: every group's lr = InverseSquareRoot(base lr)(step, where) × layer scale.</summary>
    public static void StepSchedulers(IEnumerable<ParamGroup> groups, ScheduleConfig schedule, int step, double where)
    {
        foreach (var g in groups) g.Lr = new InverseSquareRootScheduler(g.LrBase, schedule).At(step, where) * g.LrScale;
    }

    /// <summary>
    /// <paramref name="groups"/> with each extra parameter (a LoRA adapter's A or B) appended to the group holding the model
    /// parameter it adapts (<c>GroupOf</c>): it trains at that weight's lr, layer-wise scale and weight decay.
    /// </summary>
    /// <exception cref="Sam3ConfigException">A <c>GroupOf</c> name is in no group.</exception>
    public static List<ParamGroup> WithExtra(List<ParamGroup> groups,
        IReadOnlyList<(string Name, TorchSharp.Modules.Parameter Param, string GroupOf)> extra)
    {
        if (extra.Count == 0) return groups;
        var added = groups.Select(_ => new List<(string, TorchSharp.Modules.Parameter)>()).ToList();
        foreach (var (name, p, of) in extra)
        {
            int g = groups.FindIndex(x => x.Params.Any(q => q.Name == of));
            if (g < 0) throw new Sam3ConfigException($"'{name}' joins the optimizer group of '{of}', which is in no group");
            added[g].Add((name, p));
        }
        return groups.Select((g, i) => added[i].Count == 0 ? g : new ParamGroup
        {
            Index = g.Index, LrBase = g.LrBase, LrScale = g.LrScale, WeightDecay = g.WeightDecay, Lr = g.Lr,
            Params = g.Params.Concat(added[i]).ToList(),
        }).ToList();
    }
}
