using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sam3.Torch;
using Sam3.Torch.Batched;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using TorchSharp;

namespace Sam3.Cli;

/// <summary>
/// <c>sam3 label</c>: labels a dataset with the batched query API and writes the standard COCO results format
/// (<c>image_id</c>, <c>category_id</c>, <c>segmentation</c> as compressed RLE, <c>bbox</c> xywh, <c>score</c>) plus a
/// categories file (COCO <c>images</c> and <c>categories</c>). Resumable: each labelled image is written atomically
/// (temp file + rename) to a work folder and recorded in a journal; a killed run continues where it stopped, and the
/// results file is assembled (atomically) only at the end. Shardable: <c>--shard i/N</c> takes every N-th image
/// (deterministic); <c>sam3 label merge</c> joins the shards' outputs into what one unsharded run writes.
/// </summary>
internal static class LabelCommand
{


    /// <summary>Environment variable of the fault-injection test hook: after this many images of this process are written
    /// (before their journal line) the process kills itself, as a scheduler's SIGKILL would.</summary>
    public const string KillAfterImagesVariable = "SAM3_LABEL_TEST_KILL_AFTER_IMAGES";

    internal static readonly string[] ImageExtensions = [".jpg", ".jpeg", ".png", ".bmp", ".webp"];

    internal sealed record LabelImage(long Id, string Path, string FileName);
    internal sealed record LabelQuery(int Line, long QueryId, long ImageId, string Text, int CategoryId, QueryBox[] Boxes);
    internal sealed record LabelCategory(int Id, string Name);

    /// <summary>Every image of the run (ids 1.. in input order), the categories, and the queries (null for --prompts:
    /// every category's name on every image).</summary>
    internal sealed record LabelPlan(IReadOnlyList<LabelImage> Images, IReadOnlyList<LabelCategory> Categories, IReadOnlyList<LabelQuery>? Queries,
        string QueriesSource);

