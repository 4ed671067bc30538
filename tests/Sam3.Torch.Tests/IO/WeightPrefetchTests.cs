using NUnit.Framework;
using Sam3.Torch.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.IO;

/// <summary>The load-time weight prefetch: range arithmetic, the fallbacks when madvise is refused or missing, and a real mapping.</summary>
[TestFixture, Category("Fast")]
public class WeightPrefetchTests
{
    private const int EINVAL = 22, ENOMEM = 12;

    [Test]
    public void MergeSortsAndJoinsOverlappingAndTouchingRanges()
    {
        var merged = WeightPrefetch.Merge([(8192, 12288), (0, 4096), (4096, 8192), (20480, 24576), (22528, 28672)]);
        Assert.That(merged, Is.EqualTo(new List<(long, long)> { (0, 12288), (20480, 28672) }));
    }

    [Test]
    public void KernelWithoutPopulateReadFallsBackToWillNeed()
    {
        var calls = new List<(long Address, ulong Length, int Advice)>();
        var outcome = WeightPrefetch.Prefetch([(4096, 12288), (40960, 45056)], (a, l, advice) =>
        {
            calls.Add((a.ToInt64(), l, advice));
            return advice == WeightPrefetch.MadvPopulateRead ? EINVAL : 0;
        });
        Assert.That(outcome, Is.EqualTo(WeightPrefetch.Outcome.ReadAhead));
        // one refused MADV_POPULATE_READ, then read-ahead for every range (no second populate attempt)
        Assert.That(calls, Is.EqualTo(new List<(long, ulong, int)>
        {
            (4096, 8192, WeightPrefetch.MadvPopulateRead), (4096, 8192, WeightPrefetch.MadvWillNeed), (40960, 4096, WeightPrefetch.MadvWillNeed),
        }));
    }

    [Test]
    public void MissingMadviseIsSilent()
    {
        var outcome = WeightPrefetch.Prefetch([(4096, 8192)], (_, _, _) => throw new EntryPointNotFoundException("madvise"));
        Assert.That(outcome, Is.EqualTo(WeightPrefetch.Outcome.Unavailable));
        outcome = WeightPrefetch.Prefetch([(4096, 8192)], (_, _, _) => throw new DllNotFoundException("libc"));
        Assert.That(outcome, Is.EqualTo(WeightPrefetch.Outcome.Unavailable));
    }

    [Test]
    public void RefusedRangesAreSkipped()
    {
        int populateCalls = 0;
        var outcome = WeightPrefetch.Prefetch([(4096, 8192), (16384, 20480)], (_, _, advice) =>
        {
            if (advice == WeightPrefetch.MadvPopulateRead) populateCalls++;
            return populateCalls == 1 ? ENOMEM : 0; // the first range is not mapped, the second is fine
        });
        Assert.That(outcome, Is.EqualTo(WeightPrefetch.Outcome.Populated));
        Assert.That(populateCalls, Is.EqualTo(2));
        Assert.That(WeightPrefetch.Prefetch([], (_, _, _) => 0), Is.EqualTo(WeightPrefetch.Outcome.None));
    }

    [Test]
    public void RangesArePageAlignedAndSkipWhatIsNotCpuMemory()
    {
        using var scope = NewDisposeScope();
        long page = Environment.SystemPageSize;
        var a = torch.arange(10_000, dtype: ScalarType.Float32);
        var empty = torch.empty(0);
        var meta = torch.empty(new long[] { 100 }, device: torch.META);
        var strided = torch.arange(100, dtype: ScalarType.Float32)[TensorIndex.Slice(0, null, 2)];
        var ranges = WeightPrefetch.Ranges([a, empty, meta, strided]);
        Assert.That(ranges, Is.Not.Empty);
        long start = TensorMemory.DataPointer(a).ToInt64(), end = start + 40_000;
        Assert.That(ranges.All(r => r.Start % page == 0 && r.End % page == 0), Is.True);
        Assert.That(ranges.Any(r => r.Start <= start && r.End >= end), Is.True, "the tensor's bytes are covered");
        Assert.That(ranges.Sum(r => r.End - r.Start), Is.LessThan(40_000 + 2 * page + 1), "only the contiguous CPU tensor");
    }

    [Test]
    public void PrefetchOfAMappedFileKeepsItsValues()
    {
        string path = Path.Combine(Path.GetTempPath(), $"sam3-prefetch-{Environment.ProcessId}-{Guid.NewGuid():N}.bin");
        try
        {
            var values = Enumerable.Range(0, 50_000).Select(i => (float)Math.Sin(i)).ToArray();
            File.WriteAllBytes(path, values.SelectMany(BitConverter.GetBytes).ToArray());
            using var scope = NewDisposeScope();
            var mapped = torch.from_file(path, shared: false, size: values.Length, dtype: ScalarType.Float32);
            var view = mapped[TensorIndex.Slice(1000, 30_000)]; // not page-aligned: the range is widened to pages
            var outcome = WeightPrefetch.Prefetch([view]);
            if (OperatingSystem.IsLinux())
                Assert.That(outcome, Is.AnyOf(WeightPrefetch.Outcome.Populated, WeightPrefetch.Outcome.ReadAhead));
            Assert.That(mapped.data<float>().ToArray(), Is.EqualTo(values));
        }
        finally
        {
            File.Delete(path);
        }
    }
}
