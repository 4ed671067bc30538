using Sam3.Torch.Processing;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Video;

/// <summary>
/// The tracker's view of a video: frames resized to S×S exactly as the reference's frame loader
/// (<c>sam2_utils._load_img_as_tensor</c>: PIL bicubic resize of the RGB frame, see <see cref="PilResize"/>), kept as
/// uint8 in a small most-recently-used cache (decoded again from the source on a miss), and normalised only when used:
/// <c>float32(u / 255.0 in float64)</c>, then <c>(x − 0.5) / 0.5</c> in float32 (mean = std = 0.5).
/// Memory held is bounded by <see cref="CacheCapacity"/>, not by the video length.
/// </summary>
internal sealed class TrackerFrames : IDisposable
{
    private readonly IFrameSource _source;
    private readonly bool _ownsSource;
    private readonly LinkedList<(int Index, byte[] Rgb)> _cache = new();
    private readonly float[] _lut = new float[256];
    private (int Index, RgbImage Image)? _lastOriginal;
    private float[]? _chw; // reused staging buffer (large-object heap: allocating it per frame drives full GCs)

    public int ImageSize { get; }
    public int CacheCapacity { get; }
    public int Count => _source.FrameCount;
    public int VideoHeight => _source.Height;
    public int VideoWidth => _source.Width;
    public string Description => _source.Description;

    public TrackerFrames(IFrameSource source, int imageSize, double mean, double std, int cacheCapacity = 4, bool ownsSource = true)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (source.FrameCount <= 0) throw new Sam3ImageException($"{source.Description}: the video has zero frames");
        if (imageSize <= 0) throw new ArgumentOutOfRangeException(nameof(imageSize), imageSize, "image size must be positive");
        if (cacheCapacity < 1) throw new ArgumentOutOfRangeException(nameof(cacheCapacity), cacheCapacity, "cache capacity must be at least 1");
        _source = source;
        _ownsSource = ownsSource;
        ImageSize = imageSize;
        CacheCapacity = cacheCapacity;
        float m = (float)mean, s = (float)std;
        for (int u = 0; u < 256; u++)
        {
            float x = (float)(u / 255.0); // float64 division, stored as float32 (images tensor)
            _lut[u] = (x - m) / s;        // in-place float32 ops on the tensor
        }
    }

    /// <summary>Frame <paramref name="index"/> resized to S×S, HWC RGB bytes (cached; do not modify).</summary>
    public byte[] Resized(int index)
    {
        if ((uint)index >= (uint)Count)
            throw new ArgumentOutOfRangeException(nameof(index), index, $"frame index {index} outside [0, {Count - 1}] of {Description}");
        for (var node = _cache.First; node is not null; node = node.Next)
        {
            if (node.Value.Index != index) continue;
            _cache.Remove(node);
            _cache.AddFirst(node);
            return node.Value.Rgb;
        }
        var img = Original(index);
        byte[]? reuse = null;
        if (_cache.Count >= CacheCapacity)
        {
            reuse = _cache.Last!.Value.Rgb;
            _cache.RemoveLast();
        }
        var rgb = PilResize.ResizeRgb(img.Data, img.Width, img.Height, ImageSize, ImageSize, reuse);
        _cache.AddFirst((index, rgb));
        return rgb;
    }

    /// <summary>Frame <paramref name="index"/> as decoded (the most recent one is kept, so reading the frame just tracked does not decode it again).</summary>
    public RgbImage Original(int index)
    {
        if ((uint)index >= (uint)Count)
            throw new ArgumentOutOfRangeException(nameof(index), index, $"frame index {index} outside [0, {Count - 1}] of {Description}");
        if (_lastOriginal is { } last && last.Index == index) return last.Image;
        var img = _source.ReadFrame(index);
        _lastOriginal = (index, img);
        return img;
    }

    /// <summary>The normalised frame [1, 3, S, S] float32 on <paramref name="device"/> (owned by the caller's dispose scope).</summary>
    public Tensor Normalized(int index, Device? device = null)
    {
        var chw = _chw ??= new float[3 * ImageSize * ImageSize];
        return FrameNormalization.ToChw(Resized(index), ImageSize, _lut, chw, device);
    }

    public void Dispose()
    {
        _cache.Clear();
        _lastOriginal = null;
        if (_ownsSource) _source.Dispose();
    }
}

/// <summary>HWC uint8 → [1, 3, S, S] float32 through a per-value lookup table (the loaders' normalisation).</summary>
internal static class FrameNormalization
{
    /// <param name="rgb">S·S·3 bytes, row-major HWC.</param>
    /// <param name="lut">256 normalised values, one per byte value.</param>
    /// <param name="chw">A reusable buffer of 3·S·S floats.</param>
    public static Tensor ToChw(byte[] rgb, int size, float[] lut, float[] chw, Device? device)
    {
        int n = size * size;
        for (int i = 0; i < n; i++)
        {
            chw[i] = lut[rgb[3 * i]];
            chw[n + i] = lut[rgb[3 * i + 1]];
            chw[2 * n + i] = lut[rgb[3 * i + 2]];
        }
        var t = torch.tensor(chw, new long[] { 1, 3, size, size });
        return device is null || device.type == DeviceType.CPU ? t : t.to(device);
    }
}
