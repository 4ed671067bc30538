using System.Text.Json;
using System.Text.Json.Nodes;
using Sam3.Torch.IO;
using Sam3.Torch.Loading;
using Sam3.Torch.Processing;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Training.Losses;
using Sam3.Torch.Training.Optim;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

internal sealed partial class ParityRunner
{
    /// <summary>
    /// Scenario h (one step of the official fine-tuning trainer, shared/pyref/README-h.md), end to end through this
    /// library: a COCO folder per json case (the image, the ellipse / rectangle masks drawn by the generator's rule and
    /// stored as RLE) → the COCO reader, upstream's train transforms at the scenario's single size, collate → the
    /// training-mode forward with the determinism switch (dropout and drop-path 0, as the json lists) → both matchers and
    /// every loss term → backward → gradient clipping and one AdamW step with the schedulers at the recorded step.
    /// Compares the batch, the forward intermediates and outputs, every matching (exactly), every loss entry, every
    /// gradient (|Δ| ≤ 1e-4·max|g| per tensor; the two boxRPB biases that are zero up to float noise get atol 1e-4), the
    /// gradient norm, the clip coefficient and every updated parameter (atol 1e-6), all with README-h's tolerances.
    /// </summary>
    private void RunTrainingStep(Context ctx)
    {
        var fx = ctx.Fixture!;
        var p = fx.Parameters;
        int size = p.GetProperty("image_size").GetInt32();
        using var root = JsonDocument.Parse(File.ReadAllText(fx.JsonPath));
        var forwardTol = new Tolerance(Atol: 1e-5, Rtol: 1e-5, NoiseFactor: 4.0, MaxMismatchFraction: 0);
        var exact = new Tolerance(Atol: 0, Rtol: 0, NoiseFactor: 0, MaxMismatchFraction: 0);

        string tmp = Directory.CreateTempSubdirectory("sam3-parity-h-").FullName;
        var datapoints = new List<Datapoint>();
        try
        {
            // ---- data
            var transforms = TransformPipelines.Train(new TrainTransformConfig { Resolution = size, ResizeSizes = [size] });
            var resized = new List<Tensor>();
            int ci = 0;
            foreach (var c in root.RootElement.GetProperty("cases").EnumerateArray())
            {
                string dir = WriteTrainingCase(c, Path.Combine(tmp, $"case{ci++}"), FixtureRoot);
                var dataset = CocoDataset.Open(dir, "train");
                var dp = dataset.Load(0);
                var rng = new Random(0);
                foreach (var step in transforms.Transforms)
                {
                    dp = step.Apply(dp, rng);
                    if (step is RandomResize)
                    {
                        var rgb = dp.Images[0].Rgb!;
                        resized.Add(torch.tensor(rgb.Data, [rgb.Height, rgb.Width, 3], ScalarType.Byte));
                    }
                }
                datapoints.Add(dp);
            }
            using var scope = NewDisposeScope();
            ctx.Offer("data.image_resized_uint8", torch.stack(resized));
            using var batch = TrainingCollator.Collate(datapoints, withSegMasks: true);
            OfferBatch(ctx, batch);

            // ---- model: the image model as the trainer builds it (no interactive heads), training mode, deterministic
            using var model = Sam3ModelLoader.LoadImageModel(CheckpointPath, Config, new Sam3LoadOptions { EnableInstInteractivity = false });
            TrainingMode.Apply(model, TrainingModelOptions.DeterministicRun);
            using var outputs = Sam3TrainingForward.Forward(model, Tokenizer, batch, (name, t) => ctx.Offer("fwd." + name, t));
            OfferOutputs(ctx, outputs);

            // ---- matchers and losses (pad_n_queries as the fixture used it: README-h "Deviations")
            var defaults = TrainingConfig.Default;
            int pad = p.GetProperty("loss").GetProperty("iabce").GetProperty("pad_n_queries_used").GetInt32();
            var config = defaults with { Loss = defaults.Loss with { Iabce = defaults.Loss.Iabce with { PadNQueries = pad } } };
            var loss = new Sam3LossWrapper(config).Compute(outputs, batch.Targets);
            foreach (var (stage, o2o, o2m) in loss.Matches)
            {
                OfferMatch(ctx, $"match.o2o.{stage}", o2o, exact);
                if (o2m is not null) OfferMatch(ctx, $"match.o2m.{stage}", o2m, exact);
            }
            foreach (var (key, value) in loss.Values.Items) ctx.Offer("loss." + key, value, forwardTol);
            ctx.Offer("loss.core_loss", loss.CoreLoss, forwardTol);

            // ---- backward, clipping, AdamW
            loss.CoreLoss.backward();
            var named = model.named_parameters().ToList();
            var tokenRows = fx.Has("data.token_embedding_rows") ? fx.Get("data.token_embedding_rows") : null;
            foreach (var (name, param) in named)
            {
                if (param.grad is not { } g) continue;
                if (fx.Has("grad_rows." + name) && tokenRows is not null)
                    ctx.Offer("grad_rows." + name, g.index_select(0, tokenRows), GradientTolerance(fx, "grad_rows." + name));
                else ctx.Offer("grad." + name, g, GradientTolerance(fx, "grad." + name));
            }
            var at = p.GetProperty("optimizer").GetProperty("scheduler_evaluated_at");
            var optimizer = new TrainingOptimizer(model, config);
            var clip = optimizer.Step(at.GetProperty("step").GetInt32(), at.GetProperty("where").GetDouble())
                       ?? throw new Sam3Exception("no parameter has a gradient");
            var normTol = new Tolerance(Atol: 0, Rtol: 1e-6, NoiseFactor: 1.0, MaxMismatchFraction: 0);
            ctx.Offer("optim.grad_total_norm", clip.TotalNorm, normTol);
            ctx.Offer("optim.clip_coef", clip.ClipCoef, normTol);
            var updatedTol = new Tolerance(Atol: 1e-6, Rtol: 0, NoiseFactor: 1.0, MaxMismatchFraction: 0);
            double clipCoef = clip.ClipCoef.item<float>();
            foreach (var (name, param) in named)
            {
                if (fx.Has("updated_rows." + name) && tokenRows is not null)
                    ctx.Offer("updated_rows." + name, param.detach().index_select(0, tokenRows), updatedTol);
                else if (NoiseOnlyGradient(name))
                    // Adam's first step moves such a parameter by lr·g·c/(|g·c| + eps) with g·c ≪ eps: gradient noise Δg
                    // (the 1e-4 bar above) moves it by up to lr·Δg·c/eps — a bar from the update rule, not from our output
                    ctx.Offer("updated." + name, param.detach(), updatedTol with { Atol = 1e-6 + LearningRateOf(p, name) * 1e-4 * clipCoef / config.Optimizer.Eps });
                else
                {
                    using var boundScope = NewDisposeScope();
                    ctx.Offer("updated." + name, param.detach(), updatedTol with
                    {
                        ElementAtol = AdamFirstStepBound(fx, "grad." + name, LearningRateOf(p, name), clipCoef, config.Optimizer.Eps),
                    });
                }
            }
        }
        finally
        {
            foreach (var d in datapoints) d.Dispose();
            try { Directory.Delete(tmp, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>
    /// How far the gradient bar lets Adam's first step move each element: the step is lr·u(g) with u(g) = g/(|g| + eps)
    /// (m̂ = g, v̂ = g² after bias correction; g the clipped gradient c·g_ref), and a gradient within Δg of the reference
    /// changes u by at most min(2, Δg·eps/(max(|g| − Δg, 0) + eps)²) (the derivative eps/(|g| + eps)² at the point of the
    /// interval nearest 0). Elements whose gradient is near eps are sensitive: on other CPU kernels a gradient well
    /// inside its bar moved such weights by 3e-6 against a flat 1e-6. Null where the fixture has no gradient.
    /// </summary>
    private static Tensor? AdamFirstStepBound(ScenarioFixture fx, string gradName, double lr, double clipCoef, double eps)
    {
        if (!fx.Has(gradName)) return null;
        var g = fx.Get(gradName).to(ScalarType.Float64) * clipCoef;
        double dg = GradientTolerance(fx, gradName).Atol * clipCoef;
        var near = (g.abs() - dg).clamp(min: 0);
        return ((dg * eps) / (near + eps).square()).clamp(max: 2.0) * lr;
    }

    /// <summary>README-h: |Δ| ≤ 1e-4·max|g| per gradient tensor; atol 1e-4 where the gradient is zero up to float noise.</summary>
    private static Tolerance GradientTolerance(ScenarioFixture fx, string name)
    {
        if (!fx.Has(name)) return new Tolerance();
        using var scope = NewDisposeScope();
        double maxAbs = fx.Get(name).abs().max().item<float>();
        bool noiseOnly = NoiseOnlyGradient(name);
        return new Tolerance(Atol: noiseOnly ? 1e-4 : Math.Max(1e-4 * maxAbs, 1e-12), Rtol: 0, NoiseFactor: 1.0, MaxMismatchFraction: 0);
    }

    /// <summary>The two parameters whose gradient is mathematically zero (README-h: the boxRPB bias adds one constant to
    /// every attention logit of a row, and softmax is shift-invariant) and holds float noise only.</summary>
    private static bool NoiseOnlyGradient(string name) =>
        name.Contains("boxRPB_embed_", StringComparison.Ordinal) && name.EndsWith("layers.1.bias", StringComparison.Ordinal);

    /// <summary>The learning rate the fixture's optimizer gave <paramref name="param"/> (json per_parameter: group, lr, wd).</summary>
    private static double LearningRateOf(JsonElement parameters, string param)
    {
        var name = param.StartsWith("grad.", StringComparison.Ordinal) ? param[5..] : param;
        return parameters.GetProperty("optimizer").GetProperty("per_parameter(group,lr,weight_decay)").GetProperty(name)[1].GetDouble();
    }

    private void OfferBatch(Context ctx, TrainingBatch batch)
    {
        ctx.Offer("data.img_batch", batch.ImgBatch);
        var (ids, _) = Tokenizer.TokenizeToTensors(batch.FindTextBatch, Config.Text.ContextLength);
        ctx.Offer("data.text_token_ids", ids);
        ctx.Offer("data.token_embedding_rows", ids.unique(sorted: true).Item1);
        ctx.Offer("data.find.img_ids", batch.FindImgIds);
        ctx.Offer("data.find.text_ids", batch.FindTextIds);
        var t = batch.Targets;
        ctx.Offer("data.target.num_boxes", t.NumBoxes);
        ctx.Offer("data.target.boxes", t.Boxes);
        ctx.Offer("data.target.boxes_xyxy", t.BoxesXyxy);
        ctx.Offer("data.target.boxes_padded", t.BoxesPadded);
        ctx.Offer("data.target.object_ids", t.ObjectIds);
        ctx.Offer("data.target.object_ids_padded", t.ObjectIdsPadded);
        ctx.Offer("data.target.is_exhaustive", t.IsExhaustive);
        if (t.Segments is not null) ctx.Offer("data.target.segments", t.Segments);
        if (t.IsValidSegment is not null) ctx.Offer("data.target.is_valid_segment", t.IsValidSegment);
    }

    private static void OfferOutputs(Context ctx, TrainingForwardOutputs outputs)
    {
        OfferFind(ctx, "fwd.out.", outputs.Final);
        for (int i = 0; i < outputs.Aux.Count; i++) OfferFind(ctx, $"fwd.out.aux_outputs.{i}.", outputs.Aux[i]);
    }

    private static void OfferFind(Context ctx, string prefix, FindOutputs f)
    {
        (string, Tensor?)[] all =
        [
            ("pred_logits", f.PredLogits), ("pred_boxes", f.PredBoxes), ("pred_boxes_xyxy", f.PredBoxesXyxy),
            ("presence_logit_dec", f.PresenceLogitDec), ("pred_logits_o2m", f.PredLogitsO2m), ("pred_boxes_o2m", f.PredBoxesO2m),
            ("pred_boxes_xyxy_o2m", f.PredBoxesXyxyO2m), ("pred_masks", f.PredMasks), ("pred_masks_o2m", f.PredMasksO2m),
            ("semantic_seg", f.SemanticSeg),
        ];
        foreach (var (n, t) in all)
            if (t is not null) ctx.Offer(prefix + n, t.detach());
    }

    private static void OfferMatch(Context ctx, string prefix, Training.Matching.MatchIndices m, Tolerance exact)
    {
        ctx.Offer(prefix + ".batch_idx", m.BatchIdx, exact);
        ctx.Offer(prefix + ".src_idx", m.SrcIdx, exact);
        ctx.Offer(prefix + ".tgt_idx", m.TgtIdx, exact);
    }

    /// <summary>
    /// Writes one json case as a Roboflow-layout COCO folder (<c>DIR/train/_annotations.coco.json</c> + the image): the
    /// queries become the categories (ids 1..), every object an annotation with its pixel bbox and its mask drawn at the
    /// original resolution by README-h's rule (pixel centres u = col + 0.5, v = row + 0.5; ellipse: ((u−cx)/rx)² +
    /// ((v−cy)/ry)² ≤ 1 with r = (1−inset)·(w/2, h/2); rect: x + inset·w/2 ≤ u ≤ x + w − inset·w/2, likewise v), as COCO RLE.
    /// </summary>
    internal static string WriteTrainingCase(JsonElement c, string dir, string fixtureRoot)
    {
        string train = Path.Combine(dir, "train");
        Directory.CreateDirectory(train);
        string imageName = c.GetProperty("image").GetString()!;
        File.Copy(Path.Combine(fixtureRoot, "inputs", imageName), Path.Combine(train, imageName));
        var img = ImageLoader.Load(Path.Combine(train, imageName));
        var categories = new JsonArray();
        var annotations = new JsonArray();
        int qi = 0;
        foreach (var q in c.GetProperty("queries").EnumerateArray())
        {
            qi++;
            categories.Add(new JsonObject { ["id"] = qi, ["name"] = q.GetProperty("text").GetString() });
            foreach (var o in q.GetProperty("objects").EnumerateArray())
            {
                var bbox = o.GetProperty("bbox").EnumerateArray().Select(v => v.GetDouble()).ToArray();
                var mask = DrawCaseMask(img.Height, img.Width, bbox, o.GetProperty("mask").GetString()!, o.GetProperty("inset").GetDouble());
                var rle = CocoRle.Encode(mask, img.Height, img.Width);
                annotations.Add(new JsonObject
                {
                    ["id"] = annotations.Count + 1, ["image_id"] = 1, ["category_id"] = qi,
                    ["bbox"] = new JsonArray(bbox.Select(v => (JsonNode)JsonValue.Create(v)!).ToArray()),
                    ["area"] = bbox[2] * bbox[3], ["iscrowd"] = 0,
                    ["segmentation"] = new JsonObject { ["size"] = new JsonArray(img.Height, img.Width), ["counts"] = rle.Counts },
                });
            }
        }
        var coco = new JsonObject
        {
            ["images"] = new JsonArray(new JsonObject { ["id"] = 1, ["file_name"] = imageName, ["width"] = img.Width, ["height"] = img.Height }),
            ["annotations"] = annotations,
            ["categories"] = categories,
        };
        File.WriteAllText(Path.Combine(train, CocoDataset.RoboflowAnnotationFile), coco.ToJsonString());
        return dir;
    }

    /// <summary>The fixture generator's mask rule (README-h, "Mask drawing rule").</summary>
    internal static byte[] DrawCaseMask(int h, int w, double[] bbox, string kind, double inset)
    {
        double x = bbox[0], y = bbox[1], bw = bbox[2], bh = bbox[3];
        var m = new byte[h * w];
        for (int r = 0; r < h; r++)
            for (int c = 0; c < w; c++)
            {
                double u = c + 0.5, v = r + 0.5;
                bool inside = kind switch
                {
                    "ellipse" => Ellipse(u, v),
                    "rect" => u >= x + inset * bw / 2 && u <= x + bw - inset * bw / 2 && v >= y + inset * bh / 2 && v <= y + bh - inset * bh / 2,
                    _ => throw new Sam3Exception($"unknown mask kind '{kind}' in the scenario's cases"),
                };
                m[r * w + c] = inside ? (byte)1 : (byte)0;
            }
        return m;

        bool Ellipse(double u, double v)
        {
            double cx = x + bw / 2, cy = y + bh / 2, rx = (1 - inset) * bw / 2, ry = (1 - inset) * bh / 2;
            double a = (u - cx) / rx, b = (v - cy) / ry;
            return a * a + b * b <= 1.0;
        }
    }

    private sealed partial class Context
    {
        /// <summary>Compares with the recorded tensor under a tolerance of its own (the scenario's documented bars).</summary>
        public void Offer(string name, Tensor actual, Tolerance tolerance)
        {
            var fx = Fixture!;
            if (!fx.Has(name) || _compared.Contains(name)) return;
            _compared.Add(name);
            using var scope = NewDisposeScope();
            Comparisons.Add(tolerance.Compare(name, actual, fx.Get(name), null));
        }
    }
}
