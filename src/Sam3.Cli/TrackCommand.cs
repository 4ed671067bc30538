using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using OpenCvSharp;
using Sam3.Torch;
using Sam3.Torch.IO;
using Sam3.Torch.Processing;
using Sam3.Torch.Video;
using Sam3.Torch.Visualization;

namespace Sam3.Cli;

/// <summary>
/// <c>sam3 track</c>: the SAM2-style video tracker. Objects are prompted with clicks and/or a box on given frames, then
/// tracked through the video; per frame one JSON line (object id, score, xyxy box, mask as COCO RLE) and an overlay
/// video (each object in its own colour on every frame). Ctrl-C stops after the current frame and keeps what was written.
/// </summary>
internal static class TrackCommand
{


    internal sealed record PromptSpec(int Frame, int ObjectId, List<VideoPoint> Points, float[]? Box);

    public static int Run(CliArgs a, TextWriter stdout, TextWriter stderr, CancellationToken cancel = default)
    {
        if (a.Positional.Count > 0) throw new UsageException($"track: unexpected argument '{a.Positional[0]}'");
        string checkpoint = a.Required("checkpoint");
        string video = a.Required("video");
        string outDir = a.Required("out");
        var prompts = ParsePrompts(a.Ordered);
        if (prompts.Count == 0) throw new UsageException("track: give at least one --point or --box");
        int? start = a.Value("start") is null ? null : Int(a, "start", 0);
        int? maxFrames = a.Value("max-frames") is null ? null : Int(a, "max-frames", 0);
        bool writeVideo = !a.Flag("no-video");
        double? fpsOption = a.Value("fps") is null ? null : a.Double("fps", 10);
        if (fpsOption is <= 0) throw new UsageException("--fps must be positive");

        // cheap checks before the model load: outputs, the video, the prompts against it
        string jsonl = Path.Combine(outDir, "tracks.jsonl"), mp4 = Path.Combine(outDir, "overlay.mp4");
        foreach (var f in writeVideo ? new[] { jsonl, mp4 } : [jsonl])
            if (File.Exists(f) && !a.Flag("force")) throw new UsageException($"output {f} exists (use --force to replace it)");
        VideoInputValidation.Check(video); // issue 17: empty, device, empty folder, unreadable video, before the load
        var (_, modelFiles) = ModelArguments.Resolve(checkpoint, a.Value("config"), vocab: null, requireTokenizer: false);
        if (!File.Exists(video) && !Directory.Exists(video)) throw new Sam3ImageException($"video not found: {video}");

        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var tracker = VideoTracker.Load(modelFiles.CheckpointPath, modelFiles.Config);
        stderr.WriteLine(string.Format(CultureInfo.InvariantCulture, "loaded {0} in {1:F1} s", Path.GetFileName(modelFiles.CheckpointPath), sw.Elapsed.TotalSeconds));
        using var session = tracker.Open(video);
        foreach (var p in prompts)
        {
            if (p.Frame < 0 || p.Frame >= session.FrameCount)
                throw new Sam3PromptException($"prompt frame {p.Frame} outside [0, {session.FrameCount - 1}] of {video}");
            foreach (var pt in p.Points)
                if (pt.X < 0 || pt.Y < 0 || pt.X > session.Width || pt.Y > session.Height)
                    throw new Sam3PromptException($"point ({pt.X}, {pt.Y}) on frame {p.Frame} lies outside the {session.Width}x{session.Height} video");
            if (p.Box is { } b && (b[0] < 0 || b[1] < 0 || b[2] > session.Width || b[3] > session.Height || b[2] <= b[0] || b[3] <= b[1]))
                throw new Sam3PromptException($"box ({string.Join(",", b)}) on frame {p.Frame} is not an xyxy box inside the {session.Width}x{session.Height} video");
        }
        if (start is int s0 && s0 >= session.FrameCount) throw new Sam3PromptException($"--start {s0} outside [0, {session.FrameCount - 1}]");
        foreach (var p in prompts)
        {
            if (p.Box is { } b) session.AddBox(p.Frame, p.ObjectId, b[0], b[1], b[2], b[3], p.Points.Count > 0 ? p.Points : null);
            else session.AddPoints(p.Frame, p.ObjectId, p.Points);
        }

        double fps = fpsOption ?? VideoFps(video) ?? 10.0;
        var ids = session.ObjectIds;
        Directory.CreateDirectory(outDir);
        using var runLock = RunLock.ForFolder(outDir);
        // streamed outputs under temporary names, renamed into place together when the run ends (issue 17)
        using var outputs = new AtomicStreamSet();
        using var lines = new StreamWriter(outputs.Stage(jsonl), append: false);
        VideoWriter? writer = null;
        if (writeVideo)
        {
            writer = new VideoWriter(outputs.Stage(mp4), FourCC.FromString("mp4v"), fps, new OpenCvSharp.Size(session.Width, session.Height));
            if (!writer.IsOpened())
            {
                writer.Dispose();
                throw new Sam3ImageException($"{mp4}: OpenCV cannot write mp4 video here (no encoder); use --no-video");
            }
        }
        // frames left in the video bound the run (--max-frames or a prompt frame can end it sooner)
        var bar = CliProgress.Start(stderr, Commands.IsConsoleTerminal(stderr), "track", session.FrameCount, "frames");
        int done = 0;
        bool stopped = false;
        sw.Restart();
        try
        {
            foreach (var frame in session.Propagate(start, maxFrames, a.Flag("reverse")))
            {
                lines.WriteLine(FrameJson(frame).ToJsonString(JsonOptions));
                lines.Flush();
                if (writer is not null)
                {
                    using var mat = Overlay(session.ReadFrame(frame.FrameIndex), frame, ids).ToMat();
                    writer.Write(mat);
                }
                done++;
                bar.Report(done, $"frame {frame.FrameIndex}");
                if (cancel.IsCancellationRequested) { stopped = true; break; }
            }
        }
        finally
        {
            writer?.Release();
            writer?.Dispose();
            bar.Dispose();
        }
        lines.Dispose();
        outputs.Commit(overwrite: a.Flag("force"));
        stdout.WriteLine(string.Format(CultureInfo.InvariantCulture, "{0}{1} frame(s), {2} object(s) in {3:F1} s ({4:F2} frames/s) -> {5}{6}",
            stopped ? "stopped after " : "", done, ids.Count, sw.Elapsed.TotalSeconds, done / Math.Max(sw.Elapsed.TotalSeconds, 1e-9), jsonl,
            writeVideo ? ", " + mp4 : ""));
        return 0;
    }

