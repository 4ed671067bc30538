using System.Buffers.Binary;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.IO;

/// <summary>Temporary folder and small helpers shared by the checkpoint tests.</summary>
internal sealed class CheckpointTestFiles : IDisposable
{
    public string Directory { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "sam3-ckpt-tests-" + Guid.NewGuid().ToString("N"));

    public CheckpointTestFiles() => System.IO.Directory.CreateDirectory(Directory);

    public string File(string name) => System.IO.Path.Combine(Directory, name);

    public void Dispose()
    {
        try { System.IO.Directory.Delete(Directory, recursive: true); } catch (IOException) { }
    }

    public static float[] Floats(Tensor t) => t.contiguous().to(ScalarType.Float32).data<float>().ToArray();

    /// <summary>Same dtype, same shape, same values (elementwise ==).</summary>
    public static bool Same(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && (a.numel() == 0 || a.eq(b).all().ToBoolean());

    public static float[] Range(int n, float start = 0) => Enumerable.Range(0, n).Select(i => start + i).ToArray();

    /// <summary>bfloat16 bits of <paramref name="v"/> (exact for values with at most 8 significant bits).</summary>
    public static byte[] BFloat16Bytes(params float[] v)
    {
        var b = new byte[v.Length * 2];
        for (int i = 0; i < v.Length; i++)
            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(2 * i), (ushort)(BitConverter.SingleToUInt32Bits(v[i]) >> 16));
        return b;
    }

    public static byte[] HalfBytes(params float[] v)
    {
        var b = new byte[v.Length * 2];
        for (int i = 0; i < v.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(b.AsSpan(2 * i), (Half)v[i]);
        return b;
    }

    public static byte[] LongBytes(params long[] v)
    {
        var b = new byte[v.Length * 8];
        for (int i = 0; i < v.Length; i++) BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(8 * i), v[i]);
        return b;
    }

    /// <summary>Interleaved (re, im) float32 pairs of exp(i·angle) for each angle: a complex64 storage.</summary>
    public static byte[] PolarBytes(params double[] angles)
    {
        var b = new byte[angles.Length * 8];
        for (int i = 0; i < angles.Length; i++)
        {
            BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(8 * i), (float)Math.Cos(angles[i]));
            BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(8 * i + 4), (float)Math.Sin(angles[i]));
        }
        return b;
    }

    /// <summary>
    /// The reference test checkpoint used by several tests: a state dict with a contiguous fp32 tensor, a view with a
    /// storage offset sharing its storage with a second tensor, a bf16 tensor, a complex64 RoPE table, a transposed
    /// (non-contiguous) tensor, int64, bool, fp16 and a 0-dim tensor.
    /// </summary>
    public static TorchPtBuilder StandardBuilder()
    {
        var b = new TorchPtBuilder();
        b.AddFloatStorage("0", Range(6));
        b.AddTensor("a.weight", "0", 0, [2, 3]);
        b.AddFloatStorage("1", Range(10, 100));
        b.AddTensor("b.view", "1", 4, [2, 2]);
        b.AddTensor("b.base", "1", 0, [10]);
        b.AddStorage("2", "BFloat16Storage", BFloat16Bytes(1.0f, -2.5f, 3.0f), 3);
        b.AddTensor("c.bf16", "2", 0, [3]);
        b.AddStorage("3", "ComplexFloatStorage", PolarBytes(0, 1, 2, 3, 4, 5), 6);
        b.AddTensor("d.attn.freqs_cis", "3", 0, [2, 3]);
        b.AddFloatStorage("4", Range(6, 10));
        b.AddTensor("e.T", "4", 0, [3, 2], [1, 3]);
        b.AddStorage("5", "LongStorage", LongBytes(1, -2, 1L << 40), 3);
        b.AddTensor("f.long", "5", 0, [3]);
        b.AddStorage("6", "BoolStorage", [1, 0], 2);
        b.AddTensor("g.bool", "6", 0, [2]);
        b.AddStorage("7", "HalfStorage", HalfBytes(0.5f), 1);
        b.AddTensor("h.half", "7", 0, [1]);
        b.AddFloatStorage("8", 7.0f);
        b.AddTensor("i.scalar", "8", 0, []);
        return b;
    }

    public static readonly string[] StandardNames =
        ["a.weight", "b.view", "b.base", "c.bf16", "d.attn.freqs_cis", "e.T", "f.long", "g.bool", "h.half", "i.scalar"];
}
