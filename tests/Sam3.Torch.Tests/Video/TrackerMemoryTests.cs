using Sam3.Torch.Loading;
using System.Diagnostics;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Video;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Video;

/// <summary>
/// A synthetic video (a bright square moving over a textured background, generated on demand: nothing is held) for
/// streaming tests.
/// </summary>
internal sealed class SyntheticFrameSource(int frames, int width = 96, int height = 64) : IFrameSource
{
    public int FrameCount => frames;
    public int Width => width;
    public int Height => height;
    public string Description => $"synthetic {width}x{height}, {frames} frames";
    public int Reads { get; private set; }

    public RgbImage ReadFrame(int index)
    {
        if ((uint)index >= (uint)frames) throw new ArgumentOutOfRangeException(nameof(index));
        Reads++;
        var data = new byte[width * height * 3];
        int sx = 10 + (int)(20 * Math.Sin(index * 0.05)) + width / 4, sy = height / 3 + (int)(8 * Math.Cos(index * 0.07));
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                int i = (y * width + x) * 3;
                bool inSquare = x >= sx && x < sx + 24 && y >= sy && y < sy + 20;
                data[i] = (byte)(inSquare ? 230 : (x * 7 + y * 3) % 90);
                data[i + 1] = (byte)(inSquare ? 40 : (x * 5 + y * 11 + index) % 110);
                data[i + 2] = (byte)(inSquare ? 60 : 80 + (x + y) % 50);
            }
        return new RgbImage(width, height, data);
    }

    public void Dispose() { }
}

/// <summary>
/// Bounded memory of the tracker: streaming a long synthetic video through the tiny model with a retention window keeps
/// the number of live tensors, the stored state and the RSS flat after warm-up (issue 10, item 4).
/// </summary>
[TestFixture, Category("Slow")]
public class TrackerMemoryTests
{
    private static (long Live, long Rss) Measure() => MemoryProbe.Measure();

    /// <remarks>
    /// The default run streams 500 frames (warm-up 100): ~0.3 s per frame on the shared 2-core CI machine would make the
    /// issue's 2,000 frames a 10-minute test. The state is already at its steady size after retain + 1 frames, so the
    /// shorter run checks the same property; SAM3_TRACKER_SOAK_FRAMES=2000 runs the full soak (measured figures in the
    /// branch report). Runs single-threaded (restored afterwards): on an oversubscribed machine LibTorch's thread pool is
    /// ~20× slower, and memory, not speed, is under test.
    /// <para>The test host runs with concurrent (background) GC off (runtimeconfig.template.json): with it on, 3 of 4
    /// single-threaded soaks failed at a random frame inside LibTorch with "Expected false to be true ... toFloat"
    /// (Scalar.h), a freed Scalar — TorchSharp's implicit temporary Scalars (e.g. the alpha of <c>a + b</c>) are only
    /// referenced by handle during the native call, so a GC running concurrently can finalize them mid-call. With it off,
    /// 500- and 2,000-frame soaks passed.</para>
    /// </remarks>
    [Test]
    public void StreamedFramesKeepMemoryFlat()
    {
        int frames = int.TryParse(Environment.GetEnvironmentVariable("SAM3_TRACKER_SOAK_FRAMES"), out var n) ? n : 500;
        int warmup = Math.Min(200, frames / 5);
        const int retain = 16;
        int threads = torch.get_num_threads();
        torch.set_num_threads(1);
        try
        {
            Soak(frames, warmup, retain);
        }
        finally
        {
            torch.set_num_threads(threads);
        }
    }

    private static void Soak(int frames, int warmup, int retain)
    {
        var cfg = Sam3Config.Tiny;
        using var model = Sam3ModelLoader.LoadImageModel(TinyWeights.Path, cfg);
        var predictor = TrackerPredictor.FromImageModel(model);
        var source = new SyntheticFrameSource(frames);
        using var st = predictor.InitState(source, retainNonCondFrames: retain);
        using (var v = predictor.AddNewPointsOrBox(st, 0, 1, box: (0.3f, 0.25f, 0.65f, 0.65f))) { }
        using (var v = predictor.AddNewPointsOrBox(st, 0, 2, [(0.1f, 0.9f)], [1])) { }

        long liveWarm = 0, rssWarm = 0;
        (int Outputs, long Bytes) storedWarm = default;
        int count = 0;
        var sw = Stopwatch.StartNew();
        double warmSeconds = 0;
        foreach (var r in predictor.Propagate(st, 0, null, false))
        {
            using (r)
            {
                Assert.That(r.ObjectIds, Is.EqualTo(new[] { 1, 2 }));
                Assert.That(r.VideoResLogits.shape, Is.EqualTo(new long[] { 2, 1, source.Height, source.Width }));
            }
            count++;
            if (count == warmup)
            {
                (liveWarm, rssWarm) = Measure();
                storedWarm = st.StoredSize();
                warmSeconds = sw.Elapsed.TotalSeconds;
            }
        }
        sw.Stop();
        var (liveEnd, rssEnd) = Measure();
        var storedEnd = st.StoredSize();
        double perFrame = (sw.Elapsed.TotalSeconds - warmSeconds) / (frames - warmup);
        TestContext.Out.WriteLine($"{frames} frames in {sw.Elapsed.TotalSeconds:F1} s ({perFrame * 1000:F1} ms/frame after warm-up, tiny model, 2 objects); " +
            $"live tensors {liveWarm} at frame {warmup}, {liveEnd} at frame {frames}; stored outputs {storedWarm.Outputs} ({storedWarm.Bytes / 1024.0:F0} KiB) vs " +
            $"{storedEnd.Outputs} ({storedEnd.Bytes / 1024.0:F0} KiB); RSS {rssWarm / 1048576.0:F1} MB vs {rssEnd / 1048576.0:F1} MB " +
            $"(growth {(rssEnd - rssWarm) / 1048576.0:F1} MB); frames decoded {source.Reads}");
        Assert.That(count, Is.EqualTo(frames));
        Assert.That(liveEnd, Is.EqualTo(liveWarm), "live tensors after the last frame vs after warm-up");
        Assert.That(storedEnd, Is.EqualTo(storedWarm), "stored tracker state after the last frame vs after warm-up");
        Assert.That(st.Output.NonCond.Count, Is.EqualTo(retain));
        Assert.That(rssEnd - rssWarm, Is.LessThan(48L << 20), "RSS growth between warm-up and the last frame");
        Assert.That(source.Reads, Is.LessThanOrEqualTo(frames + 2), "frames are decoded once each (plus the prompted frame)");
    }
}
