using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using NUnit.Framework;
using Sam3.Torch.IO;
using TorchSharp;
using static Sam3.Torch.Tests.IO.CheckpointTestFiles;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.IO;

[TestFixture, Category("Fast")]
public class CheckpointTorchReaderTests
{
    private CheckpointTestFiles _files = null!;

    [OneTimeSetUp] public void SetUp() => _files = new CheckpointTestFiles();
    [OneTimeTearDown] public void TearDown() => _files.Dispose();

    private string WriteStandard(string name, Action<TorchPtBuilder>? configure = null)
    {
        var b = StandardBuilder();
        configure?.Invoke(b);
        string path = _files.File(name);
        b.Write(path);
        return path;
    }

    /// <summary>Every tensor of the standard file against values known by construction.</summary>
    private static void AssertStandardValues(ICheckpoint ck)
    {
        using var scope = NewDisposeScope();
        Assert.That(ck.Names, Is.EqualTo(StandardNames));

        var a = ck.Load("a.weight");
        Assert.That(a.shape, Is.EqualTo(new long[] { 2, 3 }));
        Assert.That(a.dtype, Is.EqualTo(ScalarType.Float32));
        Assert.That(Floats(a), Is.EqualTo(Range(6)));

        // view with storage offset 4 of the shared storage 100..109
        Assert.That(Floats(ck.Load("b.view")), Is.EqualTo(new float[] { 104, 105, 106, 107 }));
        Assert.That(Floats(ck.Load("b.base")), Is.EqualTo(Range(10, 100)));

        var bf = ck.Load("c.bf16");
        Assert.That(bf.dtype, Is.EqualTo(ScalarType.BFloat16));
        Assert.That(Floats(bf), Is.EqualTo(new float[] { 1.0f, -2.5f, 3.0f }));

        // complex64 exp(i*k), k = 0..5, as float32 [2, 3, 2] (re, im)
        var fc = ck.Load("d.attn.freqs_cis");
        Assert.That(fc.shape, Is.EqualTo(new long[] { 2, 3, 2 }));
        Assert.That(fc.dtype, Is.EqualTo(ScalarType.Float32));
        var expected = Enumerable.Range(0, 6).SelectMany(k => new[] { (float)Math.Cos(k), (float)Math.Sin(k) }).ToArray();
        Assert.That(Floats(fc), Is.EqualTo(expected));
        var info = ck.Info("d.attn.freqs_cis");
        Assert.That(info.ComplexAsReal, Is.True);
        Assert.That(info.LogicalShape, Is.EqualTo(new long[] { 2, 3 }));

        // transposed: storage 10..15 as [2,3], tensor [3,2] with strides (1,3)
        var t = ck.Load("e.T");
        Assert.That(t.shape, Is.EqualTo(new long[] { 3, 2 }));
        Assert.That(Floats(t), Is.EqualTo(new float[] { 10, 13, 11, 14, 12, 15 }));

        var l = ck.Load("f.long");
        Assert.That(l.dtype, Is.EqualTo(ScalarType.Int64));
        Assert.That(l.data<long>().ToArray(), Is.EqualTo(new long[] { 1, -2, 1L << 40 }));

        var g = ck.Load("g.bool");
        Assert.That(g.dtype, Is.EqualTo(ScalarType.Bool));
        Assert.That(g.data<bool>().ToArray(), Is.EqualTo(new[] { true, false }));

        var h = ck.Load("h.half");
        Assert.That(h.dtype, Is.EqualTo(ScalarType.Float16));
        Assert.That(Floats(h), Is.EqualTo(new[] { 0.5f }));

        var s = ck.Load("i.scalar");
        Assert.That(s.shape, Is.Empty);
        Assert.That(s.ToSingle(), Is.EqualTo(7.0f));
    }

    [Test]
    public void ReadsFlatStateDictWithAllTensorKinds()
    {
        string path = WriteStandard("flat.pt");
        Assert.That(CheckpointFile.DetectFormat(path), Is.EqualTo(CheckpointFormat.TorchZip));
        using var ck = TorchCheckpointReader.Open(path);
        Assert.That(ck.StateDictPath, Is.EqualTo(""));
        Assert.That(ck.Metadata["version"], Is.EqualTo("3"));
        Assert.That(ck.Metadata["archive"], Is.EqualTo("flat"));
        Assert.That(ck.SkippedEntries, Is.Empty);
        foreach (var n in StandardNames) Assert.That(ck.IsMemoryMapped(n), Is.True, n);
        AssertStandardValues(ck);
        // the state dict's _metadata attribute (BUILD) is kept on the dict
        var root = (PickleDict)ck.Root!;
        Assert.That(root.State, Is.InstanceOf<PickleDict>());
    }

