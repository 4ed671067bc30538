using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Sam3.Torch.IO;

/// <summary>How one Hugging Face tensor is made from original (released <c>sam3.pt</c>) tensors, and back.</summary>
internal enum HfTransform
{
    /// <summary>Same values under another name.</summary>
    Copy,
    /// <summary>A fused <c>qkv</c>/<c>in_proj_*</c> tensor split into row thirds q | k | v (HF part 0, 1, 2).</summary>
    SplitQkv,
    /// <summary>The ViT <c>pos_embed</c> [1, 1+P, C] without its class row: [1, P, C].</summary>
    DropClsRow,
    /// <summary>The prompt encoder's <c>point_embeddings.{i}.weight</c> [1, C] stacked into <c>point_embed.weight</c> [n, C] (row i).</summary>
    StackRows,
    /// <summary>The CLIP <c>text_projection</c> [width, proj] stored as a Linear weight [proj, width].</summary>
    Transpose,
    /// <summary>One original tensor stored under two HF names (the prompt encoder's Fourier matrix).</summary>
    Duplicate,
}

/// <summary>One tensor of the HF layout: its key, shape, and the original key(s) it is made from.</summary>
/// <param name="Part">SplitQkv: 0 = q, 1 = k, 2 = v; otherwise 0.</param>
internal sealed record HfTensorPlan(string HfKey, long[] Shape, HfTransform Transform, IReadOnlyList<string> OriginalKeys, int Part);

/// <summary>One tensor of the original (released) layout rebuilt from HF tensors.</summary>
/// <param name="HfKeys">SplitQkv: the q, k, v keys in order; Duplicate: every HF name holding it (first = preferred); otherwise one key.</param>
/// <param name="Part">StackRows: the row of the HF tensor; otherwise 0.</param>
internal sealed record OriginalTensorPlan(string OriginalKey, long[] Shape, HfTransform Transform, IReadOnlyList<string> HfKeys, int Part);

/// <summary>An original key the HF layout does not hold, and why.</summary>
internal sealed record HfDroppedKey(string OriginalKey, long[] Shape, string Reason);

/// <summary>The original → HF plan of a key set: every HF tensor, and the original pieces without an HF tensor.</summary>
internal sealed record HfForwardPlan(IReadOnlyList<HfTensorPlan> Tensors, IReadOnlyList<HfDroppedKey> Dropped)
{
    public long NumElements => Tensors.Sum(t => t.Shape.Aggregate(1L, (a, b) => checked(a * b)));
}

/// <summary>
/// The Hugging Face <c>transformers</c> layout of SAM3 (the hub's <c>facebook/sam3</c> <c>model.safetensors</c>, written by
/// <c>convert_sam3_video_to_hf.py</c>; described rule by rule in <c>shared/pyref/README-hf.md</c>): key prefixes
/// <c>detector_model.</c> / <c>tracker_model.</c> / <c>tracker_neck.</c>, renamed modules, fused q/k/v split into row
/// thirds, the ViT position embedding without its class row, the four point embeddings stacked, <c>text_projection</c>
/// transposed, RoPE tables and the detector's six point projections not stored.
/// <para>
/// The rules are written once as bidirectional key templates (<c>{i}</c> a layer index, <c>{k+1}</c> an index with an
/// offset, <c>{3*j+1}</c> an affine index, <c>{L}</c> = weight|bias, <c>{P}</c> = q|k|v), so the original → HF plan
/// (<see cref="PlanToHf"/>) and the HF → original plan (<see cref="PlanToOriginal"/>) cannot drift apart. Both are strict:
/// a key no rule knows is an error naming it.
/// </para>
/// </summary>
internal static class HuggingFaceLayout
{
    public const string DetectorModelPrefix = "detector_model.";
    public const string TrackerModelPrefix = "tracker_model.";
    public const string TrackerNeckPrefix = "tracker_neck.";

    /// <summary>Original keys of the detector's point projections (no such modules in transformers).</summary>
    public const string PointProjectionPrefix = "detector.geometry_encoder.points_";

    /// <summary>Name of the cls row in the optional sidecar file of dropped pieces (<c>hf_dropped.safetensors</c>).</summary>
    public const string ClsRowSidecarKey = "detector.backbone.vision_backbone.trunk.pos_embed.cls_row";

    public const string PosEmbedKey = "detector.backbone.vision_backbone.trunk.pos_embed";

    /// <summary>Why a model loaded from the hub layout cannot take detector point prompts.</summary>
    public const string MissingPointProjectionsReason =
        "the checkpoint has no detector point projections (geometry_encoder.points_direct_project / points_pool_project / " +
        "points_pos_enc_project): the Hugging Face transformers layout (hub model.safetensors) does not store them, so " +
        "point prompts in detector mode are unavailable with it; use boxes, text, or interactive (SAM1-style) points, " +
        "or load the original sam3.pt";

    /// <summary>True when any key has one of the three HF top-level prefixes.</summary>
    public static bool IsHfKeySet(IEnumerable<string> keys) =>
        keys.Any(k => k.StartsWith(DetectorModelPrefix, StringComparison.Ordinal) || k.StartsWith(TrackerModelPrefix, StringComparison.Ordinal)
                      || k.StartsWith(TrackerNeckPrefix, StringComparison.Ordinal));

