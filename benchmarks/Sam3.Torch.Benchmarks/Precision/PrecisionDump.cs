using System.Text.Json;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Processing;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks.Precision;

/// <summary>
/// <c>precision-dump --precision fp32|bf16 --out DIR [--parity DIR] [--name NAME]</c>: runs this port on the tiny
/// model's scenarios a, b, c, d (the calls of <c>tests/.../Precision/Bf16ContractTests</c>, parameters from the
/// fixture JSONs) and writes the final outputs to <c>DIR/outputs/NAME.safetensors</c> and scenario a's recorded
/// module-boundary tensors (float32 copies) to <c>DIR/intermediates/a_NAME.safetensors</c>, under the key names of
/// <c>benchmarks/reference/gpu/autocast_contract.py</c>, whose <c>--compare-only</c> mode then compares this port
/// with upstream's CUDA bf16 / fp32 outputs (a one-off check of returned files, not a test).
/// </summary>
internal static class PrecisionDump
{
    public const string Verb = "precision-dump";

    public static int Run(string[] args)
    {
        string? Arg(string name) => Array.IndexOf(args, name) is var i and >= 0 && i + 1 < args.Length ? args[i + 1] : null;
        string precisionName = Arg("--precision") ?? "bf16";
        var precision = precisionName switch
        {
            "bf16" => Sam3Precision.BFloat16,
            "fp32" => Sam3Precision.Float32,
            _ => throw new ArgumentException($"--precision must be fp32 or bf16, not '{precisionName}'", nameof(args)),
        };
        string outDir = Arg("--out") ?? throw new ArgumentException("--out DIR is required", nameof(args));
        string parity = Path.GetFullPath(Arg("--parity") ?? Path.Combine("..", "shared", "parity"));
        string name = Arg("--name") ?? $"ours_{precisionName}";
        string tiny = Path.Combine(parity, "tiny");
        using var model = Sam3Model.Load(Path.Combine(tiny, "model.safetensors"), new Sam3ModelOptions
        {
            Config = Sam3Config.Load(Path.Combine(tiny, "config.json")),
            TokenizerPath = Path.Combine(parity, "inputs", "bpe_simple_vocab_16e6.txt.gz"),
            Precision = precision,
        });
        var outputs = new Dictionary<string, Tensor>();
        var intermediates = new Dictionary<string, Tensor>();
        var dtypes = new Dictionary<string, string>();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using (var scope = NewDisposeScope())
        {
            ScenarioA(model, parity, outputs, intermediates, dtypes);
            ScenarioB(model, parity, outputs);
            ScenarioC(model, parity, outputs);
            ScenarioD(model, parity, outputs);
            foreach (var t in outputs.Values) t.DetachFromDisposeScope();
        }
        Directory.CreateDirectory(Path.Combine(outDir, "outputs"));
        Directory.CreateDirectory(Path.Combine(outDir, "intermediates"));
        SafetensorsWriter.Write(Path.Combine(outDir, "outputs", name + ".safetensors"), outputs);
        SafetensorsWriter.Write(Path.Combine(outDir, "intermediates", $"a_{name}.safetensors"), intermediates);
        File.WriteAllText(Path.Combine(outDir, "outputs", name + ".info.json"), JsonSerializer.Serialize(new
        {
            way = name,
            port = "Sam3.Torch (TorchSharp/LibTorch), CPU",
            precision = precisionName,
            threads = torch.get_num_threads(),
            seconds = Math.Round(sw.Elapsed.TotalSeconds, 2),
            a_intermediate_dtypes = dtypes,
        }, new JsonSerializerOptions { WriteIndented = true }));
        foreach (var t in outputs.Values.Concat(intermediates.Values)) t.Dispose();
        Console.WriteLine($"{name}: {outputs.Count} outputs, {intermediates.Count} scenario-a tensors in {sw.Elapsed.TotalSeconds:F1} s -> {outDir}");
        return 0;
    }

