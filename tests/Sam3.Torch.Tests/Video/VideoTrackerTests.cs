using Sam3.Torch.Loading;
using System.Diagnostics;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Video;

namespace Sam3.Torch.Tests.Video;

/// <summary>The public video-tracker facade on the tiny model: streaming, prompts, refusals and typed errors.</summary>
[TestFixture, Category("Fast")]
public class VideoTrackerTests
{
    private Sam3ImageModel? _model;

    [OneTimeSetUp]
    public void Load() => _model = Sam3ModelLoader.LoadImageModel(TinyWeights.Path, Sam3Config.Tiny);

    [OneTimeTearDown]
    public void Unload() => _model?.Dispose();

    [Test]
    public void TracksASyntheticVideoFrameByFrame()
    {
        using var tracker = new VideoTracker(_model!);
        var src = new SyntheticFrameSource(12);
        using var session = tracker.Open(src.FrameCount, src.Width, src.Height, src.ReadFrame);
        var first = session.AddBox(0, 7, 30, 20, 60, 45);
        Assert.That(first.Objects.Select(o => o.ObjectId), Is.EqualTo(new[] { 7 }));
        Assert.That(first.Objects[0].Mask, Has.Length.EqualTo(src.Width * src.Height));
        var times = new List<double>();
        var sw = Stopwatch.StartNew();
        var frames = new List<int>();
        foreach (var f in session.Propagate())
        {
            times.Add(sw.Elapsed.TotalMilliseconds);
            sw.Restart();
            frames.Add(f.FrameIndex);
            Assert.That(f.Objects, Has.Count.EqualTo(1));
            Assert.That(float.IsFinite(f.Objects[0].ScoreLogit));
            if (f.Objects[0].Box is { } b) Assert.That(b[0] < b[2] && b[1] < b[3] && b[2] <= src.Width && b[3] <= src.Height);
        }
        TestContext.Out.WriteLine($"per-frame ms (tiny, 1 object): {string.Join(", ", times.Select(t => t.ToString("F0")))}");
        Assert.That(frames, Is.EqualTo(Enumerable.Range(0, 12)));
        // a budget of 3 frames in reverse from frame 5: 5, 4, 3, 2
        Assert.That(session.Propagate(5, 3, reverse: true).Select(f => f.FrameIndex), Is.EqualTo(new[] { 5, 4, 3, 2 }));
        Assert.That(session.TrackingHasStarted);
        Assert.Throws<Sam3StateException>(() => session.AddPoints(3, 8, [new VideoPoint(10, 10)]), "new ids are refused once tracking started");
        Assert.That(session.RemoveObject(7), Is.Empty);
        Assert.That(session.TrackingHasStarted, Is.False, "removing the last object resets the state");
        Assert.That(session.AddPoints(3, 8, [new VideoPoint(10, 10)]).Objects.Select(o => o.ObjectId), Is.EqualTo(new[] { 8 }));
    }

    [Test, Category("Slow")] // two 17-frame propagations: ~100 s on the shared 2-core machine
    public void LiveStreamGivesTheSameResultsAsTheWholeVideo()
    {
        // with more frames than the pointer window (16), num_frames no longer matters: a stream of unknown length
        // must track exactly like the same frames with a known count
        const int n = 17;
        using var tracker = new VideoTracker(_model!);
        var src = new SyntheticFrameSource(n);
        int pulled = 0;
        IEnumerable<RgbImage> Stream()
        {
            for (int i = 0; i < n; i++) { pulled++; yield return src.ReadFrame(i); }
        }
        using var live = tracker.OpenLive(Stream());
        using var whole = tracker.Open(n, src.Width, src.Height, src.ReadFrame);
        Assert.That(pulled, Is.EqualTo(1), "only the first frame is read when the session opens");
        foreach (var s in new[] { live, whole }) s.AddPoints(0, 1, [new VideoPoint(40, 30), new VideoPoint(5, 5, false)]);
        var a = live.Propagate().ToList();
        var b = whole.Propagate().ToList();
        Assert.That(a.Select(f => f.FrameIndex), Is.EqualTo(Enumerable.Range(0, n)), "the live propagation ends with the stream");
        Assert.That(live.FrameCount, Is.EqualTo(n), "the length is known once the stream ended");
        for (int i = 0; i < n; i++)
        {
            Assert.That(a[i].Objects[0].Mask, Is.EqualTo(b[i].Objects[0].Mask), $"frame {i} mask");
            Assert.That(a[i].Objects[0].ScoreLogit, Is.EqualTo(b[i].Objects[0].ScoreLogit), $"frame {i} score");
        }
        Assert.Throws<Sam3ImageException>(() => live.ReadFrame(2), "old live frames are not kept");
    }

