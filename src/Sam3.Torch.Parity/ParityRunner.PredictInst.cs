using System.Text.Json;
using Sam3.Torch.Processing;

namespace Sam3.Torch.Parity;

internal sealed partial class ParityRunner
{
    /// <summary>
    /// Scenario d: set the image with the processor, then one <see cref="Sam3InteractivePredictor"/> call per entry of
    /// <c>parameters.calls</c> (kwargs of upstream predict: point_coords/point_labels in original pixels, box xyxy —
    /// several boxes = one batched call —, multimask_output, mask_input as a reference "callK.low_res_masks…" = the best
    /// low-res logits of call K). Every call's prompt-encoder / mask-decoder tensors and outputs are compared.
    /// </summary>
    private partial void RunPredictInst(Context ctx)
    {
        var fx = ctx.Fixture!;
        var p = fx.Parameters;
        CheckResolution(fx);
        var (images, input) = Inputs(ctx, [p.GetProperty("image").GetString()!]);
        using var _ = input;
        var sizes = images.Select(i => (i.Height, i.Width)).ToList();
        if (p.TryGetProperty("original_hw", out var hw) && (hw[0].GetInt32() != sizes[0].Height || hw[1].GetInt32() != sizes[0].Width))
            throw new Sam3Exception($"scenario original_hw {hw[0]}x{hw[1]} differs from the decoded image {sizes[0].Height}x{sizes[0].Width}");
        double threshold = p.TryGetProperty("mask_threshold", out var mt) ? mt.GetDouble() : Config.HardcodedInClasses.Sam1MaskThreshold;

        Sam3ImageState state;
        using (Api.Record(ctx.Offer)) state = Sam3ImagePredictor.SetPreprocessed(Api, input, sizes);
        using var _state = state;
        var sam2 = state.Backbone.Sam2 ?? throw new Sam3Exception("the model has no SAM2 neck (interactive heads)");
        for (int i = 0; i < sam2.VisionPosEnc.Length; i++) ctx.Offer($"state.sam2_vision_pos_enc.{i}", sam2.VisionPosEnc[i]);

        var predictor = Api.CreateInteractivePredictor(new InteractivePredictorOptions { MaskThreshold = threshold });
        var done = new Dictionary<string, InteractivePrediction>();
        {
            foreach (var call in p.GetProperty("calls").EnumerateArray())
            {
                string tag = call.GetProperty("tag").GetString()!;
                var kw = call.GetProperty("kwargs");
                bool multimask = !kw.TryGetProperty("multimask_output", out var mm) || mm.GetBoolean();
                bool returnLogits = kw.TryGetProperty("return_logits", out var rl) && rl.GetBoolean();
                var points = ReadPoints(kw);
                var boxes = ReadBoxes(kw);
                using var recorder = Api.Record(ctx.OfferGrounding(tag + "."));
                InteractivePrediction result;
                if (boxes.Count > 1)
                {
                    if (points.Count > 0 || IsPresent(kw, "mask_input"))
                        throw new NotSupportedException($"{tag}: points or mask_input together with a batch of boxes");
                    result = predictor.PredictBoxes(state, boxes, multimask, returnLogits: returnLogits);
                }
                else
                {
                    var maskInput = ReadMaskInput(kw, done, tag);
                    var prompt = new InteractivePrompt
                    {
                        Points = points, Box = boxes.Count == 1 ? boxes[0] : null, MaskInput = maskInput,
                        MultimaskOutput = multimask, ReturnLogits = returnLogits,
                    };
                    result = predictor.Predict(state, prompt);
                }
                done[tag] = result;
                // the public result's data, back as tensors of upstream's layout: [C,H,W] / [N,C,H,W]
                using var scope = TorchSharp.torch.NewDisposeScope();
                ctx.Offer(tag + ".masks", Stack(result, p => result.Masks(p).Select(m => TorchSharp.torch.tensor(m.Data).view(m.Height, m.Width).to(TorchSharp.torch.ScalarType.Bool))));
                ctx.Offer(tag + ".iou_predictions", Stack(result, p => [TorchSharp.torch.tensor(result.IouScores(p).ToArray())], squeezeInner: true));
                ctx.Offer(tag + ".low_res_masks", Stack(result, p => Enumerable.Range(0, result.MaskCount).Select(k =>
                    result.LowResLogits(k, p) is var l ? TorchSharp.torch.tensor(l.Values.ToArray()).view(l.Height, l.Width) : null!)));
            }
        }
    }

