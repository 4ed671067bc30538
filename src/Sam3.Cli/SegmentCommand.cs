using Sam3.Torch.Loading;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sam3.Torch;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Processing;
using Sam3.Torch.Text;
using Sam3.Torch.Visualization;
using Visualization = Sam3.Torch.Visualization;

namespace Sam3.Cli;

/// <summary>
/// <c>sam3 segment</c>: loads a checkpoint, runs text / box prompts on one or more images and writes, per image, an overlay
/// PNG and a JSON file with COCO-style results (xyxy boxes, scores, masks as COCO compressed RLE).
/// </summary>
internal static class SegmentCommand
{


    /// <summary>One output object: its mask, score (detection score or predicted IoU) and xyxy pixel box.</summary>
    internal sealed record SegmentObject(Visualization.BinaryMask Mask, float Score, float[] Box, int? Prompt = null, int? Candidate = null);

    public static int Run(CliArgs a, TextWriter stdout, TextWriter stderr)
    {
        if (a.Positional.Count > 0) throw new UsageException($"segment: unexpected argument '{a.Positional[0]}'");
        string checkpoint = a.Required("checkpoint");
        var images = a.Values("image");
        if (images.Count == 0) throw new UsageException("segment: give at least one --image");
        string outDir = a.Required("out");
        double threshold = a.Double("threshold", 0.5);
        if (threshold < 0 || threshold > 1) throw new UsageException($"--threshold must be in [0,1], got {threshold}");
        string? text = a.Value("text");
        if (text is not null && string.IsNullOrWhiteSpace(text)) throw new UsageException("--text is empty");
        var boxes = a.Values("box").Select(v => ParseBox(v, "box")).ToList();
        var boxesXyxy = a.Values("box-xyxy").Select(v => ParseBox(v, "box-xyxy")).ToList();
        // what the processor would reject, found before the model is loaded
        foreach (var (v, _) in boxes)
        {
            if (v.Any(x => x < 0 || x > 1)) throw new UsageException($"--box {string.Join(',', v.Select(F))}: cx,cy,w,h are normalised to [0,1]");
            if (v[2] <= 0 || v[3] <= 0) throw new UsageException($"--box {string.Join(',', v.Select(F))}: width and height must be positive");
        }
        foreach (var (v, _) in boxesXyxy)
            if (v[2] <= v[0] || v[3] <= v[1]) throw new UsageException($"--box-xyxy {string.Join(',', v.Select(F))}: expected x0 < x1 and y0 < y1");
        var points = a.Values("point").Select(ParsePoint).ToList();
        if (text is null && boxes.Count == 0 && boxesXyxy.Count == 0 && points.Count == 0)
            throw new UsageException("segment: give a prompt (--text, --box, --box-xyxy or --point)");
        bool interactive = text is null && boxes.Count == 0;
        if (!interactive && points.Count > 0) throw new UsageException("segment: --point is used without --text/--box (interactive mode)");
        if (interactive && boxesXyxy.Any(b => !b.Positive)) throw new UsageException("segment: negative boxes need the detector (give --text)");
        if (interactive && points.Count > 0 && boxesXyxy.Count > 1) throw new UsageException("segment: points go with at most one --box-xyxy");
        if (!interactive && a.Flag("multimask")) throw new UsageException("segment: --multimask applies to the interactive mode only");
        // Cheap checks first: inputs, image headers, prompts against the image sizes, output folder, output plan
        // (overwrites), configuration fit; the model load comes last (Safety/InputValidation).
        InputValidation.RequireFileOrFolder(checkpoint, "--checkpoint", "checkpoint");
        if (a.Value("vocab") is { } vocabOption) InputValidation.RequireFile(vocabOption, "--vocab", "vocabulary");
        if (a.Value("config") is { } cfgOption && cfgOption is not ("full" or "tiny")) InputValidation.NotSpecial(cfgOption, "--config", "configuration");
        var precision = a.Value("precision") switch
        {
            null or "fp32" => Sam3Precision.Float32,
            "bf16" => Sam3Precision.BFloat16,
            var other => throw new UsageException($"--precision must be fp32 or bf16, got '{other}'"),
        };
        var sizes = InputValidation.ImageSizes(images);
        InputValidation.PromptsFit(images, sizes, boxesXyxy.Select(b => b.Values), points.Select(p => (p.X, p.Y)));
        InputValidation.OutputFolder(outDir, "--out", out bool createdOut);
        using var outScope = new OutputFolderScope(outDir, createdOut);
        using var runLock = RunLock.ForFolder(outDir);
        var outputs = PlanOutputs(images, outDir, a.Flag("force"), a.Flag("masks"));
        var configOption = a.Value("config");
        var files = ModelFolder.Locate(checkpoint, new Sam3ModelOptions
        {
            Config = configOption is null ? null : ResolveConfig(configOption),
            TokenizerPath = a.Value("vocab"),
        });
        string configName = configOption ?? (files.Config.Name == Sam3Config.Tiny.Name ? "tiny" : files.ConfigSource);
        CheckConfigurationFits(files.CheckpointPath, files.Config, configName);

        var sw = System.Diagnostics.Stopwatch.StartNew();
        // Progress only on a terminal (one line rewritten in place): in logs and pipes an error stays a single line.
        bool terminal = Commands.IsConsoleTerminal(stderr);
        var progress = terminal ? new ConvertProgress(stderr, true, new Dictionary<string, long>(), "loading checkpoint") : null;
        Sam3Model model;
        try
        {
            model = Sam3Model.LoadAsync(files.CheckpointPath, new Sam3ModelOptions { Config = files.Config, TokenizerPath = files.TokenizerPath, Precision = precision },
                progress is null ? null : new LoadProgressAdapter(progress)).GetAwaiter().GetResult();
        }
        catch (Sam3Exception e) when (e.Message.Contains('\n'))
        {
            progress?.Finish();
            // a multi-line report (e.g. every mismatching key): its first line, and where to get the rest
            throw new Sam3CheckpointException($"{FirstLine(e.Message)} (sam3 inspect {files.CheckpointPath} --config {configName} lists the keys)", e);
        }
        catch
        {
            progress?.Finish();
            throw;
        }
        using var _ = model;
        progress?.Finish();
        stderr.WriteLine(string.Format(CultureInfo.InvariantCulture, "loaded {0} in {1:F1} s", Path.GetFileName(files.CheckpointPath), sw.Elapsed.TotalSeconds));
        foreach (var note in model.LoadNotes.Where(n => n.StartsWith(Sam3.Torch.Precision.CpuBf16Support.SlowNotePrefix, StringComparison.Ordinal)))
            stderr.WriteLine("note: " + note);
        if (NonFiniteScan.FirstNonFinite(model.Network) is { } bad)
            stderr.WriteLine($"sam3: warning: the weight {bad} of {Path.GetFileName(files.CheckpointPath)} holds NaN or infinite values; results will be meaningless");
        using var processor = model.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = threshold });
        var interactivePredictor = interactive ? model.CreateInteractivePredictor() : null;
        var allBoxes = boxes.Select(b => BoxPrompt.NormalizedCxcywh(b.Values[0], b.Values[1], b.Values[2], b.Values[3], b.Positive))
            .Concat(boxesXyxy.Select(b => BoxPrompt.Xyxy(b.Values[0], b.Values[1], b.Values[2], b.Values[3], b.Positive))).ToList();

        for (int i = 0; i < images.Count; i++)
        {
            // decoded one at a time (headers were checked up front): memory does not grow with the number of images
            string path = images[i];
            var image = ImageLoader.Load(path);
            var t0 = System.Diagnostics.Stopwatch.StartNew();
            using var state = processor.SetImage(image);
            List<SegmentObject> objects;
            string mode;
            if (interactivePredictor is not null)
            {
                mode = "interactive";
                objects = RunInteractive(interactivePredictor, state, points, boxesXyxy, a.Flag("multimask"));
            }
            else
            {
                mode = "detector";
                // text and every box in one detector run (one run per box was quadratic in the number of boxes)
                var results = processor.SetPrompts(state, text, allBoxes);
                objects = results[0]
                    .Select(d => d.Box.ToXyxy() is var (x0, y0, x1, y1) ? new SegmentObject(d.Mask, d.Score, [x0, y0, x1, y1]) : null!).ToList();
            }
            WriteOutputs(outputs[i], path, image, objects, mode, text, threshold, a.Flag("masks"), a.Flag("force"));
            outScope.Complete();
            stdout.WriteLine(string.Format(CultureInfo.InvariantCulture, "{0}: {1} {2}{3} in {4:F2} s -> {5}",
                path, objects.Count, mode == "detector" ? "detection(s)" : "mask(s)",
                objects.Count > 0 ? $" (best {(mode == "detector" ? "score" : "IoU")} {objects.Max(o => o.Score):F3})" : "", t0.Elapsed.TotalSeconds, outputs[i].Json));
        }
        outScope.Complete();
        return 0;
    }

    internal sealed record OutputPaths(string Overlay, string Json, string MaskPrefix);

    /// <summary>File names compare case-insensitively where the file system usually does (Windows, macOS).</summary>
    private static StringComparer PathComparer => OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparer.OrdinalIgnoreCase : StringComparer.Ordinal;
    private static StringComparison PathComparison => OperatingSystem.IsWindows() || OperatingSystem.IsMacOS() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;

    /// <summary>Whether <paramref name="fileName"/> is the name of a mask PNG (<c>STEM_maskK.png</c>) of output stem <paramref name="stem"/>.</summary>
    internal static bool IsMaskFileOf(string fileName, string stem) =>
        fileName.Length > stem.Length + "_mask.png".Length
        && fileName.StartsWith(stem + "_mask", PathComparison)
        && fileName.EndsWith(".png", PathComparison)
        && fileName[(stem.Length + "_mask".Length)..^".png".Length].All(char.IsAsciiDigit);

    /// <summary>
    /// Output names per image (STEM.png, STEM.json and, with --masks, STEM_mask0.png, ...): stems made unique, also
    /// against each other's mask names. Refuses, even with --force, any output that is an input (paths compared with
    /// symbolic links resolved), and without --force any output file that already exists, mask PNGs included.
    /// </summary>
    internal static List<OutputPaths> PlanOutputs(IReadOnlyList<string> inputs, string outDir, bool force, bool masks)
    {
        string dir = RealPath(outDir);
        var inputSet = inputs.Select(RealPath).ToHashSet(PathComparer);
        var inputsInDir = inputSet.Where(p => PathComparer.Equals(Path.GetDirectoryName(p), dir)).Select(Path.GetFileName).ToList();
        var existing = Directory.Exists(dir) ? Directory.GetFiles(dir).Select(Path.GetFileName).ToList() : [];
        var used = new HashSet<string>(PathComparer);
        bool Clashes(string stem) => used.Contains(stem) || (masks && used.Any(u => IsMaskFileOf(stem + ".png", u) || IsMaskFileOf(u + ".png", stem)));
        var result = new List<OutputPaths>();
        foreach (var input in inputs)
        {
            string stem = Path.GetFileNameWithoutExtension(input);
            string candidate = stem;
            for (int k = 2; Clashes(candidate); k++) candidate = $"{stem}_{k}";
            used.Add(candidate);
            var paths = new OutputPaths(Path.Combine(dir, candidate + ".png"), Path.Combine(dir, candidate + ".json"), Path.Combine(dir, candidate + "_mask"));
            foreach (var p in new[] { paths.Overlay, paths.Json })
            {
                InputValidation.NotAnInput(p, inputs, "choose another --out"); // by device and inode: links, hard links, bind mounts
                if (Directory.Exists(p)) throw new UsageException($"output {p} is a folder; move it away or choose another --out");
                if (inputSet.Contains(p)) throw new UsageException($"output {p} would overwrite an input image; choose another --out");
                if (File.Exists(p) && !force) throw new UsageException($"output {p} exists (use --force to replace it)");
            }
            if (masks)
            {
                if (inputsInDir.FirstOrDefault(n => IsMaskFileOf(n!, candidate)) is { } clash)
                    throw new UsageException($"mask output {Path.Combine(dir, clash!)} would overwrite an input image; choose another --out");
                if (!force && existing.FirstOrDefault(n => IsMaskFileOf(n!, candidate)) is { } old)
                    throw new UsageException($"output {Path.Combine(dir, old!)} exists (use --force to replace it)");
            }
            result.Add(paths);
        }
        return result;
    }

    /// <summary>
    /// The absolute path with every symbolic link along it resolved (as POSIX realpath), so that an output reached
    /// through a linked folder or file is recognised as the input it is. Parts that do not exist are kept as they are.
    /// </summary>
    internal static string RealPath(string path)
    {
        string full = Path.GetFullPath(path);
        string root = Path.GetPathRoot(full) ?? "";
        string current = root;
        foreach (var part in full[root.Length..].Split(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar))
        {
            if (part.Length == 0) continue;
            string next = Path.Combine(current, part);
            try
            {
                FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
                if (info.LinkTarget is not null && info.ResolveLinkTarget(returnFinalTarget: true) is { } target)
                    next = target.FullName.Length < 4096 && !PathComparer.Equals(target.FullName, full) ? RealPath(target.FullName) : target.FullName;
            }
            catch (IOException)
            {
                // a link loop or an unreadable link: keep the path as written (the write itself will fail)
            }
            current = next;
        }
        return current;
    }

    /// <summary>
    /// Whether the checkpoint's keys and shapes fit the configuration, checked on the META device (no weights built) so
    /// that a checkpoint of another size fails at once with one line instead of after building the model.
    /// </summary>
    private static void CheckConfigurationFits(string checkpointPath, Sam3Config config, string configName)
    {
        using var checkpoint = CheckpointFile.Open(checkpointPath);
        var match = ConfigurationMatch.Check(checkpoint, config);
        if (match.IsMatch) return;
        string what = match.LayoutProblem
            ?? (match.Comparison is { IsMatch: false } c
                ? $"{c.Missing.Count} missing, {c.Unexpected.Count} unexpected, {c.WrongShape.Count} wrongly shaped, {c.WrongDType.Count} wrongly typed key(s)"
                : $"{match.RopeValueMismatches.Count} RoPE table(s) differ from the recomputed ones");
        throw new Sam3CheckpointException(
            $"{checkpointPath} does not fit the '{configName}' configuration: {FirstLine(what)} (sam3 inspect {checkpointPath} --config {configName} lists them)");
    }

    private static string FirstLine(string message) => message.Split('\n', 2)[0].TrimEnd('\r');

    /// <summary>Interactive (SAM1-style) prediction: points + one box, or a batch of boxes; best mask per prompt unless multimask.</summary>
    private static List<SegmentObject> RunInteractive(Sam3InteractivePredictor predictor, Sam3ImageState state,
        List<(float X, float Y, bool Positive)> points, List<(float[] Values, bool Positive)> boxes, bool multimask)
    {
        var objects = new List<SegmentObject>();
        void Collect(InteractivePrediction p, int prompt)
        {
            var ious = p.IouScores(prompt);
            var order = multimask ? Enumerable.Range(0, p.MaskCount) : [p.BestIndex(prompt)];
            foreach (int c in order)
            {
                var mask = p.Masks(prompt)[c];
                var b = mask.Bounds();
                float[] box = b is { } v ? [v.X0, v.Y0, v.X1, v.Y1] : [0, 0, 0, 0];
                objects.Add(new SegmentObject(mask, ious[c], box, prompt, c));
            }
        }
        if (points.Count == 0 && boxes.Count > 1)
        {
            var batch = predictor.PredictBoxes(state, boxes.Select(b => Box.FromXyxy(b.Values[0], b.Values[1], b.Values[2], b.Values[3])).ToList(), multimask);
            for (int k = 0; k < boxes.Count; k++) Collect(batch, k);
            return objects;
        }
        var prompt = new InteractivePrompt
        {
            Points = points.Select(p => PointPrompt.Pixel(p.X, p.Y, p.Positive)).ToList(),
            Box = boxes.Count == 1 ? Box.FromXyxy(boxes[0].Values[0], boxes[0].Values[1], boxes[0].Values[2], boxes[0].Values[3]) : null,
            // upstream default: multimask for a single click, one mask for a box or several clicks
            MultimaskOutput = multimask || (boxes.Count == 0 && points.Count == 1),
        };
        var single = predictor.Predict(state, prompt);
        Collect(single, 0);
        return objects;
    }

    /// <summary>
    /// The overlay, the mask PNGs and the JSON of one image, staged complete beside their destinations and renamed
    /// together (JSON last): they appear together or not at all, and an old set (--force) is replaced only once the
    /// new one is complete; old mask PNGs beyond the new count are removed after. Non-finite numbers are written as null.
    /// </summary>
    private static void WriteOutputs(OutputPaths o, string imagePath, RgbImage image, List<SegmentObject> objects, string mode, string? text,
        double threshold, bool masks, bool force)
    {
        using var files = new AtomicFileSet();
        var overlay = Plot.Results(image, objects.Select(x => x.Mask).ToList(), objects.SelectMany(x => x.Box).ToArray(),
            objects.Select(x => float.IsFinite(x.Score) ? x.Score : 0f).ToArray());
        files.Add(o.Overlay, ImageWriter.EncodePng(overlay));
        var list = new JsonArray();
        for (int k = 0; k < objects.Count; k++)
        {
            var obj = objects[k];
            var rle = CocoRle.Encode(obj.Mask.Data, obj.Mask.Height, obj.Mask.Width);
            var entry = new JsonObject
            {
                ["id"] = k,
                ["score"] = JsonNumber.Of(obj.Score),
                ["bbox_xyxy"] = new JsonArray(obj.Box.Select(JsonNumber.Of).ToArray()),
                ["area"] = rle.Area(),
                ["segmentation"] = JsonNode.Parse(rle.ToJson()),
            };
            if (obj.Prompt is int p) entry["prompt"] = p;
            if (obj.Candidate is int c) entry["candidate"] = c;
            list.Add(entry);
            if (masks)
            {
                string maskPath = $"{o.MaskPrefix}{k}.png";
                var rgb = new byte[obj.Mask.Data.Length * 3];
                for (int j = 0; j < obj.Mask.Data.Length; j++) rgb[3 * j] = rgb[3 * j + 1] = rgb[3 * j + 2] = (byte)(obj.Mask.Data[j] != 0 ? 255 : 0);
                files.Add(maskPath, ImageWriter.EncodePng(new RgbImage(obj.Mask.Width, obj.Mask.Height, rgb)));
            }
        }
        var doc = new JsonObject
        {
            ["image"] = Path.GetFullPath(imagePath),
            ["width"] = image.Width,
            ["height"] = image.Height,
            ["mode"] = mode,
            ["text_prompt"] = text,
            ["threshold"] = mode == "detector" ? threshold : null,
            ["score"] = mode == "detector" ? "sigmoid(logit)*sigmoid(presence)" : "predicted IoU",
            ["detections"] = list,
        };
        files.Add(o.Json, doc.ToJsonString(JsonOptions));
        files.Commit(overwrite: force);
        if (masks && force) RemoveStaleMasks(o, objects.Count);
    }

    /// <summary>Mask PNGs of an earlier run beyond this run's count (STEM_maskK.png, K ≥ count), which would not match the new JSON.</summary>
    private static void RemoveStaleMasks(OutputPaths o, int count)
    {
        string dir = Path.GetDirectoryName(o.MaskPrefix)!;
        string stem = Path.GetFileName(o.Json)[..^".json".Length];
        foreach (var f in Directory.GetFiles(dir))
        {
            string name = Path.GetFileName(f);
            if (IsMaskFileOf(name, stem) && int.TryParse(name[(stem.Length + "_mask".Length)..^".png".Length], out int k) && k >= count)
                File.Delete(f);
        }
    }

    /// <summary>Indented; RLE counts written as they are ('<', '>', '`' unescaped, as pycocotools' own json.dump writes them).</summary>
    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    private static string F(float v) => v.ToString(CultureInfo.InvariantCulture);

    internal static (float X, float Y, bool Positive) ParsePoint(string v)
    {
        var (xy, positive) = ParseTagged(v, "point", 2, "x,y");
        return (xy[0], xy[1], positive);
    }

    internal static (float[] Values, bool Positive) ParseBox(string v, string option) => ParseTagged(v, option, 4, "4 comma-separated numbers");

    /// <summary>"n1,n2,...[:neg|:pos]" with exactly <paramref name="count"/> finite numbers.</summary>
    private static (float[] Values, bool Positive) ParseTagged(string v, string option, int count, string expected)
    {
        bool positive = true;
        string body = v;
        int colon = v.LastIndexOf(':');
        if (colon >= 0)
        {
            string tag = v[(colon + 1)..].Trim().ToLowerInvariant();
            if (tag is "neg" or "negative") positive = false;
            else if (tag is not ("pos" or "positive")) throw new UsageException($"--{option} '{v}': the suffix must be :neg or :pos");
            body = v[..colon];
        }
        var parts = body.Split(',');
        if (parts.Length != count) throw new UsageException($"--{option} '{v}': expected {expected}");
        var values = new float[count];
        for (int i = 0; i < count; i++)
            if (!float.TryParse(parts[i].Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out values[i]) || !float.IsFinite(values[i]))
                throw new UsageException($"--{option} '{v}': '{parts[i]}' is not a number");
        return (values, positive);
    }

    internal static Sam3Config ResolveConfig(string value)
    {
        if (value is "full" or "tiny") return Sam3Config.Resolve(value);
        if (!File.Exists(value)) throw new UsageException($"--config '{value}' is neither full, tiny nor an existing file");
        return Sam3Config.Load(value);
    }
}
