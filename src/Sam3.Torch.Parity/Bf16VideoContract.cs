using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

/// <summary>One step of a video scenario (a prompt call or a propagated frame) under the bf16 policy, against the fp32 fixture.</summary>
internal sealed record VideoStepFigures(string Step, int[] RefIds, int[] Ids, double[] Ious, double? ScoreDelta)
{
    public bool SameIds => RefIds.SequenceEqual(Ids);
}

/// <summary>A video scenario's figures: per step, and the summary (issue 15 item 4's measures).</summary>
internal sealed record VideoContractFigures(string Scenario, IReadOnlyList<VideoStepFigures> Steps, string? RunFailure, double Seconds)
{
    public bool SameIdsEverywhere => RunFailure is null && Steps.All(s => s.SameIds);
    public int Masks => Steps.Sum(s => s.Ious.Length);
    public double MeanIou => Steps.SelectMany(s => s.Ious).DefaultIfEmpty(double.NaN).Average();
    public double MinIou => Steps.SelectMany(s => s.Ious).DefaultIfEmpty(double.NaN).Min();
    public double ScoreMax => Steps.Select(s => s.ScoreDelta ?? 0).DefaultIfEmpty(0).Max();

    public override string ToString() =>
        FormattableString.Invariant($"{Scenario}: {Steps.Count} steps, {Masks} masks, same ids everywhere {SameIdsEverywhere}, IoU mean {MeanIou:F4} min {MinIou:F4}, score max|d| {ScoreMax:G4} ({Seconds:F1} s)")
        + (RunFailure is null ? "" : $"; run: {RunFailure}");
}

/// <summary>
/// The bf16 policy on the video scenarios e (tracker), e2 (interactive tracker) and f (video predictor, text): runs the
/// parity runner's own call sequence of the scenario with the models under <see cref="Precision.PrecisionPolicy"/>,
/// captures the produced outputs and measures them against the fp32 fixture (made by the official code) per step:
/// object ids, mask IoU at video resolution, and the score — the tracker's object-score logits (e, e2) or the
/// predictor's out_probs (f). The same steps and measures as <c>benchmarks/reference/gpu/autocast_contract.py</c>.
/// </summary>
internal static class Bf16VideoContract
{
    public static VideoContractFigures Measure(string fixtureRoot, string scenario)
    {
        var captured = new Dictionary<string, Tensor>();
        try
        {
            ScenarioReport report;
            using (var runner = new ParityRunner(fixtureRoot) { Bf16Policy = true, Capture = (k, t) => Keep(captured, k, t) })
                report = runner.Run(scenario);
            string? failure = report.Failure is { } f && !f.Contains("outside tolerance", StringComparison.Ordinal) ? f : null;
            using var fx = ScenarioFixture.Open(Path.Combine(fixtureRoot, "tiny", scenario + ".json"), fixtureRoot);
            var steps = Steps(scenario[..scenario.IndexOf('_')], fx.Parameters)
                .Select(s => Figures(fx, captured, s)).ToList();
            return new VideoContractFigures(scenario, steps, failure, report.Seconds);
        }
        finally
        {
            foreach (var t in captured.Values) t.Dispose();
        }
    }

    private static void Keep(Dictionary<string, Tensor> into, string key, Tensor t)
    {
        if (into.Remove(key, out var old)) old.Dispose();
        into[key] = t.detach().cpu().clone().DetachFromDisposeScope();
    }

    /// <summary>A step: its name, the fixture's object ids (null: read the recorded out_obj_ids), mask key, score key.</summary>
    private sealed record Step(string Name, int[]? Ids, string Mask, string? Score);

    private static int[] Ints(JsonElement a) => a.EnumerateArray().Select(x => x.GetInt32()).ToArray();