    [Test]
    public void ReadsModelWrapperThroughTheGenericOpen()
    {
        string path = WriteStandard("wrapped.pt", b => b.WrapInModel = true);
        using var ck = CheckpointFile.Open(path);
        Assert.That(ck, Is.InstanceOf<TorchCheckpointReader>());
        Assert.That(((TorchCheckpointReader)ck).StateDictPath, Is.EqualTo("model"));
        AssertStandardValues(ck);
    }

    [Test]
    public void OtherTopLevelEntriesAndUnknownGlobalsOutsideTheStateDictAreSkipped()
    {
        string path = WriteStandard("extras.pt", b =>
        {
            b.WrapInModel = true;
            b.AddTopLevel("epoch", p => p.Int(17));
            b.AddTopLevel("lr", p => p.Float(0.25));
            b.AddTopLevel("rng", p =>
            {
                // an object of a class the reader does not know: numpy.core.multiarray._reconstruct(...)
                p.Global("numpy.core.multiarray", "_reconstruct");
                p.Mark();
                p.Int(3);
                p.TupleFromMark();
                p.Reduce();
            });
        });
        using var ck = TorchCheckpointReader.Open(path);
        var root = (PickleDict)ck.Root!;
        Assert.That(root["epoch"], Is.EqualTo(17L));
        Assert.That(root["lr"], Is.EqualTo(0.25));
        Assert.That(((PickleOpaque)root["rng"]!).Callable.FullName, Is.EqualTo("numpy.core.multiarray._reconstruct"));
        AssertStandardValues(ck);
    }

    [Test]
    public void UnknownGlobalInsideTheStateDictIsATypedErrorNamingIt()
    {
        var b = StandardBuilder();
        b.AddTensor("q.quantized", "0", 0, [2], rebuild: "_rebuild_qtensor");
        string path = _files.File("qtensor.pt");
        b.Write(path);
        var ex = Assert.Throws<Sam3CheckpointException>(() => TorchCheckpointReader.Open(path));
        Assert.That(ex!.Message, Does.Contain("torch._utils._rebuild_qtensor").And.Contain("q.quantized"));
    }

    [Test]
    public void ParameterRebuildIsUnwrapped()
    {
        // torch._utils._rebuild_parameter(data, requires_grad, backward_hooks) with a tensor as data
        var b = new TorchPtBuilder { WrapInModel = true, WithStateDictMetadata = false };
        b.AddFloatStorage("0", 1, 2, 3);
        string path = _files.File("param.pt");
        b.AddTopLevel("p", p =>
        {
            p.Global("torch._utils", "_rebuild_parameter");
            p.Mark();
            p.Global("torch._utils", "_rebuild_tensor_v2");
            p.Mark();
            p.Mark(); p.Unicode("storage"); p.Global("torch", "FloatStorage"); p.Unicode("0"); p.Unicode("cpu"); p.Int(3); p.TupleFromMark();
            p.Op('Q');
            p.Int(1); p.Tuple([2]); p.Tuple([1]); p.Op(0x89); p.Global("collections", "OrderedDict"); p.EmptyTuple(); p.Reduce();
            p.TupleFromMark();
            p.Reduce();
            p.Op(0x88); // requires_grad True
            p.Global("collections", "OrderedDict"); p.EmptyTuple(); p.Reduce();
            p.TupleFromMark();
            p.Reduce();
        });
        b.Write(path);
        using var ck = TorchCheckpointReader.Open(path);
        var root = (PickleDict)ck.Root!;
        var t = (TorchCheckpointReader.TensorRef)root["p"]!;
        Assert.That(t.StorageOffset, Is.EqualTo(1));
        Assert.That(t.Sizes, Is.EqualTo(new long[] { 2 }));
    }

    [TestCase(false, false, false, TestName = "Aligned (memory-mapped)")]
    [TestCase(true, false, false, TestName = "Misaligned members (read on demand)")]
    [TestCase(false, true, false, TestName = "Deflated storages")]
    [TestCase(false, false, true, TestName = "Zip64 fields")]
    [TestCase(true, true, true, TestName = "Misaligned, deflated, Zip64")]
    public void ZipVariants(bool misalign, bool deflate, bool zip64)
    {
        string path = WriteStandard($"variant-{misalign}-{deflate}-{zip64}.pt", b =>
        {
            b.Misalign = misalign;
            b.DeflateStorages = deflate;
            b.ForceZip64 = zip64;
        });
        using var ck = TorchCheckpointReader.Open(path);
        if (!misalign && !deflate) Assert.That(ck.IsMemoryMapped("a.weight"), Is.True);
        if (deflate || misalign)
            foreach (var n in StandardNames.Where(n => ck.Info(n).DType is not (ScalarType.Bool)))
                Assert.That(ck.IsMemoryMapped(n), Is.False, n);
        AssertStandardValues(ck);
    }

