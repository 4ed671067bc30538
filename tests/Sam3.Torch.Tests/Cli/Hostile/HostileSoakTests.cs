using System.Diagnostics;
using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.Tests.Infrastructure;

namespace Sam3.Torch.Tests.Cli.Hostile;

/// <summary>
/// One <c>sam3 segment</c> run over 1,000 small images (tiny model, in process) keeps its resident memory flat: the
/// peak during the long run stays within a bound of the level after a 50-image warm-up run. Before issue 17 every
/// decoded image was kept until the end of the run (≈15 MB per 1800x1200 image).
/// </summary>
[TestFixture, Category("Slow"), NonParallelizable]
public class HostileSoakTests
{
    private const int Images = 1000;
    private const long GrowthBoundBytes = 150L << 20;

    [Test]
    public void SegmentOverAThousandImagesKeepsRssFlat()
    {
        string dir = Path.Combine(Path.GetTempPath(), "sam3-soak-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var images = new List<string>();
            for (int i = 0; i < Images; i++)
            {
                string p = Path.Combine(dir, "in", $"img{i:D4}.jpg");
                Directory.CreateDirectory(Path.GetDirectoryName(p)!);
                File.WriteAllBytes(p, HostileSandbox.JpegBytes(96, 64, seed: i));
                images.Add(p);
            }
            string[] Args(IEnumerable<string> imgs, string outDir) =>
                ["segment", "--checkpoint", SharedData.Parity("tiny", "model.safetensors"), "--config", "tiny",
                 "--vocab", SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz"), .. imgs.SelectMany(i => new[] { "--image", i }),
                 "--out", outDir, "--text", "cat"];

            Assert.That(Program.Run(Args(images.Take(50), Path.Combine(dir, "warm")), TextWriter.Null, TextWriter.Null), Is.EqualTo(0));
            long warm = MemoryProbe.Measure().Rss;

            long peak = warm;
            using var stop = new CancellationTokenSource();
            var sampler = new Thread(() =>
            {
                using var self = Process.GetCurrentProcess();
                while (!stop.IsCancellationRequested)
                {
                    self.Refresh();
                    peak = Math.Max(peak, self.WorkingSet64);
                    Thread.Sleep(100);
                }
            }) { IsBackground = true };
            sampler.Start();
            var watch = Stopwatch.StartNew();
            int code = Program.Run(Args(images, Path.Combine(dir, "long")), TextWriter.Null, TextWriter.Null);
            stop.Cancel();
            sampler.Join();
            Assert.That(code, Is.EqualTo(0));
            Assert.That(Directory.GetFiles(Path.Combine(dir, "long"), "*.json"), Has.Length.EqualTo(Images));
            long after = MemoryProbe.Measure().Rss;
            TestContext.Progress.WriteLine($"segment over {Images} images in {watch.Elapsed.TotalSeconds:F0} s: RSS after warm-up {warm >> 20} MB, " +
                $"peak during the run {peak >> 20} MB (+{(peak - warm) >> 20} MB), after {after >> 20} MB");
            Assert.That(peak - warm, Is.LessThan(GrowthBoundBytes), $"RSS grew by {(peak - warm) >> 20} MB over {Images} images");
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
        }
    }
}
