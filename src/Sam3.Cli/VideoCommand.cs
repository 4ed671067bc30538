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
/// <c>sam3 video</c>: the text-prompted video predictor. Every instance of the text prompt is detected and tracked
/// (optionally refined or extended by clicks); writes one JSON line per frame (ids, probabilities, xywh boxes, COCO RLE
/// masks), a results file in the YouTube-VIS results format and an overlay video with a fixed colour per object id.
/// </summary>
internal static class VideoCommand
{


    public static int Run(CliArgs a, TextWriter stdout, TextWriter stderr, CancellationToken cancel = default)
    {
        if (a.Positional.Count > 0) throw new UsageException($"video: unexpected argument '{a.Positional[0]}'");
        string checkpoint = a.Required("checkpoint"), videoPath = a.Required("video"), outDir = a.Required("out"), text = a.Required("text");
        int textFrame = 0;
        if (a.Value("frame") is { } fv && (!int.TryParse(fv, NumberStyles.Integer, CultureInfo.InvariantCulture, out textFrame) || textFrame < 0))
            throw new UsageException($"--frame expects a frame index, got '{fv}'");
        var direction = (a.Value("direction") ?? "both") switch
        {
            "forward" => PropagationDirection.Forward,
            "backward" => PropagationDirection.Backward,
            "both" => PropagationDirection.Both,
            var d => throw new UsageException($"--direction expects forward, backward or both, got '{d}'"),
        };
        var clicks = TrackCommand.ParsePrompts(a.Ordered);
        if (clicks.Any(c => c.Box is not null)) throw new UsageException("video: boxes are not supported here; use --text and --point");
        bool writeVideo = !a.Flag("no-video");
        string jsonl = Path.Combine(outDir, "frames.jsonl"), results = Path.Combine(outDir, "results.json"), mp4 = Path.Combine(outDir, "overlay.mp4");
        foreach (var f in writeVideo ? new[] { jsonl, results, mp4 } : [jsonl, results])
            if (File.Exists(f) && !a.Flag("force")) throw new UsageException($"output {f} exists (use --force to replace it)");
        VideoInputValidation.Check(videoPath); // issue 17: empty, device, empty folder, unreadable video, before the load
        var (modelOptions, modelFiles) = ModelArguments.Resolve(checkpoint, a.Value("config"), a.Value("vocab"), requireTokenizer: true);
        if (!File.Exists(videoPath) && !Directory.Exists(videoPath)) throw new Sam3ImageException($"video not found: {videoPath}");

        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var predictor = Sam3VideoPredictor.Load(checkpoint, modelOptions);
        stderr.WriteLine(string.Format(CultureInfo.InvariantCulture, "loaded {0} in {1:F1} s", Path.GetFileName(modelFiles.CheckpointPath), sw.Elapsed.TotalSeconds));
        using var session = predictor.StartSession(videoPath);
        if (textFrame >= session.FrameCount) throw new Sam3PromptException($"--frame {textFrame} outside [0, {session.FrameCount - 1}]");
        var first = session.AddText(textFrame, text);
        stderr.WriteLine($"'{text}' on frame {textFrame}: {first.Objects.Count} object(s)");
        foreach (var c in clicks)
        {
            if (c.Frame >= session.FrameCount) throw new Sam3PromptException($"click frame {c.Frame} outside [0, {session.FrameCount - 1}]");
            var pts = c.Points.Select(p => new VideoPoint(p.X / session.Width, p.Y / session.Height, p.Positive)).ToList();
            session.AddPoints(c.Frame, c.ObjectId, pts);
        }

        Directory.CreateDirectory(outDir);
        using var runLock = RunLock.ForFolder(outDir);
        // streamed outputs under temporary names, renamed into place together when the run ends (issue 17)
        using var outputs = new AtomicStreamSet();
        double fps = 10.0;
        if (!Directory.Exists(videoPath))
        {
            using var cap = new VideoCapture(videoPath);
            if (cap.IsOpened() && cap.Fps > 0 && double.IsFinite(cap.Fps)) fps = cap.Fps;
        }
        VideoWriter? writer = null;
        if (writeVideo)
        {
            writer = new VideoWriter(outputs.Stage(mp4), FourCC.FromString("mp4v"), fps, new OpenCvSharp.Size(session.Width, session.Height));
            if (!writer.IsOpened()) { writer.Dispose(); throw new Sam3ImageException($"{mp4}: OpenCV cannot write mp4 video here; use --no-video"); }
        }
        // YouTube-VIS results: one entry per object, a segmentation (or null) per frame, the mean probability as score
        var perObject = new SortedDictionary<int, (JsonNode?[] Segs, double ScoreSum, int Count)>();
        var frames = new SortedDictionary<int, VideoFrameResult>();
        var bar = CliProgress.Start(stderr, Commands.IsConsoleTerminal(stderr), "video", session.FrameCount, "frames");
        bool stopped = false;
        int done = 0;
        sw.Restart();
        using (var lines = new StreamWriter(outputs.Stage(jsonl), append: false))
        {
            try
            {
                foreach (var frame in session.Propagate(direction, cancellationToken: cancel))
                {
                    var objs = new JsonArray();
                    foreach (var o in frame.Objects)
                    {
                        var rle = CocoRle.Encode(o.Mask, o.Height, o.Width);
                        var seg = JsonNode.Parse(rle.ToJson());
                        objs.Add(new JsonObject
                        {
                            ["id"] = o.ObjectId, ["score"] = JsonNumber.Of(o.Probability),
                            ["bbox_xywh"] = new JsonArray(o.BoxXywh.Select(v => (JsonNode)JsonValue.Create(v)!).ToArray()),
                            ["area"] = o.Area, ["segmentation"] = seg,
                        });
                        if (!perObject.TryGetValue(o.ObjectId, out var po)) po = (new JsonNode?[session.FrameCount], 0, 0);
                        po.Segs[frame.FrameIndex] = seg!.DeepClone();
                        perObject[o.ObjectId] = (po.Segs, po.ScoreSum + o.Probability, po.Count + 1);
                    }
                    lines.WriteLine(new JsonObject { ["frame"] = frame.FrameIndex, ["objects"] = objs }.ToJsonString());
                    lines.Flush();
                    if (writer is not null)
                    {
                        using var mat = Overlay(session.ReadFrame(frame.FrameIndex), frame).ToMat();
                        writer.Write(mat);
                    }
                    done++;
                    bar.Report(done, $"frame {frame.FrameIndex}, {frame.Objects.Count} object(s)");
                }
            }
            catch (OperationCanceledException)
            {
                stopped = true;
            }
            finally
            {
                writer?.Release();
                writer?.Dispose();
                bar.Dispose();
            }
        }
        var vis = new JsonArray();
        foreach (var (id, po) in perObject)
            vis.Add(new JsonObject
            {
                ["video_id"] = 0, ["category_id"] = 1, ["object_id"] = id,
                ["score"] = JsonNumber.Of(po.Count > 0 ? po.ScoreSum / po.Count : 0),
                ["segmentations"] = new JsonArray(po.Segs.Select(x => x?.DeepClone()).ToArray()),
            });
        File.WriteAllText(outputs.Stage(results), vis.ToJsonString());
        outputs.Commit(overwrite: a.Flag("force"));
        stdout.WriteLine(string.Format(CultureInfo.InvariantCulture, "{0}{1} frame(s), {2} object(s) in {3:F1} s ({4:F2} frames/s) -> {5}, {6}{7}",
            stopped ? "stopped after " : "", done, perObject.Count, sw.Elapsed.TotalSeconds, done / Math.Max(sw.Elapsed.TotalSeconds, 1e-9), jsonl, results,
            writeVideo ? ", " + mp4 : ""));
        return 0;
    }

    /// <summary>Each object's mask blended at 50 % in the palette colour of its id (consistent across frames).</summary>
    private static RgbImage Overlay(RgbImage image, VideoFrameResult frame)
    {
        var data = (byte[])image.Data.Clone();
        foreach (var o in frame.Objects)
        {
            var c = Palette.At(o.ObjectId);
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

    /// <summary>Entry from the command table: Ctrl-C cancels the propagation.</summary>
    public static int RunWithConsoleCancel(CliArgs args, TextWriter stdout, TextWriter stderr)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler handler = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += handler;
        try { return Run(args, stdout, stderr, cts.Token); }
        finally { Console.CancelKeyPress -= handler; }
    }
}