    public static int Run(CliArgs a, TextWriter stdout, TextWriter stderr)
    {
        if (a.Positional.Count > 0) throw new UsageException($"label: unexpected argument '{a.Positional[0]}'");
        string checkpoint = a.Required("checkpoint");
        string outPath = a.Required("out");
        if (string.IsNullOrWhiteSpace(outPath)) throw new UsageException("--out is empty; give an output file name (RESULTS.json)");
        outPath = Path.GetFullPath(outPath);
        double threshold = a.Double("threshold", 0.5);
        if (threshold < 0 || threshold >= 1) throw new UsageException($"--threshold must be in [0,1), got {threshold}");
        int maxDets = Int(a, "max-dets", 100, 1);
        int batchImages = Int(a, "batch-images", 1, 1);
        var (shardIndex, shardCount) = ParseShard(a.Value("shard") ?? "0/1");
        string? prompts = a.Value("prompts"), queries = a.Value("queries"), images = a.Value("images");
        if ((prompts is null) == (queries is null)) throw new UsageException("label: give either --prompts (with --images) or --queries");
        if (prompts is not null && images is null) throw new UsageException("label: --prompts needs --images");
        if (queries is not null && images is not null) throw new UsageException("label: --images goes with --prompts; with --queries each line names its image");
        string device = a.Value("device") ?? "cpu";
        if (device is not ("cpu" or "cuda")) throw new UsageException($"--device must be cpu or cuda, got '{device}'");

        var plan = prompts is not null ? PlanFromPrompts(images!, prompts) : PlanFromQueries(queries!);
        var shard = plan.Images.Where((_, p) => p % shardCount == shardIndex).ToList();
        ValidateShard(plan, shard);
        string work = outPath + ".work";
        if (!File.Exists(checkpoint)) throw new Sam3CheckpointException($"checkpoint not found: {checkpoint}");
        string configName = a.Value("config") ?? "full";
        var config = SegmentCommand.ResolveConfig(configName);
        string fingerprint = Fingerprint(plan, shard, checkpoint, configName, threshold, maxDets, shardIndex, shardCount);

        // output / work folder state; one run per output (Safety/RunLock), never onto the checkpoint
        InputValidation.OutputFile(outPath, "--out");
        InputValidation.NotAnInput(outPath, [checkpoint], "choose another --out");
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(outPath))!);
        using var runLock = RunLock.ForFile(outPath);
        if (a.Flag("force"))
        {
            // the old results stay until the new ones, complete, replace them (atomic rename at the end)
            if (Directory.Exists(work)) Directory.Delete(work, recursive: true);
        }
        var journal = new LabelWorkFolder(work);
        if (!Directory.Exists(work))
        {
            if (File.Exists(outPath) && !a.Flag("force")) throw new UsageException($"output {outPath} exists (use --force to label again)");
            Directory.CreateDirectory(Path.GetDirectoryName(outPath)!);
            journal.Create(fingerprint, shardIndex, shardCount, plan.Images.Count);
        }
        else journal.Open(fingerprint);
        var done = journal.DoneImages();
        var pending = shard.Where(i => !done.Contains(i.Id)).ToList();
        if (done.Count > 0)
            stderr.WriteLine($"resuming: {shard.Count - pending.Count} of {shard.Count} image(s) already labelled in {work}");

        if (pending.Count > 0)
        {
            var sw = Stopwatch.StartNew();
            using var model = Sam3Model.Load(checkpoint, new Sam3ModelOptions
            {
                Config = config,
                TokenizerPath = a.Value("vocab"),
                EnableInteractivePredictor = false,
                Device = device == "cuda" ? "cuda" : "cpu",
            });
            stderr.WriteLine(string.Format(CultureInfo.InvariantCulture, "loaded {0} in {1:F1} s", Path.GetFileName(model.CheckpointPath), sw.Elapsed.TotalSeconds));
            var predictor = model.CreateBatchedPredictor();
            var post = new PostProcessImage
            {
                UseOriginalIds = true, // key = image id, label = category id (upstream's COCO evaluation flow)
                MaxDetsPerImg = maxDets,
                DetectionThreshold = threshold,
                ConvertMaskToRle = true,
            };
            var byImage = plan.Queries?.ToLookup(q => q.ImageId);
            using var progress = new LabelProgress(stderr, Commands.IsConsoleTerminal(stderr), shard.Count, shard.Count - pending.Count);
            int killAfter = int.TryParse(Environment.GetEnvironmentVariable(KillAfterImagesVariable), out var k) ? k : -1;
            int written = 0;
            long counter = 0;
            foreach (var chunk in pending.Chunk(batchImages))
            {
                var decoded = chunk.Select(i => ImageLoader.Load(i.Path)).ToArray();
                var datapoints = new List<Datapoint>();
                int queryCount = 0;
                for (int j = 0; j < chunk.Length; j++)
                {
                    var img = decoded[j];
                    var list = byImage is null
                        ? plan.Categories.Select(c => new FindQuery(c.Name, new InferenceMetadata(++counter, chunk[j].Id, c.Id, img.Height, img.Width))).ToList()
                        : byImage[chunk[j].Id].Select(q => new FindQuery(q.Text, new InferenceMetadata(q.QueryId, chunk[j].Id, q.CategoryId, img.Height, img.Width),
                            q.Boxes.Select(b => BoxPrompt.Xyxy(b.X0, b.Y0, b.X1, b.Y1, b.Positive)).ToList())).ToList();
                    queryCount += list.Count;
                    datapoints.Add(new Datapoint(img, list));
                }
                BatchedResultTensors results;
                try
                {
                    results = predictor.PredictTensors(datapoints, post);
                }
                catch (Sam3QueryException e) when (plan.Queries is not null)
                {
                    var line = plan.Queries.FirstOrDefault(q => q.QueryId == e.CocoImageId);
                    throw new Sam3QueryException(e.CocoImageId, $"{plan.QueriesSource} line {line?.Line}: {e.Message}");
                }
                using (results)
                {
                    for (int j = 0; j < chunk.Length; j++)
                    {
                        var image = chunk[j];
                        var annotations = results.TryGetValue(image.Id, out var det) ? Annotations(image.Id, det) : new JsonArray();
                        journal.WriteImage(image.Id, new JsonObject
                        {
                            ["image_id"] = image.Id,
                            ["file_name"] = image.FileName,
                            ["width"] = decoded[j].Width,
                            ["height"] = decoded[j].Height,
                            ["annotations"] = annotations,
                        });
                        if (++written == killAfter) Process.GetCurrentProcess().Kill();
                        journal.Append(image.Id, annotations.Count);
                    }
                }
                progress.Report(chunk.Length, queryCount);
            }
            progress.Finish();
        }

        // assemble (every image of the shard, by id) and write the outputs atomically
        var pages = shard.Select(i => journal.ReadImage(i.Id)).ToList();
        var annotationsText = pages.SelectMany(p => p["annotations"]!.AsArray()).Select(n => n!.ToJsonString(JsonOptions)).ToList();
        var imagesJson = pages.Select(p => new JsonObject
        {
            ["id"] = p["image_id"]!.GetValue<long>(), ["file_name"] = p["file_name"]!.GetValue<string>(),
            ["width"] = p["width"]!.GetValue<int>(), ["height"] = p["height"]!.GetValue<int>(),
        }).Select(o => o.ToJsonString(JsonOptions)).ToList();
        var categoriesJson = plan.Categories.Select(c => new JsonObject { ["id"] = c.Id, ["name"] = c.Name }.ToJsonString(JsonOptions)).ToList();
        WriteOutputs(outPath, annotationsText, imagesJson, categoriesJson, shardIndex, shardCount, plan.Images.Count);
        Directory.Delete(work, recursive: true);
        stdout.WriteLine($"{outPath}: {annotationsText.Count} detection(s) on {shard.Count} image(s), {plan.Categories.Count} categor{(plan.Categories.Count == 1 ? "y" : "ies")}"
            + (shardCount > 1 ? $" (shard {shardIndex}/{shardCount} of {plan.Images.Count} images)" : ""));
        return 0;
    }

    private static int Int(CliArgs a, string name, int defaultValue, int min)
    {
        string? v = a.Value(name);
        if (v is null) return defaultValue;
        if (!int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) || n < min)
            throw new UsageException($"--{name} expects an integer >= {min}, got '{v}'");
        return n;
    }

    /// <summary>"i/N" with 0 &lt;= i &lt; N.</summary>
    public static (int Index, int Count) ParseShard(string v)
    {
        var parts = v.Split('/');
        if (parts.Length != 2 || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int i)
            || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 1 || i >= n)
            throw new UsageException($"--shard expects i/N with 0 <= i < N (e.g. 0/4), got '{v}'");
        return (i, n);
    }

    public static string CategoriesPath(string outPath) =>
        (outPath.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? outPath[..^5] : outPath) + ".categories.json";

    // ---------------------------------------------------------------- plans

    private static LabelPlan PlanFromPrompts(string images, string prompts)
    {
        var names = prompts.Split(',').Select(p => p.Trim()).ToList();
        if (names.Any(n => n.Length == 0)) throw new UsageException($"--prompts '{prompts}': empty category name");
        var dup = names.GroupBy(n => n).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new UsageException($"--prompts '{prompts}': '{dup.Key}' is given twice");
        var categories = names.Select((n, i) => new LabelCategory(i + 1, n)).ToList();
        List<(string Path, string Name)> files;
        if (Directory.Exists(images))
        {
            string dir = Path.GetFullPath(images);
            files = Directory.GetFiles(dir)
                .Where(f => ImageExtensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                .Select(f => (f, Path.GetFileName(f))).OrderBy(f => f.Item2, StringComparer.Ordinal).ToList();
            if (files.Count == 0) throw new UsageException($"--images {images}: no {string.Join("/", ImageExtensions)} file in the folder");
        }
        else if (File.Exists(images))
        {
            string baseDir = Path.GetDirectoryName(Path.GetFullPath(images))!;
            files = new();
            int n = 0;
            foreach (var raw in File.ReadLines(images))
            {
                n++;
                string line = raw.Trim();
                if (line.Length == 0 || line.StartsWith('#')) continue;
                string full = Path.GetFullPath(Path.Combine(baseDir, line));
                if (!File.Exists(full)) throw new Sam3ImageException($"{images} line {n}: image not found: {line}");
                files.Add((full, line));
            }
            if (files.Count == 0) throw new UsageException($"--images {images}: the list names no image");
            var again = files.GroupBy(f => f.Path).FirstOrDefault(g => g.Count() > 1);
            if (again is not null) throw new UsageException($"--images {images}: {again.First().Name} is listed twice");
        }
        else throw new UsageException($"--images {images}: no such folder or list file");
        var list = files.Select((f, i) => new LabelImage(i + 1, f.Path, f.Name)).ToList();
        return new LabelPlan(list, categories, null, "--prompts");
    }

    private static LabelPlan PlanFromQueries(string path)
    {
        if (!File.Exists(path)) throw new UsageException($"--queries {path}: file not found");
        string baseDir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        string src = Path.GetFileName(path);
        var images = new List<LabelImage>();
        var imageIds = new Dictionary<string, long>();
        var raw = new List<(int Line, long Id, long ImageId, string Text, int? Category, QueryBox[] Boxes)>();
        var ids = new Dictionary<long, int>();
        int n = 0;
        foreach (var textLine in File.ReadLines(path))
        {
            n++;
            if (textLine.Trim().Length == 0) continue;
            JsonObject o;
            try
            {
                o = JsonNode.Parse(textLine) as JsonObject ?? throw new Sam3PromptException($"{src} line {n}: not a JSON object");
            }
            catch (JsonException e)
            {
                throw new Sam3PromptException($"{src} line {n}: not valid JSON ({e.Message})");
            }
            string what(string msg) => $"{src} line {n}: {msg}";
            string image = o["image"]?.GetValue<string>() ?? throw new Sam3PromptException(what("no \"image\""));
            string full = Path.GetFullPath(Path.Combine(baseDir, image));
            long queryId = o["id"] is { } idNode ? idNode.GetValue<long>() : n;
            if (ids.TryGetValue(queryId, out int first))
                throw new Sam3QueryException(queryId, what($"query id {queryId} repeats the id of line {first}"));
            ids[queryId] = n;
            if (!File.Exists(full)) throw new Sam3QueryException(queryId, what($"image does not exist: {image}"));
            string text = o["text"]?.GetValue<string>() ?? "";
            var boxes = new List<QueryBox>();
            if (o["boxes"] is JsonArray bx)
            {
                var labels = o["box_labels"] as JsonArray;
                if (labels is not null && labels.Count != bx.Count) throw new Sam3QueryException(queryId, what($"{bx.Count} boxes but {labels.Count} box_labels"));
                for (int j = 0; j < bx.Count; j++)
                {
                    var v = bx[j]?.AsArray().Select(x => x!.GetValue<float>()).ToArray();
                    if (v is null || v.Length != 4) throw new Sam3QueryException(queryId, what($"box {j} is not [x0, y0, x1, y1]"));
                    bool positive = labels?[j] is not { } l || (l.GetValueKind() == JsonValueKind.Number ? l.GetValue<int>() != 0 : l.GetValue<bool>());
                    boxes.Add(new QueryBox(v[0], v[1], v[2], v[3], positive));
                }
            }
            if (string.IsNullOrWhiteSpace(text) && boxes.Count == 0)
                throw new Sam3QueryException(queryId, what("empty query text and no boxes (give a text, boxes, or both)"));
            if (!imageIds.TryGetValue(full, out long imageId))
            {
                imageId = images.Count + 1;
                imageIds[full] = imageId;
                images.Add(new LabelImage(imageId, full, image));
            }
            int? category = o["category_id"]?.GetValue<int>();
            raw.Add((n, queryId, imageId, string.IsNullOrWhiteSpace(text) ? FindQuery.VisualText : text, category, boxes.ToArray()));
        }
        if (raw.Count == 0) throw new UsageException($"--queries {path}: no query");
        // categories: given ids (all lines or none), else one per distinct text in order of first appearance
        var categories = new List<LabelCategory>();
        if (raw.Any(r => r.Category is not null))
        {
            var missing = raw.FirstOrDefault(r => r.Category is null);
            if (missing.Line != 0) throw new Sam3QueryException(missing.Id, $"{src} line {missing.Line}: no category_id (other lines give one: give it on every line or on none)");
            foreach (var g in raw.GroupBy(r => r.Category!.Value).OrderBy(g => g.Key)) categories.Add(new LabelCategory(g.Key, g.First().Text));
        }
        else
            foreach (var t in raw.Select(r => r.Text).Distinct()) categories.Add(new LabelCategory(categories.Count + 1, t));
        var byText = categories.ToDictionary(c => c.Name, c => c.Id);
        var queries = raw.Select(r => new LabelQuery(r.Line, r.Id, r.ImageId, r.Text, r.Category ?? byText[r.Text], r.Boxes)).ToList();
        return new LabelPlan(images, categories, queries, src);
    }

    /// <summary>Boxes against the image sizes (read from the file headers) of this shard's images, before the model loads.</summary>
    private static void ValidateShard(LabelPlan plan, List<LabelImage> shard)
    {
        if (plan.Queries is null) return;
        var inShard = shard.ToDictionary(i => i.Id);
        foreach (var q in plan.Queries)
        {
            if (q.Boxes.Length == 0 || !inShard.TryGetValue(q.ImageId, out var img)) continue;
            var info = ImageHeader.Inspect(File.ReadAllBytes(img.Path), img.FileName);
            foreach (var b in q.Boxes)
            {
                string box = string.Create(CultureInfo.InvariantCulture, $"[{b.X0}, {b.Y0}, {b.X1}, {b.Y1}]");
                if (!(b.X1 > b.X0 && b.Y1 > b.Y0))
                    throw new Sam3QueryException(q.QueryId, $"{plan.QueriesSource} line {q.Line}: box {box} is empty or inverted (pixel x0,y0,x1,y1 expected)");
                if (b.X0 < 0 || b.Y0 < 0 || b.X1 > info.Width || b.Y1 > info.Height)
                    throw new Sam3QueryException(q.QueryId, $"{plan.QueriesSource} line {q.Line}: box {box} lies outside the {info.Width}x{info.Height} image {img.FileName}");
            }
        }
    }

    private static string Fingerprint(LabelPlan plan, List<LabelImage> shard, string checkpoint, string config, double threshold, int maxDets, int shardIndex, int shardCount)
    {
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"v1|{Path.GetFullPath(checkpoint)}|{new FileInfo(checkpoint).Length}|{config}|{threshold:R}|{maxDets}|{shardIndex}/{shardCount}|{plan.Images.Count}\n");
        foreach (var i in shard) sb.Append(CultureInfo.InvariantCulture, $"{i.Id}|{i.Path}\n");
        foreach (var c in plan.Categories) sb.Append(CultureInfo.InvariantCulture, $"c{c.Id}|{c.Name}\n");
        foreach (var q in plan.Queries ?? [])
            sb.Append(CultureInfo.InvariantCulture, $"q{q.QueryId}|{q.ImageId}|{q.CategoryId}|{q.Text}|{string.Join(";", q.Boxes.Select(b => $"{b.X0:R},{b.Y0:R},{b.X1:R},{b.Y1:R},{b.Positive}"))}\n");
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())));
    }

    // ---------------------------------------------------------------- outputs

    /// <summary>COCO results entries of one image: bbox xywh from the detector's xyxy box, mask as compressed RLE.</summary>
    private static JsonArray Annotations(long imageId, QueryResultTensors det)
    {
        var list = new JsonArray();
        var scores = det.ScoreArray();
        var labels = det.LabelArray();
        var boxes = det.BoxArray();
        for (int k = 0; k < det.Count; k++)
        {
            var b = boxes[k];
            var rle = det.MasksRle![k];
            list.Add(new JsonObject
            {
                ["image_id"] = imageId,
                ["category_id"] = labels[k],
                ["segmentation"] = new JsonObject { ["size"] = new JsonArray(rle.Height, rle.Width), ["counts"] = rle.Counts },
                ["bbox"] = new JsonArray(b[0], b[1], b[2] - b[0], b[3] - b[1]),
                ["score"] = scores[k],
            });
        }
        return list;
    }

    /// <summary>RLE counts written as they are ('&lt;', '&gt;', '`' unescaped, as pycocotools' json.dump writes them).</summary>
    internal static readonly JsonSerializerOptions JsonOptions = new()
    {
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>Results (a JSON array, one entry per line) and the categories file, each written atomically.</summary>
    private static void WriteOutputs(string outPath, IReadOnlyList<string> annotations, IReadOnlyList<string> images, IReadOnlyList<string> categories,
        int shardIndex, int shardCount, int totalImages)
    {
        static string Array(IEnumerable<string> items, string indent) =>
            items.Any() ? "[\n" + string.Join(",\n", items.Select(i => indent + i)) + "\n" + indent[..^2] + "]" : "[]";
        var cats = new StringBuilder();
        cats.Append("{\n");
        cats.Append(CultureInfo.InvariantCulture, $"  \"info\": {{\"description\": \"sam3 label\", \"shard_index\": {shardIndex}, \"shard_count\": {shardCount}, \"total_images\": {totalImages}}},\n");
        cats.Append("  \"images\": ").Append(Array(images, "    ")).Append(",\n");
        cats.Append("  \"categories\": ").Append(Array(categories, "    ")).Append('\n');
        cats.Append("}\n");
        AtomicFile.WriteAllText(CategoriesPath(outPath), cats.ToString());
        AtomicFile.WriteAllText(outPath, Array(annotations, "  ") + "\n");
    }

    // ---------------------------------------------------------------- merge

    internal static int Merge(CliArgs a, TextWriter stdout)
    {
        string outPath = a.Required("out");
        if (string.IsNullOrWhiteSpace(outPath)) throw new UsageException("--out is empty; give an output file name (RESULTS.json)");
        outPath = Path.GetFullPath(outPath);
        if (a.Positional.Count == 0) throw new UsageException("label merge: give the shard result files to join");
        var inputs = a.Positional.Select(Path.GetFullPath).ToList();
        if (inputs.Contains(outPath)) throw new UsageException($"label merge: the output {outPath} is also an input");
        if (File.Exists(outPath) && !a.Flag("force")) throw new UsageException($"output {outPath} exists (use --force to replace it)");
        var annotations = new List<(long ImageId, int Order, string Text)>();
        var images = new List<(long Id, string Text)>();
        string? categories = null;
        int shardCount = -1, total = -1;
        var shardFiles = new Dictionary<int, string>();
        int order = 0;
        foreach (var input in inputs)
        {
            string catPath = CategoriesPath(input);
            if (!File.Exists(input)) throw new Sam3Exception($"label merge: {input} not found");
            if (!File.Exists(catPath)) throw new Sam3Exception($"label merge: {catPath} (the categories file of {Path.GetFileName(input)}) not found");
            using var cat = JsonDocument.Parse(File.ReadAllText(catPath));
            var info = cat.RootElement.GetProperty("info");
            int index = info.GetProperty("shard_index").GetInt32(), count = info.GetProperty("shard_count").GetInt32(), tot = info.GetProperty("total_images").GetInt32();
            if (shardCount < 0) { shardCount = count; total = tot; }
            else if (count != shardCount || tot != total)
                throw new Sam3Exception($"label merge: {Path.GetFileName(input)} is shard {index}/{count} of {tot} images, the others are of {shardCount} shards and {total} images");
            if (!shardFiles.TryAdd(index, input)) throw new Sam3Exception($"label merge: shard {index}/{count} given twice ({Path.GetFileName(shardFiles[index])} and {Path.GetFileName(input)})");
            string c = cat.RootElement.GetProperty("categories").GetRawText();
            if (categories is not null && c != categories) throw new Sam3Exception($"label merge: {Path.GetFileName(catPath)} has other categories than the first shard");
            categories = c;
            foreach (var img in cat.RootElement.GetProperty("images").EnumerateArray())
                images.Add((img.GetProperty("id").GetInt64(), JsonNode.Parse(img.GetRawText())!.ToJsonString(JsonOptions)));
            var results = JsonNode.Parse(File.ReadAllText(input)) as JsonArray ?? throw new Sam3Exception($"label merge: {input} is not a COCO results array");
            foreach (var r in results) annotations.Add((r!["image_id"]!.GetValue<long>(), order++, r.ToJsonString(JsonOptions)));
        }
        var missing = Enumerable.Range(0, shardCount).Where(i => !shardFiles.ContainsKey(i)).ToList();
        if (missing.Count > 0) throw new Sam3Exception($"label merge: shard(s) {string.Join(", ", missing.Select(i => $"{i}/{shardCount}"))} missing");
        var dupImage = images.GroupBy(i => i.Id).FirstOrDefault(g => g.Count() > 1);
        if (dupImage is not null) throw new Sam3Exception($"label merge: image {dupImage.Key} appears in more than one shard");
        if (images.Count != total) throw new Sam3Exception($"label merge: the shards hold {images.Count} images, the run had {total}");
        using var catDoc = JsonDocument.Parse(categories!);
        var categoryList = catDoc.RootElement.EnumerateArray().Select(e => JsonNode.Parse(e.GetRawText())!.ToJsonString(JsonOptions)).ToList();
        var sorted = annotations.OrderBy(x => x.ImageId).ThenBy(x => x.Order).Select(x => x.Text).ToList();
        WriteOutputs(outPath, sorted, images.OrderBy(i => i.Id).Select(i => i.Text).ToList(), categoryList, 0, 1, total);
        stdout.WriteLine($"{outPath}: {sorted.Count} detection(s) on {images.Count} image(s) from {shardCount} shard(s)");
        return 0;
    }
}

