using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static Sam3.Torch.Tests.IO.CheckpointTestFiles;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.IO;

[TestFixture, Category("Fast")]
public class CheckpointSafetensorsTests
{
    private CheckpointTestFiles _files = null!;

    [OneTimeSetUp] public void SetUp() => _files = new CheckpointTestFiles();
    [OneTimeTearDown] public void TearDown() => _files.Dispose();

    /// <summary>Reads the header independently of SafetensorsFile: (header length, JSON).</summary>
    private static (long length, JsonDocument doc) RawHeader(string path)
    {
        var bytes = File.ReadAllBytes(path);
        long n = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        return (n, JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n)));
    }

    [Test]
    public void RoundTripPreservesValuesDtypesAndShapes()
    {
        using var scope = NewDisposeScope();
        var baseT = torch.arange(0, 24, dtype: ScalarType.Float32).reshape(4, 6);
        var angles = torch.arange(0, 6, dtype: ScalarType.Float32).reshape(2, 3);
        var tensors = new Dictionary<string, Tensor>
        {
            ["odd.bf16"] = torch.tensor(new float[] { 1, -2.5f, 3 }).to(ScalarType.BFloat16), // 6 bytes: would misalign what follows
            ["f32"] = torch.arange(0, 6, dtype: ScalarType.Float32).reshape(2, 3),
            ["f16"] = torch.tensor(new float[] { 0.5f, 2 }).to(ScalarType.Float16),
            ["i64"] = torch.tensor(new long[] { 1, -2, 1L << 40 }),
            ["bool"] = torch.tensor(new[] { true, false, true }),
            ["u8"] = torch.tensor(new byte[] { 0, 255 }),
            ["x.attn.freqs_cis"] = torch.polar(torch.ones(2, 3), angles),
            ["scalar"] = torch.tensor(7.0f),
            ["empty"] = torch.zeros(0, 4),
            ["transposed"] = baseT.t(),                 // non-contiguous
            ["narrowed"] = baseT.narrow(0, 2, 2),       // storage offset 12
        };
        string path = _files.File("roundtrip.safetensors");
        SafetensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["note"] = "hello" });

        var (headerLength, doc) = RawHeader(path);
        Assert.That((8 + headerLength) % 8, Is.EqualTo(0), "header must keep the data 8-byte aligned");
        long end = 0;
        var spans = doc.RootElement.EnumerateObject().Where(p => p.Name != "__metadata__")
            .Select(p => (p.Name, b: p.Value.GetProperty("data_offsets")[0].GetInt64(), e: p.Value.GetProperty("data_offsets")[1].GetInt64(),
                          es: SafetensorsFile.ElementSize(p.Value.GetProperty("dtype").GetString()!)))
            .OrderBy(x => x.b).ToList();
        foreach (var s in spans)
        {
            Assert.That(s.b, Is.EqualTo(end), $"{s.Name}: data must be contiguous (no holes)");
            Assert.That(s.b % s.es, Is.EqualTo(0), $"{s.Name}: offset must be a multiple of its element size");
            end = s.e;
        }
        Assert.That(new FileInfo(path).Length, Is.EqualTo(8 + headerLength + end));
        Assert.That(doc.RootElement.GetProperty("__metadata__").GetProperty("x.attn.freqs_cis").GetString(), Is.EqualTo("complex64_as_real"));
        doc.Dispose();

        using var st = SafetensorsFile.Open(path);
        Assert.That(st.Names, Is.EquivalentTo(tensors.Keys));
        Assert.That(st.Metadata["note"], Is.EqualTo("hello"));
        foreach (var (name, expected) in tensors)
        {
            var got = st.Load(name);
            var info = st.Info(name);
            if (name == "x.attn.freqs_cis")
            {
                Assert.That(info.ComplexAsReal, Is.True);
                Assert.That(info.LogicalShape, Is.EqualTo(new long[] { 2, 3 }));
                Assert.That(got.dtype, Is.EqualTo(ScalarType.Float32));
                var re = torch.cos(angles);
                var im = torch.sin(angles);
                Assert.That(Floats(got), Is.EqualTo(Floats(torch.stack([re, im], -1))).Within(1e-6));
                continue;
            }
            Assert.That(info.ComplexAsReal, Is.False);
            Assert.That(got.dtype, Is.EqualTo(expected.dtype), name);
            Assert.That(got.shape, Is.EqualTo(expected.shape), name);
            Assert.That(Same(got, expected), Is.True, name);
        }
    }

    [Test]
    public void WriterRejectsBadInput()
    {
        using var scope = NewDisposeScope();
        string path = _files.File("bad-writer.safetensors");
        var dup = new List<SafetensorsWriter.Item>
        {
            new("a", [1], ScalarType.Float32, () => torch.zeros(1)),
            new("a", [1], ScalarType.Float32, () => torch.zeros(1)),
        };
        Assert.Throws<Sam3CheckpointException>(() => SafetensorsWriter.Write(path, dup));
        var wrongShape = new List<SafetensorsWriter.Item> { new("a", [2], ScalarType.Float32, () => torch.zeros(3)) };
        var ex = Assert.Throws<Sam3CheckpointException>(() => SafetensorsWriter.Write(path, wrongShape));
        Assert.That(ex!.Message, Does.Contain("'a'"));
        Assert.That(File.Exists(path), Is.False, "a failed write leaves no file behind");
        Assert.That(Directory.GetFiles(_files.Directory, "*.tmp"), Is.Empty, "temporary file removed");
    }

    [Test]
    public void TinyModelFixtureHas623KeysAndComplexMetadata()
    {
        string path = SharedData.Parity("tiny", "model.safetensors");
        Assert.That(CheckpointFile.DetectFormat(path), Is.EqualTo(CheckpointFormat.Safetensors));
        using var ck = CheckpointFile.Open(path);
        Assert.That(ck.Names, Has.Count.EqualTo(623));
        var complexKeys = ck.Names.Where(n => ck.Info(n).ComplexAsReal).ToList();
        Assert.That(complexKeys, Is.EqualTo(Enumerable.Range(0, 4).Select(i => $"detector.backbone.vision_backbone.trunk.blocks.{i}.attn.freqs_cis")));
        foreach (var k in complexKeys) Assert.That(ck.Metadata[k], Is.EqualTo("complex64_as_real"));
        Assert.That(StateDictMapper.DetectLayout(ck.Names), Is.EqualTo(CheckpointLayout.Released));

        // the freqs_cis tables are unit-modulus complex numbers
        using var scope = NewDisposeScope();
        var f = ck.Load(complexKeys[0]);
        var modulus = (f * f).sum(-1).sqrt();
        Assert.That((modulus - 1).abs().max().ToSingle(), Is.LessThan(1e-5f));
    }

    [Test]
    public void ConvertPtToSafetensorsKeepsEverything()
    {
        string pt = _files.File("convert-src.pt");
        var b = StandardBuilder();
        b.WrapInModel = true;
        b.Write(pt);
        string st = _files.File("converted.safetensors");
        var reports = new List<(int, int, string)>();
        CheckpointInspector.Convert(pt, st, new SyncProgress<(int, int, string)>(reports.Add));
        Assert.That(reports, Has.Count.EqualTo(StandardNames.Length));
        Assert.That(reports[^1].Item1, Is.EqualTo(StandardNames.Length));

        using var src = CheckpointFile.Open(pt);
        using var dst = CheckpointFile.Open(st);
        Assert.That(dst.Names, Is.EquivalentTo(src.Names));
        Assert.That(dst.Metadata["format"], Is.EqualTo("pt"));
        Assert.That(dst.Metadata["d.attn.freqs_cis"], Is.EqualTo("complex64_as_real"));
        using var scope = NewDisposeScope();
        foreach (var n in src.Names)
        {
            Assert.That(dst.Info(n), Is.EqualTo(src.Info(n)).Using<CheckpointTensorInfo>((x, y) =>
                x.Name == y.Name && x.DType == y.DType && x.ComplexAsReal == y.ComplexAsReal && x.Shape.SequenceEqual(y.Shape)), n);
            Assert.That(Same(dst.Load(n), src.Load(n)), Is.True, n);
        }
    }

    [Test]
    public void ConvertTinySafetensorsRoundTrips()
    {
        string path = SharedData.Parity("tiny", "model.safetensors");
        string copy = _files.File("tiny-copy.safetensors");
        CheckpointInspector.Convert(path, copy);
        using var a = CheckpointFile.Open(path);
        using var b = CheckpointFile.Open(copy);
        Assert.That(b.Names, Is.EqualTo(a.Names));
        using var scope = NewDisposeScope();
        foreach (var n in a.Names)
        {
            Assert.That(b.Info(n).ComplexAsReal, Is.EqualTo(a.Info(n).ComplexAsReal), n);
            Assert.That(Same(a.Load(n), b.Load(n)), Is.True, n);
        }
        Assert.That(b.Metadata["layout"], Is.EqualTo(a.Metadata["layout"]));
    }

    private string WriteRaw(string name, string json, long? declaredLength = null, int dataBytes = 16)
    {
        var header = Encoding.UTF8.GetBytes(json);
        var bytes = new byte[8 + header.Length + dataBytes];
        BinaryPrimitives.WriteInt64LittleEndian(bytes, declaredLength ?? header.Length);
        header.CopyTo(bytes, 8);
        string path = _files.File(name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 1_000_000L, TestName = "Header size larger than the file")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", -5L, TestName = "Negative header size")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]}}", null, TestName = "Offsets outside the file")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", null, TestName = "Size disagrees with shape")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,4]}}", null, TestName = "Reversed offsets")]
    [TestCase("{\"a\":{\"dtype\":\"Q7\",\"shape\":[4],\"data_offsets\":[0,16]}}", null, TestName = "Unknown dtype")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[4]}}", null, TestName = "No data_offsets")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0]}}", null, TestName = "One data offset")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"x\"],\"data_offsets\":[0,16]}}", null, TestName = "Non-numeric shape")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,16]}}", null, TestName = "Overflowing shape")]
    [TestCase("{\"a\":[1,2]}", null, TestName = "Entry not an object")]
    [TestCase("{\"__metadata__\":[1],\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", null, TestName = "Metadata not an object")]
    [TestCase("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", null, TestName = "Duplicate key")]
    [TestCase("[1,2,3]", null, TestName = "Header is an array")]
    [TestCase("{\"a\": {\"dtype\": garbage", null, TestName = "Garbage JSON")]
    public void CorruptHeadersAreTypedErrors(string json, long? declared)
    {
        string path = WriteRaw($"corrupt-{Guid.NewGuid():N}.safetensors", json, declared);
        Assert.Throws<Sam3CheckpointException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Throws<Sam3CheckpointException>(() => CheckpointFile.Open(path).Dispose());
    }

    [Test]
    public void ComplexTagOnAWrongTensorIsATypedError()
    {
        string path = WriteRaw("badtag.safetensors",
            "{\"__metadata__\":{\"a\":\"complex64_as_real\"},\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}");
        using var st = SafetensorsFile.Open(path);
        Assert.Throws<Sam3CheckpointException>(() => st.Info("a"));
    }

    [Test, Category("Slow")]
    public void TruncationsAndMutationsAreTypedErrorsOrReadable()
    {
        using var scope = NewDisposeScope();
        string src = _files.File("fuzz-src.safetensors");
        SafetensorsWriter.Write(src, new Dictionary<string, Tensor>
        {
            ["a"] = torch.arange(0, 10, dtype: ScalarType.Float32),
            ["b"] = torch.ones(3, 2, dtype: ScalarType.BFloat16),
            ["c"] = torch.tensor(new long[] { 5, 6 }),
        });
        byte[] all = File.ReadAllBytes(src);
        string bad = _files.File("fuzz.safetensors");
        for (int n = 0; n < all.Length - 1; n += 5)
        {
            File.WriteAllBytes(bad, all[..n]);
            Assert.Throws<Sam3CheckpointException>(() => CheckpointFile.Open(bad).Dispose(), $"length {n}");
        }
        var rng = new Random(99);
        int rejected = 0;
        for (int trial = 0; trial < 300; trial++)
        {
            var copy = (byte[])all.Clone();
            int pos = rng.Next(Math.Min(copy.Length, 8 + 300));
            copy[pos] = (byte)rng.Next(256);
            File.WriteAllBytes(bad, copy);
            try
            {
                using var ck = CheckpointFile.Open(bad);
                foreach (var n in ck.Names) { ck.Info(n); ck.Load(n).sum(); }
            }
            catch (Sam3CheckpointException) { rejected++; }
        }
        Assert.That(rejected, Is.GreaterThan(0));
    }

    /// <summary>
    /// A 1.5 GB safetensors file is opened and every tensor view created and touched (first and last element) through the
    /// memory map; the process's resident memory must grow far less than the file size.
    /// </summary>
    [Test, Category("Slow")]
    public void LargeFileIsMemoryMapped()
    {
        const int tensorCount = 15;
        const long elementsPerTensor = 25_000_000; // 100 MB each, 1.5 GB in all
        string path = _files.File("large.safetensors");
        var items = Enumerable.Range(0, tensorCount).Select(i => new SafetensorsWriter.Item(
            $"t{i}", [elementsPerTensor], ScalarType.Float32,
            () => torch.full(elementsPerTensor, (float)i, dtype: ScalarType.Float32))).ToList();
        var write = Stopwatch.StartNew();
        SafetensorsWriter.Write(path, items);
        write.Stop();
        long fileLength = new FileInfo(path).Length;
        Assert.That(fileLength, Is.GreaterThan(1_500_000_000L));
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
                for (int i = 0; i < views.Count; i++)
                {
                    Assert.That(views[i][0].ToSingle(), Is.EqualTo((float)i));
                    Assert.That(views[i][elementsPerTensor - 1].ToSingle(), Is.EqualTo((float)i));
                }
                sw.Stop();
                proc.Refresh();
                long rssAfter = proc.WorkingSet64;
                long growth = rssAfter - rssBefore;
                TestContext.Progress.WriteLine(
                    $"large safetensors: {fileLength / 1e9:F2} GB written in {write.Elapsed.TotalSeconds:F1} s; opened + {views.Count} views touched in " +
                    $"{sw.Elapsed.TotalMilliseconds:F0} ms; RSS {rssBefore / 1e6:F0} MB -> {rssAfter / 1e6:F0} MB (growth {growth / 1e6:F1} MB)");
                Assert.That(growth, Is.LessThan(fileLength / 20), "memory-mapped views must not read the file into memory");
            }
        }
        finally
        {
            File.Delete(path);
        }
    }
}

/// <summary>IProgress that reports synchronously (Progress&lt;T&gt; posts to the thread pool).</summary>
public sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
