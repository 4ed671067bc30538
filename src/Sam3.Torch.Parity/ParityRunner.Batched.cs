using System.Text.Json;
using Sam3.Torch.Batched;
using Sam3.Torch.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

internal sealed partial class ParityRunner
{
    /// <summary>
    /// Scenario g (the batched DataPoint API): datapoints and queries as the json lists them (images, texts, pixel xyxy
    /// boxes with labels, coco ids), the inference transform, collation, one forward and the post-processor once per
    /// entry of <c>max_dets_per_img_runs</c>, with the json's post-processor arguments and threshold. Compares the inputs,
    /// the collated batch, the text/geometry/decoder hooks, the raw output dict and every post-processed result.
    /// </summary>
    private void RunBatchedApi(Context ctx)
    {
        var fx = ctx.Fixture!;
        var p = fx.Parameters;
        if (p.TryGetProperty("image_size", out var size) && size.GetInt32() != Config.ImageSize)
            throw new Sam3Exception($"scenario image_size {size.GetInt32()} differs from the configuration's image_size {Config.ImageSize}");
        if (p.TryGetProperty("transform", out var tr))
        {
            var mean = Doubles(tr.GetProperty("mean"));
            var std = Doubles(tr.GetProperty("std"));
            if (!mean.SequenceEqual(Config.ImageMean) || !std.SequenceEqual(Config.ImageStd))
                throw new Sam3Exception($"scenario mean/std [{string.Join(",", mean)}]/[{string.Join(",", std)}] differ from the configuration's");
        }
        var queriesJson = p.GetProperty("queries").EnumerateArray().ToList();
        var datapoints = new List<Datapoint>();
        int dpIndex = 0;
        foreach (var d in p.GetProperty("datapoints").EnumerateArray())
        {
            var image = ImageLoader.Load(fx.ResolvePath(d.GetProperty("image").GetString()!));
            var hw = d.GetProperty("original_hw");
            if (hw[0].GetInt32() != image.Height || hw[1].GetInt32() != image.Width)
                throw new Sam3Exception($"datapoint {dpIndex}: original_hw {hw[0]}x{hw[1]} differs from the decoded image {image.Height}x{image.Width}");
            using (var t = image.ToTensor(ImageTensorLayout.Hwc)) ctx.Offer($"input.dp{dpIndex}.image_rgb_uint8", t);
            var queries = new List<FindQuery>();
            foreach (var qi in d.GetProperty("queries").EnumerateArray())
            {
                var q = queriesJson[qi.GetInt32()];
                long id = q.GetProperty("coco_image_id").GetInt64();
                var meta = new InferenceMetadata(id, id, 1, image.Height, image.Width);
                var boxes = new List<BoxPrompt>();
                if (q.TryGetProperty("input_boxes_xyxy_px", out var bx) && bx.ValueKind == JsonValueKind.Array)
                {
                    var labels = q.GetProperty("input_box_labels").EnumerateArray().Select(x => x.GetBoolean()).ToArray();
                    int k = 0;
                    foreach (var b in bx.EnumerateArray())
                    {
                        var v = Floats(b);
                        boxes.Add(BoxPrompt.Xyxy(v[0], v[1], v[2], v[3], labels[k++]));
                    }
                }
                queries.Add(new FindQuery(q.GetProperty("query_text").GetString(), meta, boxes));
            }
            datapoints.Add(new Datapoint(image, queries));
            dpIndex++;
        }

        var predictor = new Sam3BatchedPredictor(Model, Tokenizer);
        using var batch = predictor.Collate(datapoints);
        for (int i = 0; i < batch.ResizedImages.Count; i++)
        {
            using var r = torch.tensor(batch.ResizedImages[i], dtype: ScalarType.Byte).view(Config.ImageSize, Config.ImageSize, 3);
            ctx.Offer($"input.dp{i}.resized_uint8", r);
        }
        var expectedTexts = p.GetProperty("find_text_batch").EnumerateArray().Select(x => x.GetString()!).ToList();
        if (!expectedTexts.SequenceEqual(batch.FindTextBatch))
            throw new Sam3Exception($"find_text_batch [{string.Join(", ", batch.FindTextBatch)}] differs from the reference [{string.Join(", ", expectedTexts)}]");
        ctx.Offer("batch.img_batch", batch.ImgBatch);
        ctx.Offer("batch.find_inputs.0.img_ids", batch.ImgIds);
        ctx.Offer("batch.find_inputs.0.text_ids", batch.TextIds);
        ctx.Offer("batch.find_inputs.0.input_boxes", batch.InputBoxes);
        ctx.Offer("batch.find_inputs.0.input_boxes_label", batch.InputBoxesLabel);
        ctx.Offer("batch.find_inputs.0.input_boxes_mask", batch.InputBoxesMask);
        foreach (var (name, t) in batch.MetadataTensors())
            using (t) ctx.Offer("batch.find_metadatas.0." + name, t);

        // forward, with the hooks; the prompt fed to the encoder is cat(text features of each query's text, geometry output)
        var kept = new Dictionary<string, Tensor>();
        void Probe(string name, Tensor t)
        {
            ctx.Offer(name == "text.token_ids" ? "batch.text.token_ids" : name == "enc.out.memory" ? "output.encoder_hidden_states" : name, t);
            if (name is "text.out.0" or "text.out.1" or "geo.out.0" or "geo.out.1") kept[name] = t.clone().DetachFromDisposeScope();
        }
        try
        {
            using var output = predictor.Forward(batch, Probe);
            using (var scope = NewDisposeScope())
            {
                var prompt = torch.cat([kept["text.out.1"].index_select(1, batch.TextIds), kept["geo.out.0"]], 0);
                var promptMask = torch.cat([kept["text.out.0"].index_select(0, batch.TextIds), kept["geo.out.1"]], 1);
                ctx.Offer("output.prev_encoder_out.encoder_out.prompt_before_enc", prompt);
                ctx.Offer("output.prev_encoder_out.encoder_out.prompt_mask", promptMask);
            }
            ctx.Offer("output.pred_logits", output.PredLogits!);
            ctx.Offer("output.pred_boxes", output.PredBoxes!);
            ctx.Offer("output.pred_boxes_xyxy", output.PredBoxesXyxy!);
            ctx.Offer("output.presence_logit_dec", output.PresenceLogitDec!);
            ctx.Offer("output.pred_masks", output.PredMasks!);
            ctx.Offer("output.semantic_seg", output.SemanticSeg!);
            ctx.Offer("output.queries", output.Queries!);
            ctx.Offer("output.presence_feats", output.PresenceFeats!);

            var pp = p.GetProperty("postprocessor");
            foreach (var run in p.GetProperty("max_dets_per_img_runs").EnumerateObject())
            {
                var post = new PostProcessImage
                {
                    MaxDetsPerImg = run.Value.GetInt32(),
                    IouType = pp.GetProperty("iou_type").GetString() == "segm" ? IouType.Segm : IouType.Bbox,
                    UseOriginalSizesBox = pp.GetProperty("use_original_sizes_box").GetBoolean(),
                    UseOriginalSizesMask = pp.GetProperty("use_original_sizes_mask").GetBoolean(),
                    ConvertMaskToRle = pp.GetProperty("convert_mask_to_rle").GetBoolean(),
                    DetectionThreshold = pp.GetProperty("detection_threshold").GetDouble(),
                };
                using var results = post.Process(output, batch.FindMetadatas, ctx.Offer);
                foreach (var q in queriesJson)
                {
                    long id = q.GetProperty("coco_image_id").GetInt64();
                    var names = q.GetProperty("tensors").GetProperty(run.Name);
                    var det = results[id];
                    ctx.Detections.Add(($"{run.Name}.id{id}", q.GetProperty("num_detections").GetProperty(run.Name).GetInt32(), det.Count));
                    ctx.Offer(names.GetProperty("scores").GetString()!, det.Scores);
                    ctx.Offer(names.GetProperty("labels").GetString()!, det.Labels);
                    ctx.Offer(names.GetProperty("boxes").GetString()!, det.Boxes);
                    if (det.Masks is not null) ctx.Offer(names.GetProperty("masks").GetString()!, det.Masks);
                }
            }
        }
        finally
        {
            foreach (var t in kept.Values) t.Dispose();
        }
    }
}