    private static IEnumerable<Step> Steps(string key, JsonElement p)
    {
        switch (key)
        {
            case "e":
            {
                var perFrame = p.GetProperty("per_frame").EnumerateArray().ToList();
                var all = perFrame.Count > 0 ? Ints(perFrame[0].GetProperty("obj_ids")) : [1, 2];
                yield return new Step("add_obj1", all[..1], "add_obj1.video_res_masks", null);
                yield return new Step("add_obj2", all, "add_obj2.video_res_masks", null);
                foreach (var pf in perFrame)
                {
                    string s = $"frame{pf.GetProperty("frame_idx").GetInt32()}";
                    yield return new Step(s, Ints(pf.GetProperty("obj_ids")), s + ".video_res_masks", s + ".obj_scores");
                }
                break;
            }
            case "e2":
                foreach (var c in p.GetProperty("calls").EnumerateArray())
                {
                    string name = c.GetProperty("call").GetString()!;
                    if (c.TryGetProperty("per_frame", out var pf))
                    {
                        foreach (var fr in pf.EnumerateArray())
                        {
                            string s = $"{name}.frame{fr.GetProperty("frame_idx").GetInt32()}";
                            yield return new Step(s, Ints(fr.GetProperty("obj_ids")), s + ".video_res_masks", s + ".obj_scores");
                        }
                    }
                    else if (c.TryGetProperty("obj_ids", out var ids))
                        yield return new Step(name, Ints(ids), name + ".video_res_masks", null);
                    else if (c.TryGetProperty("returned_obj_ids", out var ret) && c.TryGetProperty("updated_frames", out var upd))
                        foreach (var u in upd.EnumerateArray())
                        {
                            int fidx = u.ValueKind == JsonValueKind.Object ? u.GetProperty("frame_idx").GetInt32() : u.GetInt32();
                            yield return new Step($"{name}.frame{fidx}", Ints(ret), $"{name}.frame{fidx}.video_res_masks", null);
                        }
                }
                break;
            case "f":
            {
                int frames = p.GetProperty("frame_stats").GetArrayLength() - 1;
                foreach (var s in new[] { "add_prompt" }.Concat(Enumerable.Range(0, frames).Select(k => $"frame{k}")))
                    yield return new Step(s, null, s + ".out_binary_masks", s + ".out_probs");
                break;
            }
            default:
                throw new ArgumentException($"scenario kind '{key}' is not a video scenario (e, e2, f)", nameof(key));
        }
    }

    private static VideoStepFigures Figures(ScenarioFixture fx, Dictionary<string, Tensor> ours, Step s)
    {
        using var scope = NewDisposeScope();
        var refMasks = ReferenceMask(fx, s.Mask);
        int[] refIds = s.Ids ?? LongsToInts(fx.Get(s.Name + ".out_obj_ids"));
        if (!ours.TryGetValue(s.Mask, out var mine))
            return new VideoStepFigures(s.Name, refIds, [], [], null);
        int[] ids = s.Ids is null
            ? (ours.TryGetValue(s.Name + ".out_obj_ids", out var oi) ? LongsToInts(oi) : [])
            : (mine.shape[0] == refIds.Length ? refIds : Enumerable.Repeat(-1, (int)mine.shape[0]).ToArray()); // tracker: ids are the caller's; the runner checks them per frame
        long h = refMasks.shape[^2], w = refMasks.shape[^1];
        var r = refMasks.reshape(refIds.Length, h * w);
        var m = mine.to(ScalarType.Bool).reshape(ids.Length, -1);
        var ious = new List<double>();
        for (int i = 0; i < refIds.Length; i++)
        {
            int j = Array.IndexOf(ids, refIds[i]);
            if (j < 0 || m.shape[1] != h * w) continue;
            var a = r[i];
            var b = m[j];
            long union = a.logical_or(b).sum().item<long>();
            long inter = a.logical_and(b).sum().item<long>();
            ious.Add(union == 0 ? 1.0 : (double)inter / union);
        }
        double? score = null;
        if (s.Score is not null && fx.Has(s.Score) && ours.TryGetValue(s.Score, out var sc) && ids.SequenceEqual(refIds))
        {
            var want = fx.Get(s.Score).to(ScalarType.Float64).flatten();
            var got = sc.to(ScalarType.Float64).flatten();
            score = want.numel() == 0 ? 0 : (want - got).abs().max().item<double>();
        }
        return new VideoStepFigures(s.Name, refIds, ids, ious.ToArray(), score);
    }

    private static int[] LongsToInts(Tensor t) => t.to(ScalarType.Int64).flatten().data<long>().Select(x => (int)x).ToArray();

    /// <summary>The fixture's bool mask (bit-packed ones unpacked), [O, ..., H, W].</summary>
    private static Tensor ReferenceMask(ScenarioFixture fx, string name)
    {
        if (fx.Has(name)) return fx.Get(name).to(ScalarType.Bool);
        var packed = fx.Get(name + "_packbits");
        long width = fx.Parameters.TryGetProperty("video_hw", out var hw) ? hw[1].GetInt64()
            : throw new Sam3Exception($"{fx.Name}: a bit-packed mask needs parameters.video_hw for its width");
        var bytes = packed.contiguous().data<byte>().ToArray();
        long rowBytes = packed.shape[^1], rows = bytes.Length / rowBytes;
        var bits = new bool[rows * width];
        for (long row = 0; row < rows; row++)
            for (long x = 0; x < width; x++)
                bits[row * width + x] = (bytes[row * rowBytes + x / 8] & (0x80 >> (int)(x % 8))) != 0;
        long[] shape = [.. packed.shape[..^1], width];
        return torch.tensor(bits, shape);
    }
}