/// <summary>
/// The work folder of a label run: <c>run.json</c> (the run's fingerprint: inputs, queries, model, settings, shard),
/// <c>images/ID.json</c> (one atomically written file per labelled image) and <c>journal.jsonl</c> (one line per image,
/// appended and flushed after its file). An image is done when both its journal line and its file exist; a line torn by
/// a kill is ignored (that image is labelled again and its file replaced), so nothing is duplicated or lost.
/// </summary>
internal sealed class LabelWorkFolder(string path)
{
    private string RunFile => Path.Combine(path, "run.json");
    private string JournalFile => Path.Combine(path, "journal.jsonl");
    private string ImageFile(long id) => Path.Combine(path, "images", id.ToString(CultureInfo.InvariantCulture) + ".json");

    public void Create(string fingerprint, int shardIndex, int shardCount, int totalImages)
    {
        Directory.CreateDirectory(Path.Combine(path, "images"));
        AtomicFile.WriteAllText(RunFile, new JsonObject
        {
            ["fingerprint"] = fingerprint, ["shard_index"] = shardIndex, ["shard_count"] = shardCount, ["total_images"] = totalImages,
            ["started"] = DateTime.UtcNow.ToString("O", CultureInfo.InvariantCulture),
        }.ToJsonString());
    }

