using System.Text.Json;
using NUnit.Framework;
using OpenCvSharp;
using Sam3.Cli;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// <c>sam3 video</c> in process on the parity video with the tiny checkpoint and scenario f's prompt ("person" on frame 0,
/// forward): the JSON lines agree with scenario f's recorded masks and probabilities, results.json follows the
/// YouTube-VIS results schema with decodable RLE per frame, and the overlay mp4 is readable with 8 frames.
/// </summary>
[TestFixture, Category("Slow")]
public class VideoCliTests
{
    [Test]
    public void TextPromptWritesJsonLinesYouTubeVisResultsAndAnMp4()
    {
        string dir = Directory.CreateTempSubdirectory("sam3-video-").FullName;
        try
        {
            var o = new StringWriter();
            var e = new StringWriter();
            int code = Program.Run(["video", "--checkpoint", SharedData.Parity("tiny", "model.safetensors"), "--config", SharedData.Parity("tiny", "config.json"),
                "--vocab", SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"), "--video", SharedData.Parity("inputs", "video_0001"),
                "--text", "person", "--direction", "forward", "--out", dir], o, e);
            Assert.That(code, Is.EqualTo(0), e.ToString());
            TestContext.Out.WriteLine(o.ToString());
            var lines = File.ReadAllLines(Path.Combine(dir, "frames.jsonl"));
            Assert.That(lines, Has.Length.EqualTo(8));
            using var fx = Fixtures.Tiny("f_video_predictor_text");
            for (int f = 0; f < lines.Length; f++)
            {
                using var doc = JsonDocument.Parse(lines[f]);
                Assert.That(doc.RootElement.GetProperty("frame").GetInt32(), Is.EqualTo(f));
                var objs = doc.RootElement.GetProperty("objects").EnumerateArray().ToList();
                using var refIds = fx.Get($"frame{f}.out_obj_ids");
                Assert.That(objs.Select(x => x.GetProperty("id").GetInt64()), Is.EqualTo(refIds.data<long>().ToArray()));
                using var refProbs = fx.Get($"frame{f}.out_probs");
                using var refMasks = fx.Get($"frame{f}.out_binary_masks"); // [O, 720, 1280] bool
                for (int k = 0; k < objs.Count; k++)
                {
                    Assert.That(objs[k].GetProperty("score").GetSingle(), Is.EqualTo(refProbs.data<float>()[k]).Within(1e-5f));
                    var mask = CocoRle.FromJson(objs[k].GetProperty("segmentation").GetRawText()).Decode();
                    using var ours = torch.tensor(mask.Select(b => b != 0).ToArray(), new long[] { 720, 1280 });
                    long diff = ours.ne(refMasks[k]).sum().item<long>();
                    Assert.That(diff, Is.LessThanOrEqualTo(720 * 1280 / 1000), $"frame {f} object {k}: {diff} pixels differ from scenario f");
                }
            }
            using (var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "results.json"))))
            {
                var entries = doc.RootElement.EnumerateArray().ToList();
                Assert.That(entries, Is.Not.Empty);
                foreach (var r in entries)
                {
                    Assert.That(r.GetProperty("video_id").ValueKind, Is.EqualTo(JsonValueKind.Number));
                    Assert.That(r.GetProperty("category_id").ValueKind, Is.EqualTo(JsonValueKind.Number));
                    Assert.That(r.GetProperty("score").GetDouble(), Is.InRange(0.0, 1.0));
                    var segs = r.GetProperty("segmentations").EnumerateArray().ToList();
                    Assert.That(segs, Has.Count.EqualTo(8));
                    foreach (var s in segs.Where(s => s.ValueKind != JsonValueKind.Null))
                        Assert.That(CocoRle.FromJson(s.GetRawText()).Decode(), Has.Length.EqualTo(720 * 1280));
                }
            }
            using var cap = new VideoCapture(Path.Combine(dir, "overlay.mp4"));
            Assert.That(cap.IsOpened(), Is.True);
            int n = 0;
            using var m = new Mat();
            while (cap.Read(m) && !m.Empty()) n++;
            Assert.That(n, Is.EqualTo(8), "frames in the overlay video");
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