    private static JsonElement Parameters(string parity, string fixture)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(parity, "tiny", fixture + ".json")));
        return doc.RootElement.GetProperty("parameters").Clone();
    }

    private static string Input(string parity, string relative) => Path.Combine(parity, relative);

    private static void Put(Dictionary<string, Tensor> outputs, string prefix, DetectionTensors d)
    {
        outputs[prefix + "output.scores"] = d.Scores.to(ScalarType.Float32).cpu().contiguous().clone();
        outputs[prefix + "output.boxes"] = d.Boxes.to(ScalarType.Float32).cpu().contiguous().clone();
        outputs[prefix + "output.masks"] = d.Masks.to(ScalarType.Bool).cpu().contiguous().clone();
    }

    private static void ScenarioA(Sam3Model model, string parity, Dictionary<string, Tensor> outputs,
        Dictionary<string, Tensor> intermediates, Dictionary<string, string> dtypes)
    {
        var p = Parameters(parity, "a_image_text");
        using var predictor = model.CreateImagePredictor(new ImagePredictorOptions
        {
            ConfidenceThreshold = p.GetProperty("confidence_threshold")[0].GetDouble(),
        });
        var seen = new Dictionary<string, int>();
        void Observe(string key, Tensor t)
        {
            int k = seen[key] = seen.GetValueOrDefault(key) + 1;
            string name = k == 1 ? key : $"{key}#{k}";
            if (!t.is_floating_point()) return;
            dtypes[name] = t.dtype.ToString();
            // kept past the model's own dispose scopes (the observer runs inside them)
            intermediates[name] = t.detach().to(ScalarType.Float32).cpu().contiguous().clone().DetachFromDisposeScope();
        }
        Sam3ImageState state;
        using (model.Record(Observe)) state = predictor.SetImage(Input(parity, p.GetProperty("image").GetString()!));
        using var _ = state;
        IReadOnlyList<DetectionTensors> results;
        using (model.Record(Observe)) results = predictor.SetTextPromptCore(state, p.GetProperty("prompt").GetString()!);
        try { Put(outputs, "", results[0]); }
        finally { foreach (var r in results) r.Dispose(); }
    }

    private static void ScenarioB(Sam3Model model, string parity, Dictionary<string, Tensor> outputs)
    {
        var p = Parameters(parity, "b_image_batch_text");
        var thresholds = p.GetProperty("confidence_threshold").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        var images = p.GetProperty("images").EnumerateArray().Select(x => ImageLoader.Load(Input(parity, x.GetString()!))).ToList();
        using var predictor = model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = thresholds[0] });
        using var state = predictor.SetImages(images);
        foreach (var r in predictor.SetTextPromptCore(state, p.GetProperty("prompt").GetString()!)) r.Dispose();
        for (int i = 0; i < images.Count; i++)
        {
            var results = predictor.SetConfidenceThresholdCore(thresholds[i], state)!;
            try { Put(outputs, $"img{i}.", results[i]); }
            finally { foreach (var r in results) r.Dispose(); }
        }
    }

    private static void ScenarioC(Sam3Model model, string parity, Dictionary<string, Tensor> outputs)
    {
        var p = Parameters(parity, "c_geometric_prompts");
        var thresholds = p.GetProperty("confidence_threshold").EnumerateArray().Select(x => x.GetDouble()).ToArray();
        float[] Box(string name) => p.GetProperty(name).EnumerateArray().Select(x => (float)x.GetDouble()).ToArray();
        using var predictor = model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = thresholds[0] });
        using var state = predictor.SetImage(Input(parity, p.GetProperty("image").GetString()!));
        var pos = Box("pos_box");
        var r1 = predictor.AddBoxCore(state, BoxPrompt.NormalizedCxcywh(pos[0], pos[1], pos[2], pos[3], true));
        try { Put(outputs, "step1.", r1[0]); }
        finally { foreach (var r in r1) r.Dispose(); }
        predictor.SetConfidenceThreshold(thresholds[1]);
        var neg = Box("neg_box");
        var r2 = predictor.AddBoxCore(state, BoxPrompt.NormalizedCxcywh(neg[0], neg[1], neg[2], neg[3], false));
        try { Put(outputs, "step2.", r2[0]); }
        finally { foreach (var r in r2) r.Dispose(); }
    }

    private static void ScenarioD(Sam3Model model, string parity, Dictionary<string, Tensor> outputs)
    {
        var p = Parameters(parity, "d_predict_inst");
        using var images = model.CreateImagePredictor();
        using var state = images.SetImage(Input(parity, p.GetProperty("image").GetString()!));
        var predictor = model.CreateInteractivePredictor(new InteractivePredictorOptions { MaskThreshold = p.GetProperty("mask_threshold").GetDouble() });
        var call1 = predictor.Predict(state, new InteractivePrompt { Points = [PointPrompt.Pixel(560, 400, true)], MultimaskOutput = true });
        var call2 = predictor.Predict(state, new InteractivePrompt
        {
            Points = [PointPrompt.Pixel(560, 400, true), PointPrompt.Pixel(800, 250, true)], MaskInput = call1.BestLowResLogits(), MultimaskOutput = false,
        });
        var call3 = predictor.Predict(state, new InteractivePrompt { Box = Box.FromXyxy(640, 150, 1000, 600), MultimaskOutput = false });
        var call4 = predictor.PredictBoxes(state, [Box.FromXyxy(100, 200, 600, 700), Box.FromXyxy(640, 150, 1000, 600), Box.FromXyxy(1000, 300, 1250, 500)], false);
        foreach (var (tag, r) in new[] { ("call1", call1), ("call2", call2), ("call3", call3), ("call4", call4) })
        {
            int q = r.PromptCount, m = r.MaskCount;
            var masks = new List<Tensor>();
            var lows = new List<Tensor>();
            var ious = new List<float>();
            for (int i = 0; i < q; i++)
            {
                for (int j = 0; j < m; j++)
                {
                    masks.Add(torch.tensor(r.Masks(i)[j].Data).view(r.Height, r.Width).to(ScalarType.Bool));
                    var low = r.LowResLogits(j, i);
                    lows.Add(torch.tensor(low.Values.ToArray()).view(low.Height, low.Width));
                    ious.Add(r.IouScores(i)[j]);
                }
            }
            var mk = torch.stack(masks);
            var lo = torch.stack(lows);
            var io = torch.tensor(ious.ToArray());
            // the shapes of upstream's predict(): [M,H,W] for one prompt, [B,M,H,W] batched
            if (r.IsBatched)
            {
                mk = mk.view(q, m, r.Height, r.Width);
                lo = lo.view(q, m, lo.shape[1], lo.shape[2]);
                io = io.view(q, m);
            }
            outputs[tag + ".masks"] = mk.contiguous();
            outputs[tag + ".low_res_masks"] = lo.contiguous();
            outputs[tag + ".iou_predictions"] = io.contiguous();
        }
    }
}