    public void Open(string fingerprint)
    {
        if (!File.Exists(RunFile))
            throw new Sam3Exception($"{path} is not a label work folder (no run.json): remove it or use --force");
        string? previous = JsonNode.Parse(File.ReadAllText(RunFile))?["fingerprint"]?.GetValue<string>();
        if (previous != fingerprint)
            throw new Sam3Exception($"{path} belongs to a run with other inputs, queries, model or settings: rerun with the same arguments to resume, or use --force to start over");
        Directory.CreateDirectory(Path.Combine(path, "images"));
    }

    /// <summary>Ids of the images recorded in the journal whose file exists (lines torn by a kill are ignored).</summary>
    public HashSet<long> DoneImages()
    {
        var done = new HashSet<long>();
        if (!File.Exists(JournalFile)) return done;
        var lines = File.ReadAllLines(JournalFile);
        for (int i = 0; i < lines.Length; i++)
        {
            if (lines[i].Length == 0) continue;
            long id;
            try
            {
                id = JsonNode.Parse(lines[i])!["image_id"]!.GetValue<long>();
            }
            catch (Exception e) when (e is JsonException or NullReferenceException or InvalidOperationException or FormatException)
            {
                // a line torn by a kill mid-append (the next append starts a new line after it): that image is not done
                continue;
            }
            if (File.Exists(ImageFile(id))) done.Add(id);
        }
        return done;
    }