    // ------------------------------------------------------------------ planning

    /// <summary>
    /// Original (released) keys + shapes → the HF tensors (sorted by key, as <c>safetensors.save_file</c> lays them
    /// out) and the original pieces without an HF tensor. Unknown keys raise <see cref="Sam3CheckpointException"/>.
    /// </summary>
    public static HfForwardPlan PlanToHf(IReadOnlyList<(string Key, long[] Shape)> original)
    {
        var ctx = Context.ForOriginal(original.Select(o => o.Key));
        var shapes = original.ToDictionary(o => o.Key, o => o.Shape, StringComparer.Ordinal);
        var entries = new Dictionary<string, (HfTransform t, SortedDictionary<int, string> sources, int part)>(StringComparer.Ordinal);
        var dropped = new List<HfDroppedKey>();
        var unknown = new List<string>();
        foreach (var (key, shape) in original)
        {
            bool matched = false;
            foreach (var rule in Rules)
            {
                var r = rule.ToHf(key, ctx);
                if (r is null) continue;
                matched = true;
                if (rule.DroppedReason is { } reason)
                {
                    dropped.Add(new HfDroppedKey(key, shape, reason));
                    break;
                }
                foreach (var (hfKey, part) in r)
                {
                    if (!entries.TryGetValue(hfKey, out var e))
                        entries[hfKey] = e = (rule.Transform, new SortedDictionary<int, string>(), rule.Transform == HfTransform.StackRows ? 0 : part);
                    int slot = rule.Transform == HfTransform.StackRows ? part : 0;
                    if (!e.sources.TryAdd(slot, key))
                        throw new Sam3CheckpointException($"HF layout: '{hfKey}' would be made from both '{e.sources[slot]}' and '{key}'");
                }
                if (rule.Transform == HfTransform.DropClsRow)
                    dropped.Add(new HfDroppedKey(key + "[:, :1, :]", [shape[0], 1, shape[2]], "cls_row_dropped_by_converter"));
                break;
            }
            if (!matched) unknown.Add(key);
        }
        if (unknown.Count > 0)
            throw new Sam3CheckpointException($"{unknown.Count} original checkpoint key(s) have no Hugging Face counterpart, e.g. '{unknown[0]}'" +
                                              (unknown.Count > 1 ? $", '{unknown[1]}'" : ""));
        var tensors = new List<HfTensorPlan>();
        foreach (var (hfKey, (t, sources, part)) in entries.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var srcKeys = sources.Values.ToList();
            var s0 = shapes[srcKeys[0]];
            long[] shape = t switch
            {
                HfTransform.SplitQkv => s0[0] % 3 == 0 ? [s0[0] / 3, .. s0[1..]]
                    : throw new Sam3CheckpointException($"'{srcKeys[0]}' has {s0[0]} rows, not divisible into q/k/v thirds"),
                HfTransform.DropClsRow => s0.Length == 3 && s0[1] >= 1 ? [s0[0], s0[1] - 1, s0[2]]
                    : throw new Sam3CheckpointException($"'{srcKeys[0]}' has shape [{string.Join(",", s0)}], expected [1, 1+P, C]"),
                HfTransform.StackRows => StackShape(srcKeys, sources, shapes),
                HfTransform.Transpose => s0.Length == 2 ? [s0[1], s0[0]] : throw new Sam3CheckpointException($"'{srcKeys[0]}' is not 2-D"),
                _ => s0,
            };
            tensors.Add(new HfTensorPlan(hfKey, shape, t, srcKeys, part));
        }
        return new HfForwardPlan(tensors, dropped);
    }

    private static long[] StackShape(List<string> keys, SortedDictionary<int, string> sources, Dictionary<string, long[]> shapes)
    {
        if (sources.Keys.First() != 0 || sources.Keys.Last() != sources.Count - 1)
            throw new Sam3CheckpointException($"point embeddings are not numbered 0..{sources.Count - 1}: {string.Join(", ", keys)}");
        var s = shapes[keys[0]];
        foreach (var k in keys)
            if (!shapes[k].SequenceEqual(s) || s.Length != 2 || s[0] != 1)
                throw new Sam3CheckpointException($"'{k}' has shape [{string.Join(",", shapes[k])}], expected [1, C] like '{keys[0]}'");
        return [keys.Count, s[1]];
    }