    /// <summary>Per prompt set the stacked tensors, with the prompt dimension only for a batched prediction.</summary>
    private static TorchSharp.torch.Tensor Stack(InteractivePrediction r, Func<int, IEnumerable<TorchSharp.torch.Tensor>> perPrompt, bool squeezeInner = false)
    {
        var sets = Enumerable.Range(0, r.PromptCount)
            .Select(p => { var parts = perPrompt(p).ToList(); return squeezeInner ? parts[0] : TorchSharp.torch.stack(parts); }).ToList();
        return r.IsBatched ? TorchSharp.torch.stack(sets) : sets[0];
    }

    private static bool IsPresent(JsonElement kw, string name) => kw.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null;

    private static List<PointPrompt> ReadPoints(JsonElement kw)
    {
        var list = new List<PointPrompt>();
        if (!IsPresent(kw, "point_coords")) return list;
        var coords = kw.GetProperty("point_coords").EnumerateArray().Select(Floats).ToList();
        if (!IsPresent(kw, "point_labels")) throw new Sam3Exception("point_coords without point_labels");
        var labels = kw.GetProperty("point_labels").EnumerateArray().Select(x => x.GetInt32()).ToList();
        if (labels.Count != coords.Count) throw new Sam3Exception($"{coords.Count} points with {labels.Count} labels");
        for (int i = 0; i < coords.Count; i++) {
            if (labels[i] is not (0 or 1)) throw new Sam3Exception($"point label {labels[i]} (0 or 1 expected)");
            list.Add(PointPrompt.Pixel(coords[i][0], coords[i][1], labels[i] == 1));
        }
        return list;
    }

    private static List<Box> ReadBoxes(JsonElement kw)
    {
        var list = new List<Box>();
        if (!IsPresent(kw, "box")) return list;
        var box = kw.GetProperty("box");
        // a single box [x0,y0,x1,y1] or a list of boxes [[...], ...]
        var rows = box[0].ValueKind == JsonValueKind.Array ? box.EnumerateArray().Select(Floats).ToList() : [Floats(box)];
        foreach (var r in rows)
        {
            if (r.Length != 4) throw new Sam3Exception($"box with {r.Length} coordinates (xyxy expected)");
            list.Add(Box.FromXyxy(r[0], r[1], r[2], r[3]));
        }
        return list;
    }

    /// <summary>mask_input given as a reference to an earlier call ("call1.low_res_masks[...] (argmax of call1.iou_predictions)").</summary>
    private static MaskLogits? ReadMaskInput(JsonElement kw, Dictionary<string, InteractivePrediction> done, string tag)
    {
        if (!IsPresent(kw, "mask_input")) return null;
        var m = kw.GetProperty("mask_input");
        if (m.ValueKind != JsonValueKind.String) throw new NotSupportedException($"{tag}: mask_input given as {m.ValueKind} (only a reference to an earlier call is supported)");
        string text = m.GetString()!;
        int dot = text.IndexOf(".low_res_masks", StringComparison.Ordinal);
        if (dot <= 0) throw new NotSupportedException($"{tag}: mask_input '{text}' is not a reference to an earlier call's low_res_masks");
        string source = text[..dot];
        if (!done.TryGetValue(source, out var earlier)) throw new Sam3Exception($"{tag}: mask_input refers to '{source}', which has not run before");
        // the best (highest predicted IoU) low-res mask of that call, as the fixture describes
        return earlier.BestLowResLogits();
    }
}