    public void WriteImage(long id, JsonObject page) => AtomicFile.WriteAllText(ImageFile(id), page.ToJsonString(LabelCommand.JsonOptions));

    public JsonObject ReadImage(long id) => JsonNode.Parse(File.ReadAllText(ImageFile(id))) as JsonObject
        ?? throw new Sam3Exception($"{ImageFile(id)} is not a JSON object");

    public void Append(long id, int detections)
    {
        string line = new JsonObject
        {
            ["image_id"] = id, ["detections"] = detections, ["time"] = DateTime.UtcNow.ToString("O", CultureInfo.InvariantCulture),
        }.ToJsonString() + "\n";
        using var fs = new FileStream(JournalFile, FileMode.Append, FileAccess.Write, FileShare.Read);
        // a torn previous line (killed mid-append) must not swallow this one
        if (fs.Length > 0)
        {
            using var check = new FileStream(JournalFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            check.Seek(-1, SeekOrigin.End);
            if (check.ReadByte() != '\n') line = "\n" + line;
        }
        fs.Write(Encoding.UTF8.GetBytes(line));
        fs.Flush(flushToDisk: true);
    }
}

/// <summary>Progress on stderr: images done, images/s and queries/s of this process, ETA. On a terminal a Spectre.Console
/// bar (<see cref="CliProgress"/>); in logs one line per 10 %.</summary>
internal sealed class LabelProgress : IDisposable
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly CliProgress _bar;
    private readonly int _total;
    private int _done, _processed, _queries;

