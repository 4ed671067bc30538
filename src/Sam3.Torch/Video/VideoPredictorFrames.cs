using Sam3.Torch.Processing;
using System.Runtime.InteropServices;
using OpenCvSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Video;

/// <summary>How the video predictor turns decoded frames into model input (upstream <c>io_utils</c> loaders).</summary>
internal enum VideoFrameLoader
{
    /// <summary>Image folders / lists: PIL bilinear resize, <c>/255</c>, float16 storage and normalisation.</summary>
    ImageFolder,
    /// <summary>
    /// Video files, <c>video_loader_type="cv2"</c>: OpenCV bicubic resize, float32, normalised <b>without</b> the
    /// <c>/255</c> (upstream quirk: inputs span [−1, 509]).
    /// </summary>
    Cv2VideoFile,
    /// <summary>The cv2 path with the missing <c>/255</c> corrected (inputs in [−1, 1] as for image folders).</summary>
    Cv2VideoFileCorrected,
}

/// <summary>
/// The video predictor's view of a video (upstream <c>io_utils.load_video_frames_from_image_folder</c>): each frame
/// resized to S×S with Pillow's BILINEAR filter (torchvision <c>TF.resize</c> on a PIL image), <c>to_tensor</c>
/// (<c>u / 255</c> in float32), stored as float16, then normalised in float16 (<c>(x − mean) / std</c>, each op rounded to
/// float16), and finally cast to float32 for the backbone. The whole chain is a function of the byte value, so it is a
/// 256-entry table computed with the same float16 tensor ops. Frames are decoded lazily and only the most recently used
/// ones are kept (upstream holds the whole video in memory).
/// </summary>
internal sealed class VideoPredictorFrames : IDisposable
{
    private readonly IFrameSource _source;
    private readonly bool _ownsSource;
    private readonly float[] _lut;
    private readonly LinkedList<(int Index, byte[] Rgb)> _cache = new();
    private float[]? _chw;

    public int ImageSize { get; }
    public int CacheCapacity { get; }
    public int Count => _source.FrameCount;
    public int VideoHeight => _source.Height;
    public int VideoWidth => _source.Width;
    public IFrameSource Source => _source;
    public VideoFrameLoader Loader { get; }

    /// <summary>The loader upstream picks for <paramref name="source"/>: cv2 for video files, PIL for images.</summary>
    public static VideoFrameLoader DefaultLoader(IFrameSource source, bool correctCv2Scale = false) =>
        source is VideoFileFrameSource ? (correctCv2Scale ? VideoFrameLoader.Cv2VideoFileCorrected : VideoFrameLoader.Cv2VideoFile) : VideoFrameLoader.ImageFolder;

    public VideoPredictorFrames(IFrameSource source, int imageSize, double[] mean, double[] std, int cacheCapacity = 2, bool ownsSource = true,
                                VideoFrameLoader? loader = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (source.FrameCount <= 0) throw new Sam3ImageException($"{source.Description}: the video has zero frames");
        if (imageSize <= 0) throw new ArgumentOutOfRangeException(nameof(imageSize), imageSize, "image size must be positive");
        if (cacheCapacity < 1) throw new ArgumentOutOfRangeException(nameof(cacheCapacity), cacheCapacity, "cache capacity must be at least 1");
        if (mean.Distinct().Count() != 1 || std.Distinct().Count() != 1)
            throw new Sam3ConfigException("the video frame loader supports one mean/std for all channels (upstream uses 0.5/0.5)");
        _source = source;
        _ownsSource = ownsSource;
        ImageSize = imageSize;
        CacheCapacity = cacheCapacity;
        Loader = loader ?? DefaultLoader(source);
        using var scope = NewDisposeScope();
        var m16 = torch.tensor(mean[0], dtype: ScalarType.Float16);
        var s16 = torch.tensor(std[0], dtype: ScalarType.Float16);
        Tensor x;
        if (Loader == VideoFrameLoader.ImageFolder)
        {
            x = (torch.arange(256, dtype: ScalarType.Float32) / 255f).to(ScalarType.Float16);
            x = (x - m16) / s16;
        }
        else
        {
            // float32 tensor minus/divided by float16 scalars: computed in float32
            x = torch.arange(256, dtype: ScalarType.Float32);
            if (Loader == VideoFrameLoader.Cv2VideoFileCorrected) x = x / 255f;
            x = (x - m16.to(ScalarType.Float32)) / s16.to(ScalarType.Float32);
        }
        _lut = x.to(ScalarType.Float32).data<float>().ToArray();
    }

    /// <summary>Frame <paramref name="index"/> resized (bilinear) to S×S, HWC RGB bytes.</summary>
    public byte[] Resized(int index)
    {
        if ((uint)index >= (uint)Count)
            throw new ArgumentOutOfRangeException(nameof(index), index, $"frame index {index} outside [0, {Count - 1}] of {_source.Description}");
        for (var node = _cache.First; node is not null; node = node.Next)
        {
            if (node.Value.Index != index) continue;
            _cache.Remove(node);
            _cache.AddFirst(node);
            return node.Value.Rgb;
        }
        var img = _source.ReadFrame(index);
        byte[]? reuse = null;
        if (_cache.Count >= CacheCapacity)
        {
            reuse = _cache.Last!.Value.Rgb;
            _cache.RemoveLast();
        }
        var rgb = Loader == VideoFrameLoader.ImageFolder
            ? PilResize.ResizeRgb(img.Data, img.Width, img.Height, ImageSize, ImageSize, reuse, PilResize.Filter.Bilinear)
            : Cv2Cubic(img, ImageSize, reuse);
        _cache.AddFirst((index, rgb));
        return rgb;
    }

    /// <summary>cv2.resize(rgb, (S, S), INTER_CUBIC) on the RGB bytes.</summary>
    private static byte[] Cv2Cubic(RgbImage img, int size, byte[]? reuse)
    {
        using var src = new Mat(img.Height, img.Width, MatType.CV_8UC3);
        Marshal.Copy(img.Data, 0, src.Data, img.Data.Length);
        using var dst = new Mat();
        Cv2.Resize(src, dst, new OpenCvSharp.Size(size, size), 0, 0, InterpolationFlags.Cubic);
        var result = reuse is not null && reuse.Length == size * size * 3 ? reuse : new byte[size * size * 3];
        using var cont = dst.IsContinuous() ? dst : dst.Clone();
        Marshal.Copy(cont.Data, result, 0, result.Length);
        return result;
    }

    /// <summary>The normalised frame [1, 3, S, S] float32 on <paramref name="device"/> (in the caller's dispose scope).</summary>
    public Tensor Normalized(int index, Device? device = null)
    {
        var chw = _chw ??= new float[3 * ImageSize * ImageSize];
        return FrameNormalization.ToChw(Resized(index), ImageSize, _lut, chw, device);
    }

    public void Dispose()
    {
        _cache.Clear();
        if (_ownsSource) _source.Dispose();
    }
}

/// <summary>A non-owning view of a frame source (several tracker states share the session's source).</summary>
internal sealed class SharedFrameSource(IFrameSource inner) : IFrameSource
{
    public int FrameCount => inner.FrameCount;
    public int Width => inner.Width;
    public int Height => inner.Height;
    public string Description => inner.Description;
    public RgbImage ReadFrame(int index) => inner.ReadFrame(index);
    public void Dispose() { }
}