    /// <summary>Entry from the command table: Ctrl-C cancels (after the frame in progress).</summary>
    public static int RunWithConsoleCancel(CliArgs args, TextWriter stdout, TextWriter stderr)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler handler = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += handler;
        try
        {
            return Run(args, stdout, stderr, cts.Token);
        }
        finally
        {
            Console.CancelKeyPress -= handler;
        }
    }

    private static int Int(CliArgs a, string name, int min)
    {
        string v = a.Value(name)!;
        if (!int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int x) || x < min)
            throw new UsageException($"--{name} expects an integer ≥ {min}, got '{v}'");
        return x;
    }

    /// <summary>Prompts in command-line order; each --obj ID takes the prompts since the previous --obj.</summary>
    public static List<PromptSpec> ParsePrompts(IReadOnlyList<string> args)
    {
        var pending = new List<(string Kind, string Value)>();
        var assigned = new List<(int Obj, string Kind, string Value)>();
        bool anyObj = false;
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i], name, value;
            if (!arg.StartsWith("--")) continue;
            int eq = arg.IndexOf('=');
            if (eq > 0) { name = arg[2..eq]; value = arg[(eq + 1)..]; }
            else
            {
                name = arg[2..];
                if (name is not ("point" or "box" or "obj")) continue;
                if (i + 1 >= args.Count) continue; // CliArgs reports it
                value = args[++i];
            }
            if (name is "point" or "box") pending.Add((name, value));
            else if (name == "obj")
            {
                anyObj = true;
                if (!int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int id))
                    throw new UsageException($"--obj expects an integer object id, got '{value}'");
                if (pending.Count == 0) throw new UsageException($"--obj {id} follows no --point/--box");
                assigned.AddRange(pending.Select(p => (id, p.Kind, p.Value)));
                pending.Clear();
            }
        }
        if (pending.Count > 0)
        {
            if (anyObj) throw new UsageException($"--{pending[0].Kind} {pending[0].Value} has no --obj after it");
            assigned.AddRange(pending.Select(p => (1, p.Kind, p.Value)));
        }
        var byKey = new Dictionary<(int Frame, int Obj), PromptSpec>();
        var order = new List<(int, int)>();
        foreach (var (obj, kind, value) in assigned)
        {
            int at = value.LastIndexOf('@');
            if (at < 0) throw new UsageException($"--{kind} '{value}': add the frame as @FRAME");
            if (!int.TryParse(value[(at + 1)..], NumberStyles.Integer, CultureInfo.InvariantCulture, out int frame) || frame < 0)
                throw new UsageException($"--{kind} '{value}': '{value[(at + 1)..]}' is not a frame index");
            string body = value[..at];
            if (!byKey.TryGetValue((frame, obj), out var spec))
            {
                spec = byKey[(frame, obj)] = new PromptSpec(frame, obj, new List<VideoPoint>(), null);
                order.Add((frame, obj));
            }
            if (kind == "point")
            {
                var (x, y, positive) = SegmentCommand.ParsePoint(body);
                spec.Points.Add(new VideoPoint(x, y, positive));
            }
            else
            {
                var (v, positive) = SegmentCommand.ParseBox(body, "box");
                if (!positive) throw new UsageException($"--box '{value}': boxes cannot be negative");
                if (spec.Box is not null) throw new UsageException($"--box '{value}': object {obj} already has a box on frame {frame}");
                if (v[2] <= v[0] || v[3] <= v[1]) throw new UsageException($"--box '{value}': expected x0 < x1 and y0 < y1");
                byKey[(frame, obj)] = spec with { Box = v };
            }
        }
        return order.Select(k => byKey[k]).ToList();
    }

    private static double? VideoFps(string path)
    {
        if (Directory.Exists(path)) return null;
        try
        {
            using var cap = new VideoCapture(path);
            double fps = cap.IsOpened() ? cap.Fps : 0;
            return fps > 0 && double.IsFinite(fps) ? fps : null;
        }
        catch (OpenCVException)
        {
            return null;
        }
    }

    private static JsonObject FrameJson(TrackedFrame frame)
    {
        var objects = new JsonArray();
        foreach (var o in frame.Objects)
        {
            var rle = CocoRle.Encode(o.Mask, o.Height, o.Width);
            objects.Add(new JsonObject
            {
                ["id"] = o.ObjectId,
                ["score"] = JsonNumber.Of(o.Score),
                ["score_logit"] = o.ScoreLogit,
                ["bbox_xyxy"] = o.Box is null ? null : new JsonArray(o.Box.Select(v => (JsonNode)JsonValue.Create(v)!).ToArray()),
                ["area"] = o.Area,
                ["segmentation"] = JsonNode.Parse(rle.ToJson()),
            });
        }
        return new JsonObject { ["frame"] = frame.FrameIndex, ["objects"] = objects };
    }

    /// <summary>Each object's mask blended at 50% in a colour fixed by its position among the session's ids.</summary>
    internal static RgbImage Overlay(RgbImage image, TrackedFrame frame, IReadOnlyList<int> ids)
    {
        var data = (byte[])image.Data.Clone();
        foreach (var o in frame.Objects)
        {
            int slot = Math.Max(0, IndexOf(ids, o.ObjectId));
            var c = Palette.At(slot);
            for (int i = 0; i < o.Mask.Length; i++)
            {
                if (o.Mask[i] == 0) continue;
                int p = i * 3;
                data[p] = (byte)((data[p] + c.R + 1) / 2);
                data[p + 1] = (byte)((data[p + 1] + c.G + 1) / 2);
                data[p + 2] = (byte)((data[p + 2] + c.B + 1) / 2);
            }
        }
        return new RgbImage(image.Width, image.Height, data);
    }

    private static int IndexOf(IReadOnlyList<int> ids, int id)
    {
        for (int i = 0; i < ids.Count; i++) if (ids[i] == id) return i;
        return -1;
    }

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = false };
}