    [Test]
    public void BadInputsAreTypedErrors()
    {
        using var tracker = new VideoTracker(_model!);
        var src = new SyntheticFrameSource(4);
        using var session = tracker.Open(src.FrameCount, src.Width, src.Height, src.ReadFrame);
        Assert.Throws<ArgumentOutOfRangeException>(() => session.AddPoints(4, 1, [new VideoPoint(5, 5)]), "frame out of range");
        Assert.Throws<Sam3PromptException>(() => session.AddPoints(0, 1, [new VideoPoint(src.Width + 1, 5)]), "point outside the frame");
        Assert.Throws<Sam3PromptException>(() => session.AddBox(0, 1, 20, 20, 10, 30), "inverted box");
        Assert.Throws<Sam3StateException>(() => session.Propagate().ToList(), "nothing prompted");
        session.AddPoints(0, 1, [new VideoPoint(5, 5)]);
        Assert.Throws<Sam3PromptException>(() => session.RemoveObject(99), "unknown object id");
        Assert.Throws<Sam3PromptException>(() => session.AddMask(0, 1, new byte[10], 4, 4), "mask size");
        Assert.Throws<Sam3ImageException>(() => tracker.Open(Path.Combine(Path.GetTempPath(), "no-such-video-" + Guid.NewGuid() + ".mp4")));
        Assert.Throws<Sam3ImageException>(() => tracker.Open(0, 4, 4, _ => null!));
        var mixed = new SyntheticFrameSource(3);
        using var bad = tracker.Open(2, mixed.Width, mixed.Height, i => i == 0 ? mixed.ReadFrame(0) : new SyntheticFrameSource(1, 40, 30).ReadFrame(0));
        bad.AddPoints(0, 1, [new VideoPoint(5, 5)]);
        Assert.Throws<Sam3ImageException>(() => bad.Propagate().ToList(), "a frame of another size");
    }

    [Test]
    public void FolderSourceOrdersNumericallyAndRejectsOtherFiles()
    {
        string dir = Directory.CreateTempSubdirectory("sam3-frames-").FullName;
        try
        {
            var src = new SyntheticFrameSource(3, 32, 24);
            foreach (var (i, name) in new[] { (0, "10.jpg"), (1, "2.jpg"), (2, "1.jpg") })
                Sam3.Torch.Visualization.ImageWriter.Save(src.ReadFrame(i), Path.Combine(dir, name));
            using (var folder = new FolderFrameSource(dir))
            {
                Assert.That(folder.FrameCount, Is.EqualTo(3));
                // 1.jpg (synthetic frame 2) comes first
                var f0 = folder.ReadFrame(0);
                var expected = ImageLoader.Load(Path.Combine(dir, "1.jpg"));
                Assert.That(f0.Data, Is.EqualTo(expected.Data));
            }
            File.WriteAllText(Path.Combine(dir, "notes.txt"), "x");
            Assert.Throws<Sam3ImageException>(() => new FolderFrameSource(dir).Dispose());
            File.Delete(Path.Combine(dir, "notes.txt"));
            Sam3.Torch.Visualization.ImageWriter.Save(new SyntheticFrameSource(1, 16, 16).ReadFrame(0), Path.Combine(dir, "11.jpg"));
            using var mixed = new FolderFrameSource(dir);
            Assert.Throws<Sam3ImageException>(() => mixed.ReadFrame(3), "mixed frame sizes");
        }
        finally
        {
            Directory.Delete(dir, true);
        }
        string empty = Directory.CreateTempSubdirectory("sam3-empty-").FullName;
        try
        {
            Assert.Throws<Sam3ImageException>(() => new FolderFrameSource(empty).Dispose(), "zero frames");
        }
        finally
        {
            Directory.Delete(empty, true);
        }
    }
}
