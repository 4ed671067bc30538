using BenchmarkDotNet.Attributes;
using Sam3.Torch.Processing;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// COCO RLE on 1280×720 masks: a segmentation-like mask (three filled ellipses, ~2.3k runs) and a worst case
/// (independent random pixels, ~460k runs). Run: dotnet run -c Release --project benchmarks/Sam3.Torch.Benchmarks --
/// --filter *RleBenchmarks* --job short
/// </summary>
[MemoryDiagnoser]
public class RleBenchmarks
{
    private const int H = 720, W = 1280;
    private byte[] _blobs = [];
    private byte[] _noise = [];
    private CocoRle _blobRle = null!;

    [GlobalSetup]
    public void Setup()
    {
        _blobs = new byte[H * W];
        (double cx, double cy, double rx, double ry)[] ellipses = [(300, 300, 200, 150), (800, 400, 250, 280), (1100, 150, 120, 100)];
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                foreach (var (cx, cy, rx, ry) in ellipses)
                {
                    double u = (x - cx) / rx, v = (y - cy) / ry;
                    if (u * u + v * v <= 1) { _blobs[y * W + x] = 1; break; }
                }
        var rng = new Random(42);
        _noise = new byte[H * W];
        for (int i = 0; i < _noise.Length; i++) _noise[i] = (byte)rng.Next(2);
        _blobRle = CocoRle.Encode(_blobs, H, W);
    }

    [Benchmark(Baseline = true)]
    public CocoRle EncodeBlobs() => CocoRle.Encode(_blobs, H, W);

    [Benchmark]
    public CocoRle EncodeNoise() => CocoRle.Encode(_noise, H, W);

    [Benchmark]
    public byte[] DecodeBlobs() => _blobRle.Decode();

    [Benchmark]
    public CocoRle ParseBlobString() => new([H, W], _blobRle.Counts);
}