    /// <summary>
    /// HF keys + shapes → the original tensors they rebuild (the RoPE tables, the pos_embed cls row and the detector point
    /// projections are not among them). A key no rule knows, an incomplete q/k/v triple or inconsistent shapes raise a
    /// <see cref="Sam3CheckpointMismatchException"/> listing every such key.
    /// </summary>
    public static IReadOnlyList<OriginalTensorPlan> PlanToOriginal(IReadOnlyList<(string Key, long[] Shape)> hf)
    {
        var ctx = Context.ForHf(hf.Select(h => h.Key));
        var shapes = hf.ToDictionary(h => h.Key, h => h.Shape, StringComparer.Ordinal);
        var order = new List<string>();
        var byOriginal = new Dictionary<string, (HfTransform t, SortedDictionary<int, string> parts, List<string> dups, int row)>(StringComparer.Ordinal);
        var unexpected = new List<string>();
        var wrongShape = new List<string>();
        var missing = new List<string>();
        foreach (var (key, shape) in hf)
        {
            bool matched = false;
            foreach (var rule in Rules)
            {
                var r = rule.ToOriginal(key, shape, ctx);
                if (r is null) continue;
                matched = true;
                foreach (var (orig, part) in r)
                {
                    if (!byOriginal.TryGetValue(orig, out var e))
                    {
                        byOriginal[orig] = e = (rule.Transform, new SortedDictionary<int, string>(), new List<string>(), rule.Transform == HfTransform.StackRows ? part : 0);
                        order.Add(orig);
                    }
                    if (rule.Transform == HfTransform.Duplicate) e.dups.Add(key);
                    else if (!e.parts.TryAdd(rule.Transform == HfTransform.SplitQkv ? part : 0, key)) unexpected.Add(key);
                }
                break;
            }
            if (!matched) unexpected.Add(key);
        }

        var plans = new List<OriginalTensorPlan>();
        foreach (var orig in order)
        {
            var (t, parts, dups, row) = byOriginal[orig];
            switch (t)
            {
                case HfTransform.SplitQkv:
                {
                    var names = parts.Values.ToList();
                    if (parts.Count != 3)
                    {
                        foreach (var p in new[] { 0, 1, 2 }.Where(p => !parts.ContainsKey(p)))
                            missing.Add(QkvSibling(names[0], p));
                        continue;
                    }
                    var s = shapes[names[0]];
                    if (names.Any(n => !shapes[n].SequenceEqual(s))) { wrongShape.AddRange(names); continue; }
                    plans.Add(new OriginalTensorPlan(orig, [3 * s[0], .. s[1..]], t, names, 0));
                    break;
                }
                case HfTransform.Duplicate:
                {
                    var s = shapes[dups[0]];
                    if (dups.Any(n => !shapes[n].SequenceEqual(s))) { wrongShape.AddRange(dups); continue; }
                    // prompt_encoder.shared_embedding first: the name transformers' prompt encoder reads
                    var sorted = dups.OrderBy(d => d.Contains("prompt_encoder.", StringComparison.Ordinal) ? 0 : 1).ToList();
                    plans.Add(new OriginalTensorPlan(orig, s, t, sorted, 0));
                    break;
                }
                default:
                {
                    string src = parts[0];
                    var s = shapes[src];
                    long[]? shape = t switch
                    {
                        HfTransform.DropClsRow => s.Length == 3 ? [s[0], s[1] + 1, s[2]] : null,
                        HfTransform.StackRows => s.Length == 2 && row < s[0] ? [1, s[1]] : null,
                        HfTransform.Transpose => s.Length == 2 ? [s[1], s[0]] : null,
                        _ => s,
                    };
                    if (shape is null) { wrongShape.Add(src); continue; }
                    plans.Add(new OriginalTensorPlan(orig, shape, t, [src], row));
                    break;
                }
            }
        }
        if (unexpected.Count + wrongShape.Count + missing.Count > 0)
        {
            var sb = new StringBuilder($"Hugging Face layout: {unexpected.Count} unexpected, {missing.Count} missing, {wrongShape.Count} wrongly shaped key(s)");
            foreach (var k in unexpected.Take(20)) sb.Append("\n  unexpected: ").Append(k);
            foreach (var k in missing.Take(20)) sb.Append("\n  missing: ").Append(k);
            foreach (var k in wrongShape.Distinct().Take(20)) sb.Append("\n  wrongly shaped: ").Append(k).Append(" [").Append(string.Join(",", shapes[k])).Append(']');
            throw new Sam3CheckpointMismatchException(sb.ToString(), missing, unexpected, wrongShape.Distinct().ToList(), []);
        }
        return plans;
    }

    private static string QkvSibling(string hfKey, int part)
    {
        var m = Regex.Match(hfKey, @"\.([qkv])_proj\.");
        return m.Success ? hfKey[..m.Groups[1].Index] + "qkv"[part] + hfKey[(m.Groups[1].Index + 1)..] : hfKey;
    }

    /// <summary>
    /// The released-layout key list of a model configuration (with its shapes): the image model's state dict with the
    /// interactive heads (<c>inst_interactive_predictor.model.*</c> → <c>tracker.*</c>, everything else → <c>detector.*</c>)
    /// plus the ViT RoPE tables as float32 [..., 2]. Equals the released <c>sam3.pt</c> key set for the full configuration.
    /// </summary>
    public static IReadOnlyList<(string Key, long[] Shape)> ReleasedKeys(IEnumerable<ExpectedTensor> imageModelWithInteractivity,
                                                                         IEnumerable<(string key, long[] shape)> trunkRopeTables)
    {
        var list = new List<(string, long[])>();
        foreach (var e in imageModelWithInteractivity)
            list.Add(e.Key.StartsWith(StateDictMapper.InstInteractivePrefix, StringComparison.Ordinal)
                ? (StateDictMapper.TrackerPrefix + e.Key[StateDictMapper.InstInteractivePrefix.Length..], e.Shape)
                : (StateDictMapper.DetectorPrefix + e.Key, e.Shape));
        foreach (var (key, shape) in trunkRopeTables) list.Add(("detector.backbone.vision_backbone.trunk." + key, shape));
        return list;
    }