    public LabelProgress(TextWriter writer, bool terminal, int total, int alreadyDone)
    {
        _total = total;
        _done = alreadyDone;
        _bar = CliProgress.Start(writer, terminal, "label", total, "images", alreadyDone, PlainLine);
    }

    public void Report(int images, int queries)
    {
        _done += images;
        _processed += images;
        _queries += queries;
        _bar.Report(_done, string.Format(CultureInfo.InvariantCulture, "({0:F2} queries/s)", _queries / Math.Max(1e-9, _clock.Elapsed.TotalSeconds)));
    }

    private string PlainLine(double done, double? total, TimeSpan elapsed)
    {
        double secs = Math.Max(1e-9, _clock.Elapsed.TotalSeconds);
        double ips = _processed / secs, qps = _queries / secs;
        var eta = TimeSpan.FromSeconds(ips > 0 ? (_total - _done) / ips : 0);
        int percent = _total == 0 ? 100 : _done * 100 / _total;
        return string.Format(CultureInfo.InvariantCulture, "label: {0}/{1} images ({2}%), {3:F2} images/s, {4:F2} queries/s, ETA {5}",
            _done, _total, percent, ips, qps, eta.ToString(@"h\:mm\:ss", CultureInfo.InvariantCulture));
    }

    public void Finish() => _bar.Dispose();

    public void Dispose() => Finish();
}