    [Test]
    public void ViewsStayValidAfterTheReaderIsDisposed()
    {
        string path = WriteStandard("dispose.pt");
        Tensor view;
        using (var ck = TorchCheckpointReader.Open(path)) view = ck.Load("b.view");
        Assert.That(Floats(view), Is.EqualTo(new float[] { 104, 105, 106, 107 }));
        view.Dispose();
    }

    [Test]
    public void MemoryMappedViewsAreCopyOnWrite()
    {
        string path = WriteStandard("cow.pt");
        byte[] before = File.ReadAllBytes(path);
        using (var ck = TorchCheckpointReader.Open(path))
        using (var t = ck.Load("a.weight"))
        {
            t.add_(1.0f);
            Assert.That(Floats(t), Is.EqualTo(Range(6, 1)));
        }
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(before));
    }

    [Test]
    public void LegacyFormatIsRejectedWithConversionAdvice()
    {
        // torch.save(..., _use_new_zipfile_serialization=False) starts with PROTO 2 and the LONG1 magic number
        string path = _files.File("legacy.pt");
        File.WriteAllBytes(path, [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]);
        Assert.That(CheckpointFile.DetectFormat(path), Is.EqualTo(CheckpointFormat.TorchLegacy));
        var ex = Assert.Throws<Sam3CheckpointException>(() => CheckpointFile.Open(path));
        Assert.That(ex!.Message, Does.Contain("legacy").And.Contain("torch.save(torch.load("));
        Assert.Throws<Sam3CheckpointException>(() => TorchCheckpointReader.Open(path));
    }

    [Test]
    public void ZipWithoutDataPklIsATypedError()
    {
        string path = _files.File("notorch.zip");
        using (var z = ZipFile.Open(path, ZipArchiveMode.Create))
        using (var w = new StreamWriter(z.CreateEntry("readme.txt").Open())) w.Write("hello");
        var ex = Assert.Throws<Sam3CheckpointException>(() => CheckpointFile.Open(path));
        Assert.That(ex!.Message, Does.Contain("data.pkl"));
    }

    [Test]
    public void MissingStorageMemberIsATypedErrorNamingTheTensor()
    {
        var b = new TorchPtBuilder();
        b.AddFloatStorage("0", 1, 2);
        b.AddTensor("x", "0", 0, [2]);
        // a second tensor whose storage record is declared in the pickle but not written to the archive
        b.AddFloatStorage("9", 1, 2, 3, 4);
        b.AddTensor("y.missing", "9", 0, [4]);
        b.OmitStorageMembers.Add("9");
        string path = _files.File("missing-member.pt");
        b.Write(path);
        var ex = Assert.Throws<Sam3CheckpointException>(() => TorchCheckpointReader.Open(path));
        Assert.That(ex!.Message, Does.Contain("y.missing"));
    }

    [Test]
    public void ViewOutsideItsStorageIsATypedError()
    {
        var b = new TorchPtBuilder();
        b.AddFloatStorage("0", 1, 2, 3, 4);
        b.AddTensor("too.far", "0", 2, [3]);
        string path = _files.File("outside.pt");
        b.Write(path);
        var ex = Assert.Throws<Sam3CheckpointException>(() => TorchCheckpointReader.Open(path));
        Assert.That(ex!.Message, Does.Contain("too.far"));
    }

    [Test]
    public void EveryTruncationIsATypedError()
    {
        string path = WriteStandard("full.pt");
        byte[] all = File.ReadAllBytes(path);
        string cut = _files.File("cut.pt");
        int checkedLengths = 0;
        for (int n = 0; n < all.Length; n += 13)
        {
            File.WriteAllBytes(cut, all[..n]);
            Assert.Throws<Sam3CheckpointException>(() => CheckpointFile.Open(cut).Dispose(), $"length {n}");
            checkedLengths++;
        }
        Assert.That(checkedLengths, Is.GreaterThan(50));
    }

    [Test, Category("Slow")]
    public void RandomCorruptionNeverCrashes()
    {
        string path = WriteStandard("fuzz-src.pt");
        byte[] all = File.ReadAllBytes(path);
        string bad = _files.File("fuzz.pt");
        var rng = new Random(1234);
        int opened = 0, rejected = 0;
        for (int trial = 0; trial < 300; trial++)
        {
            var copy = (byte[])all.Clone();
            int flips = 1 + rng.Next(4);
            for (int f = 0; f < flips; f++)
            {
                // bias mutations towards the pickle (first ~1 KB) and the zip directory (end of file)
                int pos = rng.Next(2) == 0 ? rng.Next(Math.Min(1100, copy.Length)) : copy.Length - 1 - rng.Next(Math.Min(800, copy.Length));
                copy[pos] = (byte)rng.Next(256);
            }
            File.WriteAllBytes(bad, copy);
            try
            {
                using var ck = CheckpointFile.Open(bad);
                using var scope = NewDisposeScope();
                foreach (var n in ck.Names) ck.Load(n).sum().ToDouble();
                opened++;
            }
            catch (Sam3CheckpointException)
            {
                rejected++;
            }
        }
        TestContext.Progress.WriteLine($"corruption fuzz: {opened} opened, {rejected} rejected with Sam3CheckpointException");
        Assert.That(rejected, Is.GreaterThan(0));
    }

    /// <summary>
    /// A 1.5 GB .pt (15 storages of 100 MB) is opened and every tensor view created and touched (first and last element):
    /// the data must be memory-mapped from the zip members, so resident memory grows far less than the file size.
    /// </summary>
    [Test, Category("Slow")]
    public void LargePtIsMemoryMapped()
    {
        const int tensorCount = 15;
        const int elements = 25_000_000; // 100 MB of float32 each
        var data = new byte[elements * 4L];
        for (int j = 0; j < elements; j++) BinaryPrimitives.WriteSingleLittleEndian(data.AsSpan(4 * j), j % 1000);
        var b = new TorchPtBuilder { WrapInModel = true };
        for (int i = 0; i < tensorCount; i++)
        {
            b.AddStorage($"{i}", "FloatStorage", data, elements);
            b.AddTensor($"layer{i}.weight", $"{i}", 0, [5000, 5000]);
        }
        string path = _files.File("large.pt");
        var write = Stopwatch.StartNew();
        b.Write(path);
        write.Stop();
        data = null!;
        long fileLength = new FileInfo(path).Length;
        try
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            var proc = Process.GetCurrentProcess();
            proc.Refresh();
            long rssBefore = proc.WorkingSet64;
            var sw = Stopwatch.StartNew();
            using (var ck = CheckpointFile.Open(path))
            using (var scope = NewDisposeScope())
            {
                var views = ck.Names.Select(ck.Load).ToList();
                foreach (var v in views)
                {
                    Assert.That(v[0, 0].ToSingle(), Is.EqualTo(0f));
                    Assert.That(v[4999, 4999].ToSingle(), Is.EqualTo((float)((elements - 1) % 1000)));
                }
                sw.Stop();
                proc.Refresh();
                long growth = proc.WorkingSet64 - rssBefore;
                TestContext.Progress.WriteLine(
                    $"large .pt: {fileLength / 1e9:F2} GB written in {write.Elapsed.TotalSeconds:F1} s; opened + {views.Count} views touched in " +
                    $"{sw.Elapsed.TotalMilliseconds:F0} ms; RSS {rssBefore / 1e6:F0} MB -> {proc.WorkingSet64 / 1e6:F0} MB (growth {growth / 1e6:F1} MB)");
                Assert.That(growth, Is.LessThan(fileLength / 20), "memory-mapped views must not read the file into memory");
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Test]
    public void RandomBytesAndEmptyFilesAreTypedErrors()
    {
        var rng = new Random(5);
        string path = _files.File("random.bin");
        for (int i = 0; i < 50; i++)
        {
            var bytes = new byte[rng.Next(0, 4096)];
            rng.NextBytes(bytes);
            if (i % 5 == 0 && bytes.Length > 4) { bytes[0] = (byte)'P'; bytes[1] = (byte)'K'; bytes[2] = 3; bytes[3] = 4; }
            File.WriteAllBytes(path, bytes);
            Assert.Throws<Sam3CheckpointException>(() => CheckpointFile.Open(path).Dispose(), $"trial {i}");
        }
        Assert.Throws<Sam3CheckpointException>(() => CheckpointFile.Open(_files.File("does-not-exist.pt")));
    }
}