    // ------------------------------------------------------------------ rule engine

    /// <summary>Key-set facts some rules need (neck levels with two deconvolutions, number of mask-downsampler stages).</summary>
    private sealed class Context
    {
        public HashSet<string> Keys { get; } = new(StringComparer.Ordinal);
        public int MaskDownsamplerStages { get; private set; }

        public static Context ForOriginal(IEnumerable<string> keys)
        {
            var c = new Context();
            foreach (var k in keys) c.Keys.Add(k);
            // encoder.{3j} conv, {3j+1} norm, {3j+2} activation (no parameters); the last index is the final 1x1 conv
            int max = -1;
            foreach (var k in c.Keys)
            {
                var m = Regex.Match(k, @"^tracker\.maskmem_backbone\.mask_downsampler\.encoder\.(\d+)\.");
                if (m.Success) max = Math.Max(max, int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture));
            }
            c.MaskDownsamplerStages = max < 0 ? 0 : max / 3;
            return c;
        }

        public static Context ForHf(IEnumerable<string> keys)
        {
            var c = new Context();
            foreach (var k in keys) c.Keys.Add(k);
            int max = -1;
            foreach (var k in c.Keys)
            {
                var m = Regex.Match(k, @"^tracker_model\.memory_encoder\.mask_downsampler\.layers\.(\d+)\.");
                if (m.Success) max = Math.Max(max, int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture));
            }
            c.MaskDownsamplerStages = max + 1;
            return c;
        }
    }

    /// <summary>A key template: literals and placeholders ({i}, {k+1}, {3*j+1}, {L}, {P}).</summary>
    private sealed class Template
    {
        private sealed record Piece(string? Literal, string? Var, int Mul, int Add);
        private readonly List<Piece> _pieces = new();
        private readonly Regex _regex;
        public string Text { get; }

        public Template(string text)
        {
            Text = text;
            var rx = new StringBuilder("^");
            int pos = 0, group = 0;
            foreach (Match m in Regex.Matches(text, @"\{(?:(\d+)\*)?([A-Za-z]\w*)(?:\+(\d+))?\}"))
            {
                if (m.Index > pos) AddLiteral(text[pos..m.Index], rx);
                string v = m.Groups[2].Value;
                int mul = m.Groups[1].Success ? int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : 1;
                int add = m.Groups[3].Success ? int.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture) : 0;
                _pieces.Add(new Piece(null, v, mul, add));
                rx.Append($"(?<g{group++}>").Append(v switch { "L" => "weight|bias", "P" => "[qkv]", _ => @"\d+" }).Append(')');
                pos = m.Index + m.Length;
            }
            if (pos < text.Length) AddLiteral(text[pos..], rx);
            rx.Append('$');
            _regex = new Regex(rx.ToString(), RegexOptions.CultureInvariant);
        }

        private void AddLiteral(string s, StringBuilder rx)
        {
            _pieces.Add(new Piece(s, null, 1, 0));
            rx.Append(Regex.Escape(s));
        }

        public bool Uses(string var) => _pieces.Any(p => p.Var == var);

        public Dictionary<string, string>? Match(string key)
        {
            var m = _regex.Match(key);
            if (!m.Success) return null;
            var vars = new Dictionary<string, string>(StringComparer.Ordinal);
            int g = 0;
            foreach (var p in _pieces)
            {
                if (p.Var is null) continue;
                string captured = m.Groups[$"g{g++}"].Value;
                string value = captured;
                if (p.Var is not ("L" or "P"))
                {
                    if (captured.Length > 1 && captured[0] == '0') return null; // no leading zeros: keys are canonical
                    long n = long.Parse(captured, CultureInfo.InvariantCulture) - p.Add;
                    if (n < 0 || n % p.Mul != 0) return null;
                    value = (n / p.Mul).ToString(CultureInfo.InvariantCulture);
                }
                if (vars.TryGetValue(p.Var, out var prev) && prev != value) return null;
                vars[p.Var] = value;
            }
            return vars;
        }

        public string Format(IReadOnlyDictionary<string, string> vars)
        {
            var sb = new StringBuilder();
            foreach (var p in _pieces)
            {
                if (p.Literal is not null) { sb.Append(p.Literal); continue; }
                string v = vars[p.Var!];
                if (p.Var is "L" or "P") sb.Append(v);
                else sb.Append((long.Parse(v, CultureInfo.InvariantCulture) * p.Mul + p.Add).ToString(CultureInfo.InvariantCulture));
            }
            return sb.ToString();
        }
    }

    /// <summary>One bidirectional rule: an original template and its HF template(s).</summary>
    private sealed class Rule
    {
        private readonly Template _orig;
        private readonly Template[] _hf;
        /// <summary>Extra condition on the variables (e.g. the final mask-downsampler conv), per direction.</summary>
        private readonly Func<Dictionary<string, string>, Context, bool>? _toHfWhen, _toOrigWhen;
        /// <summary>Binds variables the HF key does not carry (the final conv's index) when mapping back.</summary>
        private readonly Action<Dictionary<string, string>, Context>? _bindToOrig;

        public HfTransform Transform { get; }
        /// <summary>Non-null: the original key has no HF tensor (for DropClsRow: only its cls row).</summary>
        public string? DroppedReason { get; }

        public Rule(string orig, string[] hf, HfTransform transform, string? droppedReason = null,
                    Func<Dictionary<string, string>, Context, bool>? toHfWhen = null,
                    Func<Dictionary<string, string>, Context, bool>? toOrigWhen = null,
                    Action<Dictionary<string, string>, Context>? bindToOrig = null)
        {
            _orig = new Template(orig);
            _hf = hf.Select(h => new Template(h)).ToArray();
            Transform = transform;
            DroppedReason = droppedReason;
            _toHfWhen = toHfWhen;
            _toOrigWhen = toOrigWhen;
            _bindToOrig = bindToOrig;
        }

        /// <summary>HF keys (with their part: q/k/v index, or the stacked row) for an original key; null when the rule does not apply.</summary>
        public List<(string Key, int Part)>? ToHf(string key, Context ctx)
        {
            var vars = _orig.Match(key);
            if (vars is null || (_toHfWhen is not null && !_toHfWhen(vars, ctx))) return null;
            var result = new List<(string, int)>();
            foreach (var t in _hf)
            {
                if (Transform == HfTransform.SplitQkv)
                    for (int p = 0; p < 3; p++) result.Add((t.Format(new Dictionary<string, string>(vars) { ["P"] = "qkv"[p].ToString() }), p));
                else
                    result.Add((t.Format(vars), Transform == HfTransform.StackRows ? int.Parse(vars["n"], CultureInfo.InvariantCulture) : 0));
            }
            return result;
        }

        /// <summary>Original keys (with part) an HF key contributes to; null when the rule does not apply.</summary>
        public List<(string Key, int Part)>? ToOriginal(string hfKey, long[] shape, Context ctx)
        {
            foreach (var t in _hf)
            {
                var vars = t.Match(hfKey);
                if (vars is null) continue;
                _bindToOrig?.Invoke(vars, ctx);
                if (_toOrigWhen is not null && !_toOrigWhen(vars, ctx)) continue;
                if (Transform == HfTransform.SplitQkv)
                    return [(_orig.Format(vars), "qkv".IndexOf(vars["P"][0]))];
                if (Transform == HfTransform.StackRows)
                {
                    var list = new List<(string, int)>();
                    long rows = shape.Length == 2 ? shape[0] : 0;
                    for (int n = 0; n < rows; n++)
                        list.Add((_orig.Format(new Dictionary<string, string>(vars) { ["n"] = n.ToString(CultureInfo.InvariantCulture) }), n));
                    return list;
                }
                return [(_orig.Format(vars), 0)];
            }
            return null;
        }
    }

    private static readonly IReadOnlyList<Rule> Rules = BuildRules();

    private static List<Rule> BuildRules()
    {
        var r = new List<Rule>();
        void Copy(string o, string h) => r.Add(new Rule(o, [h], HfTransform.Copy));
        void Qkv(string o, string h) => r.Add(new Rule(o, [h], HfTransform.SplitQkv));
        void Dropped(string o, string reason) => r.Add(new Rule(o, [], HfTransform.Copy, reason));

        // ---- ViT trunk
        const string T = "detector.backbone.vision_backbone.trunk.", HT = "detector_model.vision_encoder.backbone.";
        r.Add(new Rule(T + "pos_embed", [HT + "embeddings.position_embeddings"], HfTransform.DropClsRow));
        Copy(T + "patch_embed.proj.{L}", HT + "embeddings.patch_embeddings.projection.{L}");
        Copy(T + "ln_pre.{L}", HT + "layer_norm.{L}");
        Copy(T + "blocks.{i}.norm1.{L}", HT + "layers.{i}.layer_norm1.{L}");
        Copy(T + "blocks.{i}.norm2.{L}", HT + "layers.{i}.layer_norm2.{L}");
        Copy(T + "blocks.{i}.mlp.fc1.{L}", HT + "layers.{i}.mlp.fc1.{L}");
        Copy(T + "blocks.{i}.mlp.fc2.{L}", HT + "layers.{i}.mlp.fc2.{L}");
        Copy(T + "blocks.{i}.attn.proj.{L}", HT + "layers.{i}.attention.o_proj.{L}");
        Qkv(T + "blocks.{i}.attn.qkv.{L}", HT + "layers.{i}.attention.{P}_proj.{L}");
        Dropped(T + "blocks.{i}.attn.freqs_cis", "dropped_recomputable");

        // ---- necks: SAM3 (detector) and SAM2 (tracker) FPN levels
        foreach (var (o, h) in new[] { ("detector.backbone.vision_backbone.convs.", "detector_model.vision_encoder.neck.fpn_layers."),
                                       ("detector.backbone.vision_backbone.sam2_convs.", "tracker_neck.fpn_layers.") })
        {
            // scale 4: dconv_2x2_0, GELU, dconv_2x2_1 → scale_layers.0 / .2; scale 2: dconv_2x2 → scale_layers.0
            string hPrefix = h;
            bool TwoDeconvs(Dictionary<string, string> v, Context c) =>
                c.Keys.Contains($"{hPrefix}{v["l"]}.scale_layers.2.weight");
            r.Add(new Rule(o + "{l}.dconv_2x2_0.{L}", [h + "{l}.scale_layers.0.{L}"], HfTransform.Copy, toOrigWhen: TwoDeconvs));
            r.Add(new Rule(o + "{l}.dconv_2x2.{L}", [h + "{l}.scale_layers.0.{L}"], HfTransform.Copy, toOrigWhen: (v, c) => !TwoDeconvs(v, c)));
            Copy(o + "{l}.dconv_2x2_1.{L}", h + "{l}.scale_layers.2.{L}");
            Copy(o + "{l}.conv_1x1.{L}", h + "{l}.proj1.{L}");
            Copy(o + "{l}.conv_3x3.{L}", h + "{l}.proj2.{L}");
        }

        // ---- text tower (CLIPTextModelWithProjection) and its resizer
        const string X = "detector.backbone.language_backbone.encoder.", HX = "detector_model.text_encoder.";
        Copy(X + "token_embedding.weight", HX + "text_model.embeddings.token_embedding.weight");
        Copy(X + "positional_embedding", HX + "text_model.embeddings.position_embedding.weight");
        Copy(X + "ln_final.{L}", HX + "text_model.final_layer_norm.{L}");
        Qkv(X + "transformer.resblocks.{i}.attn.in_proj_{L}", HX + "text_model.encoder.layers.{i}.self_attn.{P}_proj.{L}");
        Copy(X + "transformer.resblocks.{i}.attn.out_proj.{L}", HX + "text_model.encoder.layers.{i}.self_attn.out_proj.{L}");
        Copy(X + "transformer.resblocks.{i}.ln_1.{L}", HX + "text_model.encoder.layers.{i}.layer_norm1.{L}");
        Copy(X + "transformer.resblocks.{i}.ln_2.{L}", HX + "text_model.encoder.layers.{i}.layer_norm2.{L}");
        Copy(X + "transformer.resblocks.{i}.mlp.c_fc.{L}", HX + "text_model.encoder.layers.{i}.mlp.fc1.{L}");
        Copy(X + "transformer.resblocks.{i}.mlp.c_proj.{L}", HX + "text_model.encoder.layers.{i}.mlp.fc2.{L}");
        r.Add(new Rule(X + "text_projection", [HX + "text_projection.weight"], HfTransform.Transpose));
        Copy("detector.backbone.language_backbone.resizer.{L}", "detector_model.text_projection.{L}");

        // ---- encoder-style layers (geometry encoder, fusion encoder)
        void EncoderLayer(string o, string h)
        {
            Qkv(o + "self_attn.in_proj_{L}", h + "self_attn.{P}_proj.{L}");
            Copy(o + "self_attn.out_proj.{L}", h + "self_attn.o_proj.{L}");
            Qkv(o + "cross_attn_image.in_proj_{L}", h + "cross_attn.{P}_proj.{L}");
            Copy(o + "cross_attn_image.out_proj.{L}", h + "cross_attn.o_proj.{L}");
            Copy(o + "linear1.{L}", h + "mlp.fc1.{L}");
            Copy(o + "linear2.{L}", h + "mlp.fc2.{L}");
            Copy(o + "norm{n}.{L}", h + "layer_norm{n}.{L}");
        }
        const string G = "detector.geometry_encoder.", HG = "detector_model.geometry_encoder.";
        EncoderLayer(G + "encode.{i}.", HG + "layers.{i}.");
        Copy(G + "img_pre_norm.{L}", HG + "vision_layer_norm.{L}");
        Copy(G + "norm.{L}", HG + "prompt_layer_norm.{L}");
        Copy(G + "encode_norm.{L}", HG + "output_layer_norm.{L}");
        foreach (var same in new[] { "label_embed", "cls_embed", "boxes_direct_project", "boxes_pool_project", "boxes_pos_enc_project", "final_proj" })
            Copy(G + same + ".{L}", HG + same + ".{L}");
        foreach (var pts in new[] { "points_direct_project", "points_pool_project", "points_pos_enc_project" })
            Dropped(G + pts + ".{L}", "dropped_no_hf_module");
        EncoderLayer("detector.transformer.encoder.layers.{i}.", "detector_model.detr_encoder.layers.{i}.");

        // ---- DETR decoder
        const string D = "detector.transformer.decoder.", HD = "detector_model.detr_decoder.";
        foreach (var (o, h) in new[] { ("self_attn", "self_attn"), ("ca_text", "text_cross_attn"), ("cross_attn", "vision_cross_attn") })
        {
            Qkv(D + "layers.{i}." + o + ".in_proj_{L}", HD + "layers.{i}." + h + ".{P}_proj.{L}");
            Copy(D + "layers.{i}." + o + ".out_proj.{L}", HD + "layers.{i}." + h + ".o_proj.{L}");
        }
        Copy(D + "layers.{i}.norm1.{L}", HD + "layers.{i}.vision_cross_attn_layer_norm.{L}");
        Copy(D + "layers.{i}.catext_norm.{L}", HD + "layers.{i}.text_cross_attn_layer_norm.{L}");
        Copy(D + "layers.{i}.norm2.{L}", HD + "layers.{i}.self_attn_layer_norm.{L}");
        Copy(D + "layers.{i}.norm3.{L}", HD + "layers.{i}.mlp_layer_norm.{L}");
        Copy(D + "layers.{i}.linear1.{L}", HD + "layers.{i}.mlp.fc1.{L}");
        Copy(D + "layers.{i}.linear2.{L}", HD + "layers.{i}.mlp.fc2.{L}");
        Copy(D + "norm.{L}", HD + "output_layer_norm.{L}");
        Copy(D + "presence_token_out_norm.{L}", HD + "presence_layer_norm.{L}");
        foreach (var same in new[] { "query_embed", "reference_points", "presence_token" }) Copy(D + same + ".{L}", HD + same + ".{L}");
        foreach (var (o, h) in new[] { ("bbox_embed", "box_head"), ("presence_token_head", "presence_head"), ("ref_point_head", "ref_point_head"),
                                       ("boxRPB_embed_x", "box_rpb_embed_x"), ("boxRPB_embed_y", "box_rpb_embed_y") })
            Copy(D + o + ".layers.{k}.{L}", HD + h + ".layer{k+1}.{L}");

        // ---- segmentation head
        const string S = "detector.segmentation_head.", HS = "detector_model.mask_decoder.";
        Copy(S + "pixel_decoder.conv_layers.{i}.{L}", HS + "pixel_decoder.conv_layers.{i}.{L}");
        Copy(S + "pixel_decoder.norms.{i}.{L}", HS + "pixel_decoder.norms.{i}.{L}");
        Copy(S + "mask_predictor.mask_embed.layers.{i}.{L}", HS + "mask_embedder.layers.{i}.{L}");
        Copy(S + "instance_seg_head.{L}", HS + "instance_projection.{L}");
        Copy(S + "semantic_seg_head.{L}", HS + "semantic_projection.{L}");
        Qkv(S + "cross_attend_prompt.in_proj_{L}", HS + "prompt_cross_attn.{P}_proj.{L}");
        Copy(S + "cross_attend_prompt.out_proj.{L}", HS + "prompt_cross_attn.o_proj.{L}");
        Copy(S + "cross_attn_norm.{L}", HS + "prompt_cross_attn_norm.{L}");

        // ---- dot-product scoring
        const string P = "detector.dot_prod_scoring.", HP = "detector_model.dot_product_scoring.";
        Copy(P + "prompt_mlp.layers.{k}.{L}", HP + "text_mlp.layer{k+1}.{L}");
        Copy(P + "prompt_mlp.out_norm.{L}", HP + "text_mlp_out_norm.{L}");
        Copy(P + "prompt_proj.{L}", HP + "text_proj.{L}");
        Copy(P + "hs_proj.{L}", HP + "query_proj.{L}");

        // ---- tracker
        const string R = "tracker.", HR = "tracker_model.";
        Copy(R + "maskmem_tpos_enc", HR + "memory_temporal_positional_encoding");
        Copy(R + "no_mem_embed", HR + "no_memory_embedding");
        Copy(R + "no_mem_pos_enc", HR + "no_memory_positional_encoding");
        Copy(R + "no_obj_ptr", HR + "no_object_pointer");
        Copy(R + "no_obj_embed_spatial", HR + "occlusion_spatial_embedding_parameter");
        Copy(R + "mask_downsample.{L}", HR + "mask_downsample.{L}");
        Copy(R + "obj_ptr_tpos_proj.{L}", HR + "temporal_positional_encoding_projection_layer.{L}");
        // 3-layer MLPs (obj_ptr_proj_mlp_layers = iou_head_depth = 3, hard-coded upstream) → FeedForward naming
        void FeedForward3(string o, string h)
        {
            Copy(o + ".layers.0.{L}", h + ".proj_in.{L}");
            Copy(o + ".layers.1.{L}", h + ".layers.0.{L}");
            Copy(o + ".layers.2.{L}", h + ".proj_out.{L}");
        }
        FeedForward3(R + "obj_ptr_proj", HR + "object_pointer_proj");
        FeedForward3(R + "sam_mask_decoder.output_hypernetworks_mlps.{h}", HR + "mask_decoder.output_hypernetworks_mlps.{h}");
        FeedForward3(R + "sam_mask_decoder.iou_prediction_head", HR + "mask_decoder.iou_prediction_head");
        FeedForward3(R + "sam_mask_decoder.pred_obj_score_head", HR + "mask_decoder.pred_obj_score_head");

        // memory attention (q/k/v already separate upstream)
        const string MA = R + "transformer.encoder.", HMA = HR + "memory_attention.";
        foreach (var a in new[] { "self_attn", "cross_attn_image" })
        {
            Copy(MA + "layers.{i}." + a + ".{P}_proj.{L}", HMA + "layers.{i}." + a + ".{P}_proj.{L}");
            Copy(MA + "layers.{i}." + a + ".out_proj.{L}", HMA + "layers.{i}." + a + ".o_proj.{L}");
        }
        Copy(MA + "layers.{i}.linear1.{L}", HMA + "layers.{i}.linear1.{L}");
        Copy(MA + "layers.{i}.linear2.{L}", HMA + "layers.{i}.linear2.{L}");
        Copy(MA + "layers.{i}.norm{n}.{L}", HMA + "layers.{i}.layer_norm{n}.{L}");
        Copy(MA + "norm.{L}", HMA + "layer_norm.{L}");

        // memory encoder: mask_downsampler.encoder = [conv, LayerNorm2d, GELU] × stages + final 1x1 conv
        const string ME = R + "maskmem_backbone.", HME = HR + "memory_encoder.";
        r.Add(new Rule(ME + "mask_downsampler.encoder.{3*f}.{L}", [HME + "mask_downsampler.final_conv.{L}"], HfTransform.Copy,
            toHfWhen: (v, c) => int.Parse(v["f"], CultureInfo.InvariantCulture) == c.MaskDownsamplerStages,
            bindToOrig: (v, c) => v["f"] = c.MaskDownsamplerStages.ToString(CultureInfo.InvariantCulture)));
        r.Add(new Rule(ME + "mask_downsampler.encoder.{3*j}.{L}", [HME + "mask_downsampler.layers.{j}.conv.{L}"], HfTransform.Copy,
            toHfWhen: (v, c) => int.Parse(v["j"], CultureInfo.InvariantCulture) < c.MaskDownsamplerStages));
        Copy(ME + "mask_downsampler.encoder.{3*j+1}.{L}", HME + "mask_downsampler.layers.{j}.layer_norm.{L}");
        Copy(ME + "pix_feat_proj.{L}", HME + "feature_projection.{L}");
        Copy(ME + "out_proj.{L}", HME + "projection.{L}");
        foreach (var (o, h) in new[] { ("dwconv", "depthwise_conv"), ("norm", "layer_norm"), ("pwconv1", "pointwise_conv1"), ("pwconv2", "pointwise_conv2") })
            Copy(ME + "fuser.layers.{i}." + o + ".{L}", HME + "memory_fuser.layers.{i}." + h + ".{L}");
        Copy(ME + "fuser.layers.{i}.gamma", HME + "memory_fuser.layers.{i}.scale");

        // prompt encoder
        const string PE = R + "sam_prompt_encoder.", HPE = HR + "prompt_encoder.";
        r.Add(new Rule(PE + "pe_layer.positional_encoding_gaussian_matrix",
            [HPE + "shared_embedding.positional_embedding", HR + "shared_image_embedding.positional_embedding"], HfTransform.Duplicate));
        r.Add(new Rule(PE + "point_embeddings.{n}.weight", [HPE + "point_embed.weight"], HfTransform.StackRows));
        foreach (var (o, h) in new[] { ("0", "conv1"), ("1", "layer_norm1"), ("3", "conv2"), ("4", "layer_norm2"), ("6", "conv3") })
            Copy(PE + "mask_downscaling." + o + ".{L}", HPE + "mask_embed." + h + ".{L}");
        Copy(PE + "not_a_point_embed.{L}", HPE + "not_a_point_embed.{L}");
        Copy(PE + "no_mask_embed.{L}", HPE + "no_mask_embed.{L}");

        // SAM mask decoder
        const string MD = R + "sam_mask_decoder.", HMD = HR + "mask_decoder.";
        foreach (var a in new[] { "layers.{i}.self_attn", "layers.{i}.cross_attn_token_to_image", "layers.{i}.cross_attn_image_to_token", "final_attn_token_to_image" })
        {
            Copy(MD + "transformer." + a + ".{P}_proj.{L}", HMD + "transformer." + a + ".{P}_proj.{L}");
            Copy(MD + "transformer." + a + ".out_proj.{L}", HMD + "transformer." + a + ".o_proj.{L}");
        }
        Copy(MD + "transformer.layers.{i}.norm{n}.{L}", HMD + "transformer.layers.{i}.layer_norm{n}.{L}");
        Copy(MD + "transformer.layers.{i}.mlp.lin1.{L}", HMD + "transformer.layers.{i}.mlp.proj_in.{L}");
        Copy(MD + "transformer.layers.{i}.mlp.lin2.{L}", HMD + "transformer.layers.{i}.mlp.proj_out.{L}");
        Copy(MD + "transformer.norm_final_attn.{L}", HMD + "transformer.layer_norm_final_attn.{L}");
        foreach (var (o, h) in new[] { ("0", "upscale_conv1"), ("1", "upscale_layer_norm"), ("3", "upscale_conv2") })
            Copy(MD + "output_upscaling." + o + ".{L}", HMD + h + ".{L}");
        foreach (var same in new[] { "iou_token", "mask_tokens", "obj_score_token", "conv_s0", "conv_s1" })
            Copy(MD + same + ".{L}", HMD + same + ".{L}");
        return r;
    }
}
