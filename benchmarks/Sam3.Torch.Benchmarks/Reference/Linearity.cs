using System.Globalization;
using System.Text.Json.Nodes;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Modeling.Geometry;
using Sam3.Torch.Modeling.Heads;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks.Reference;

/// <summary>
/// <c>reference ours ... --linearity 1,5,20,50,200</c>: after one set_image, thresholds chosen from the image's own query
/// scores so that about K detections pass, for each K: the public <c>SetTextPrompt</c> (wall, CPU, peak RSS of that
/// call), then its parts through the internals — text (real tokens, cached by the predictor in the public call), fusion
/// encoder, decoder + scoring, segmentation head — and the post-processing alone (the public
/// <c>SetConfidenceThreshold(threshold, state)</c>: threshold, boxes, masks upsampled into the results). Shows what scales
/// with K (the post-processing) and what does not (the heads).
/// </summary>
internal static partial class ReferenceMode
{
    private static JsonArray Linearity(Sam3Model model, Sam3ImagePredictor predictor, RgbImage image, string prompt, int[] ks)
    {
        var rows = new JsonArray();
        using var inference = torch.inference_mode();
        using var state = predictor.SetImage(image);
        predictor.SetTextPrompt(state, prompt); // warm-up; fills the text cache and the raw outputs
        float[] sorted;
        using (var scope = NewDisposeScope())
        {
            var raw = state.RawOutput!;
            var probs = (raw.PredLogits![0].sigmoid() * raw.PresenceLogitDec![0].sigmoid().unsqueeze(0)).squeeze(-1).to(ScalarType.Float32);
            sorted = probs.contiguous().data<float>().ToArray().OrderByDescending(v => v).ToArray();
        }
        Console.WriteLine($"linearity on {image.Width}x{image.Height}, '{prompt}', {sorted.Length} queries, load {PostProcessProfile.Uptime()}");
        Console.WriteLine("| K (asked) | K | threshold | set_text_prompt wall | CPU | peak RSS of the call | text | fusion encoder | decoder + scoring | segmentation head | post-processing wall | CPU |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (int asked in ks)
        {
            int k = Math.Clamp(asked, 1, sorted.Length);
            // halfway between the K-th and the next score (scores can tie: the row reports the K obtained)
            double threshold = k < sorted.Length ? (sorted[k - 1] + (double)sorted[k]) / 2 : sorted[^1] / 2.0;
            predictor.SetConfidenceThreshold(threshold);
            GC.Collect();
            NativeHeap.Trim();
            ResetPeak();
            var total = new StageClock();
            var results = total.Time("set_text_prompt", () => predictor.SetTextPrompt(state, prompt));
            long peak = Memory().Hwm;
            int got = results[0].Count;
            results = null!;
            GC.Collect();

            var parts = new StageClock();
            using (var scope = NewDisposeScope())
                Heads(model, state.Backbone, prompt, parts).Dispose();
            var post = new StageClock();
            var refiltered = post.Time("postprocess", () => predictor.SetConfidenceThreshold(threshold, state)!);
            if (refiltered[0].Count != got) Console.Error.WriteLine($"K={asked}: re-filtering gave {refiltered[0].Count} detections, the call {got}");
            refiltered = null!;
            GC.Collect();

            var (tw, tc) = (total.Stages[0].Wall, total.Stages[0].Cpu);
            string S(string name) => $"{parts.Stages.First(s => s.Name == name).Wall:F2} s";
            Console.WriteLine($"| {asked} | {got} | {threshold:G6} | {tw:F2} s | {tc:F2} s | {peak / (double)(1L << 30):F2} GiB | {S("text")} | {S("fusion_encoder")} | " +
                              $"{S("decoder_scoring")} | {S("segmentation_head")} | {post.Stages[0].Wall:F2} s | {post.Stages[0].Cpu:F2} s |");
            var row = new JsonObject
            {
                ["k_asked"] = asked, ["k"] = got, ["threshold"] = threshold, ["peak_rss_bytes"] = peak,
                ["set_text_prompt"] = total.ToJson()["set_text_prompt"]!.DeepClone(), ["stages"] = parts.ToJson(),
                ["postprocess"] = post.ToJson()["postprocess"]!.DeepClone(),
            };
            rows.Add(row);
        }
        Console.WriteLine($"load after: {PostProcessProfile.Uptime()}");
        return rows;
    }

    /// <summary>
    /// The detector heads of set_text_prompt on an encoded image, stage by stage (<see cref="Staged"/> and
    /// <see cref="Linearity"/>): text over the prompt's real tokens (the image predictor's text path,
    /// skipPaddedPositions), fusion encoder, decoder + scoring, segmentation head. Returns the raw outputs (the caller
    /// disposes them; their tensors live in the caller's dispose scope).
    /// </summary>
    private static GroundingOutput Heads(Sam3Model owner, BackboneOutput backbone, string prompt, StageClock clock)
    {
        var net = owner.Network;
        var device = owner.TorchDevice;
        var (feats, mask) = clock.Time("text", () =>
        {
            var (ids, pad) = owner.Tokenizer.TokenizeToTensors([prompt]);
            var enc = net.backbone.ForwardText(ids.to(device), pad.to(device), skipPaddedPositions: true);
            return (enc.LanguageFeatures, enc.LanguageMask);
        });
        var imgIds = torch.zeros(1, dtype: ScalarType.Int64, device: device);
        var textIds = torch.zeros(1, dtype: ScalarType.Int64, device: device);
        var inputs = clock.Time("fusion_encoder", () =>
        {
            var txtFeats = feats.index_select(1, textIds);
            var txtMask = mask.index_select(0, textIds);
            var (f, pos, sizes) = net.GetImageFeatures(backbone, imgIds);
            var (geoFeats, geoMask) = net.geometry_encoder.forward(Prompt.Empty(1, device), f, sizes, pos);
            var p = torch.cat([txtFeats, geoFeats], 0);
            var pm = torch.cat([txtMask, geoMask], 1);
            var enc = net.transformer.encoder.forward(f, sizes, pos, p, pm);
            var (h, w) = sizes[^1];
            return new GroundingInputs(enc.Memory, enc.PosEmbed, h, w, p, pm, BackboneFpn: backbone.BackboneFpn, ImageIds: imgIds,
                PaddingMask: enc.PaddingMask, ValidRatios: enc.ValidRatios);
        });
        var output = new GroundingOutput();
        try
        {
            var hs = clock.Time("decoder_scoring", () => net.Grounding.RunDecoder(output, inputs));
            clock.Time("segmentation_head", () =>
            {
                net.Grounding.RunSegmentationHeads(output, inputs.BackboneFpn!, inputs.ImageIds, inputs.Memory, inputs.Prompt, inputs.PromptMask, hs);
                return 0;
            });
            return output;
        }
        catch
        {
            output.Dispose();
            throw;
        }
    }

    /// <summary>Number of real tokens (start, words, end) of the prompt.</summary>
    private static int TextTokens(Sam3Model model, string prompt)
    {
        using var scope = NewDisposeScope();
        var (ids, _) = model.Tokenizer.TokenizeToTensors([prompt]);
        return (int)ids[0].ne(0).sum().item<long>();
    }

    /// <summary>Resets VmHWM to the current RSS (Linux: <c>echo 5 &gt; /proc/self/clear_refs</c>), so that the next
    /// reading is the peak of what follows.</summary>
    private static void ResetPeak()
    {
        try { File.WriteAllText("/proc/self/clear_refs", "5"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { Console.Error.WriteLine($"cannot reset the peak RSS: {e.Message}"); }
    }
}
