using System.Text.Json;
using NUnit.Framework;
using OpenCvSharp;
using Sam3.Cli;
using Sam3.Torch.Parity;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// <c>sam3 track</c> in process on the parity video with the tiny checkpoint and scenario e's prompts: the JSON lines
/// (ids, boxes, COCO RLE masks) agree with scenario e's recorded video-resolution masks, and the overlay mp4 is readable
/// by OpenCV with the right frame count and size. Bad prompts are typed errors that write nothing.
/// </summary>
[TestFixture, Category("Fast")]
public class TrackCliTests
{
    private static string Tiny => SharedData.Parity("tiny", "model.safetensors");
    private static string Video => SharedData.Parity("inputs", "video_0001");

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    [Test]
    public void TracksScenarioEAndWritesJsonLinesAndAPlayableMp4()
    {
        string dir = Directory.CreateTempSubdirectory("sam3-track-").FullName;
        try
        {
            // scenario e: obj 1 = click (560, 400), obj 2 = box (640,150)-(1000,600) on frame 0 of the 1280x720 video
            var (code, stdout, stderr) = Run("track", "--checkpoint", Tiny, "--config", "tiny", "--video", Video, "--out", dir,
                "--point", "560,400@0", "--obj", "1", "--box", "640,150,1000,600@0", "--obj", "2", "--max-frames", "2");
            Assert.That(code, Is.EqualTo(0), stderr);
            TestContext.Out.WriteLine(stdout);
            var lines = File.ReadAllLines(Path.Combine(dir, "tracks.jsonl"));
            Assert.That(lines, Has.Length.EqualTo(3));
            using var fx = Fixtures.Tiny("e_tracker_video");
            for (int f = 0; f < lines.Length; f++)
            {
                using var doc = JsonDocument.Parse(lines[f]);
                Assert.That(doc.RootElement.GetProperty("frame").GetInt32(), Is.EqualTo(f));
                var objs = doc.RootElement.GetProperty("objects").EnumerateArray().ToList();
                Assert.That(objs.Select(o => o.GetProperty("id").GetInt32()), Is.EqualTo(new[] { 1, 2 }));
                using var reference = fx.Get($"frame{f}.video_res_masks"); // [2, 1, 720, 1280] bool
                for (int k = 0; k < 2; k++)
                {
                    var rle = CocoRle.FromJson(objs[k].GetProperty("segmentation").GetRawText());
                    var mask = rle.Decode();
                    using var ours = torch.tensor(mask.Select(b => b != 0).ToArray(), new long[] { 720, 1280 });
                    long diff = ours.ne(reference[k, 0]).sum().item<long>();
                    Assert.That(diff, Is.LessThanOrEqualTo(720 * 1280 / 1000), $"frame {f} object {k + 1}: {diff} pixels differ from scenario e");
                    Assert.That(objs[k].GetProperty("area").GetInt64(), Is.EqualTo(mask.LongCount(b => b != 0)));
                }
            }
            using var cap = new VideoCapture(Path.Combine(dir, "overlay.mp4"));
            Assert.That(cap.IsOpened(), Is.True);
            Assert.That((cap.FrameWidth, cap.FrameHeight), Is.EqualTo((1280, 720)));
            int n = 0;
            using var m = new Mat();
            while (cap.Read(m) && !m.Empty()) n++;
            Assert.That(n, Is.EqualTo(3), "frames in the overlay video");
            // the same file through the tracker's video-file source: count, size, random access (seek back)
            using var source = Sam3.Torch.Video.FrameSource.Open(Path.Combine(dir, "overlay.mp4"));
            Assert.That(source, Is.InstanceOf<Sam3.Torch.Video.VideoFileFrameSource>());
            Assert.That((source.FrameCount, source.Width, source.Height), Is.EqualTo((3, 1280, 720)));
            var last = source.ReadFrame(2);
            var first = source.ReadFrame(0);
            Assert.That(first.Data, Is.Not.EqualTo(last.Data), "frames 0 and 2 differ (the masks move)");
            Assert.Throws<ArgumentOutOfRangeException>(() => source.ReadFrame(3));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public void BadPromptsAreErrorsAndWriteNothing()
    {
        string dir = Path.Combine(Path.GetTempPath(), "sam3-track-bad-" + Guid.NewGuid());
        string[] Base(params string[] extra) => ["track", "--checkpoint", Tiny, "--config", "tiny", "--video", Video, "--out", dir, .. extra];
        Assert.That(Run(Base()).Code, Is.EqualTo(2), "no prompt");
        Assert.That(Run(Base("--point", "560,400")).Code, Is.EqualTo(2), "no @FRAME");
        Assert.That(Run(Base("--obj", "3")).Code, Is.EqualTo(2), "--obj without a prompt");
        Assert.That(Run(Base("--point", "1,2@0", "--obj", "1", "--point", "3,4@0")).Code, Is.EqualTo(2), "a prompt without --obj after others had one");
        Assert.That(Run(Base("--box", "10,10,5,5@0")).Code, Is.EqualTo(2), "inverted box");
        var r = Run(Base("--point", "5000,400@0"));
        Assert.That(r.Code, Is.EqualTo(1), "point outside the video");
        Assert.That(r.Err, Does.Contain("outside"));
        r = Run(Base("--point", "10,10@99"));
        Assert.That(r.Code, Is.EqualTo(1), "frame index out of range");
        Assert.That(r.Err, Does.Contain("99"));
        r = Run(["track", "--checkpoint", Tiny, "--config", "tiny", "--video", Path.Combine(dir, "missing.mp4"), "--out", dir, "--point", "1,1@0"]);
        Assert.That(r.Code, Is.EqualTo(1), "missing video");
        Assert.That(Directory.Exists(dir), Is.False, "nothing was written");
    }

    [Test]
    public void PromptsPairWithTheFollowingObjectId()
    {
        var specs = TrackCommand.ParsePrompts(["--point", "1,2@0", "--point", "3,4:neg@0", "--obj", "5", "--box", "1,1,9,9@2", "--obj", "6"]);
        Assert.That(specs.Select(s => (s.Frame, s.ObjectId, s.Points.Count, s.Box is not null)),
                    Is.EqualTo(new[] { (0, 5, 2, false), (2, 6, 0, true) }));
        Assert.That(specs[0].Points[1].Positive, Is.False);
        Assert.That(TrackCommand.ParsePrompts(["--point", "1,2@3"]).Single().ObjectId, Is.EqualTo(1));
    }
}
