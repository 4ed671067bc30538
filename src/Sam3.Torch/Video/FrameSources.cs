using OpenCvSharp;
using Sam3.Torch.IO;

namespace Sam3.Torch.Video;

/// <summary>
/// A video as a random-access sequence of decoded RGB frames, read lazily (nothing is decoded up front, unlike the
/// reference loader). All frames have the size of frame 0; a different size is a <see cref="Sam3ImageException"/>.
/// </summary>
internal interface IFrameSource : IDisposable
{
    /// <summary>Number of frames.</summary>
    int FrameCount { get; }
    int Width { get; }
    int Height { get; }
    /// <summary>For error messages (a path, "3 images").</summary>
    string Description { get; }
    /// <summary>Decodes frame <paramref name="index"/> (0-based).</summary>
    RgbImage ReadFrame(int index);
}

/// <summary>Shared helpers of the frame sources.</summary>
internal static class FrameSource
{
    /// <summary>Extensions accepted in a frame folder (upstream accepts .jpg/.jpeg only; PNG/BMP/WebP are an extension).</summary>
    public static readonly string[] ImageExtensions = [".jpg", ".jpeg", ".png", ".bmp", ".webp"];

    /// <summary>Extensions opened as video files.</summary>
    public static readonly string[] VideoExtensions = [".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"];

    /// <summary>A folder of frames, a video file, or an image file (a one-frame video), by what <paramref name="path"/> is.</summary>
    public static IFrameSource Open(string path)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new Sam3ImageException("video path is empty");
        if (Directory.Exists(path)) return new FolderFrameSource(path);
        if (!File.Exists(path)) throw new Sam3ImageException($"video not found: {path}");
        string ext = Path.GetExtension(path).ToLowerInvariant();
        if (ImageExtensions.Contains(ext)) return new ImageListFrameSource([path]);
        return new VideoFileFrameSource(path);
    }

    internal static void CheckSize(RgbImage img, int width, int height, string what)
    {
        if (img.Width != width || img.Height != height)
            throw new Sam3ImageException($"{what}: frame size {img.Width}x{img.Height} differs from the first frame's {width}x{height} (all frames of a video must have one size)");
    }
}

/// <summary>
/// A folder of frame images named <c>&lt;index&gt;.jpg</c> (as the reference's loader): sorted by the numeric stem when
/// every stem is an integer, lexicographically otherwise. Hidden files are ignored; any other non-image file is an error.
/// </summary>
internal sealed class FolderFrameSource : IFrameSource
{
    private readonly string[] _paths;
    public int FrameCount => _paths.Length;
    public int Width { get; }
    public int Height { get; }
    public string Description { get; }

    public FolderFrameSource(string folder)
    {
        Description = folder;
        string[] files;
        try
        {
            files = Directory.GetFiles(folder);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new Sam3ImageException($"{folder}: cannot list the frame folder ({e.Message})", e);
        }
        files = files.Where(f => !Path.GetFileName(f).StartsWith('.')).ToArray();
        var bad = files.Where(f => !FrameSource.ImageExtensions.Contains(Path.GetExtension(f).ToLowerInvariant())).ToList();
        if (bad.Count > 0)
            throw new Sam3ImageException($"{folder}: not an image file: {Path.GetFileName(bad[0])}{(bad.Count > 1 ? $" (and {bad.Count - 1} more)" : "")}; a frame folder holds only <index>.jpg frames");
        if (files.Length == 0) throw new Sam3ImageException($"{folder}: no frames found (expected <index>.jpg files)");
        bool numeric = files.All(f => long.TryParse(Path.GetFileNameWithoutExtension(f), out _));
        _paths = numeric
            ? files.OrderBy(f => long.Parse(Path.GetFileNameWithoutExtension(f))).ThenBy(f => f, StringComparer.Ordinal).ToArray()
            : files.OrderBy(f => Path.GetFileName(f), StringComparer.Ordinal).ToArray();
        var first = ImageLoader.Load(_paths[0]);
        Width = first.Width;
        Height = first.Height;
    }

    public RgbImage ReadFrame(int index)
    {
        if ((uint)index >= (uint)_paths.Length)
            throw new ArgumentOutOfRangeException(nameof(index), index, $"frame index {index} outside [0, {_paths.Length - 1}] of {Description}");
        var img = ImageLoader.Load(_paths[index]);
        FrameSource.CheckSize(img, Width, Height, _paths[index]);
        return img;
    }

    public void Dispose() { }
}

/// <summary>A list of image files or already decoded images, in the given order.</summary>
internal sealed class ImageListFrameSource : IFrameSource
{
    private readonly string[]? _paths;
    private readonly RgbImage[]? _images;
    public int FrameCount { get; }
    public int Width { get; }
    public int Height { get; }
    public string Description { get; }

    public ImageListFrameSource(IReadOnlyList<string> paths)
    {
        if (paths is null || paths.Count == 0) throw new Sam3ImageException("the image list is empty (zero frames)");
        _paths = paths.ToArray();
        FrameCount = _paths.Length;
        Description = $"{FrameCount} image file(s)";
        var first = ImageLoader.Load(_paths[0]);
        (Width, Height) = (first.Width, first.Height);
    }

    public ImageListFrameSource(IReadOnlyList<RgbImage> images)
    {
        if (images is null || images.Count == 0) throw new Sam3ImageException("the image list is empty (zero frames)");
        _images = images.ToArray();
        FrameCount = _images.Length;
        Description = $"{FrameCount} image(s)";
        (Width, Height) = (_images[0].Width, _images[0].Height);
        for (int i = 1; i < _images.Length; i++) FrameSource.CheckSize(_images[i], Width, Height, $"image {i}");
    }

    public RgbImage ReadFrame(int index)
    {
        if ((uint)index >= (uint)FrameCount)
            throw new ArgumentOutOfRangeException(nameof(index), index, $"frame index {index} outside [0, {FrameCount - 1}] of {Description}");
        if (_images is not null) return _images[index];
        var img = ImageLoader.Load(_paths![index]);
        FrameSource.CheckSize(img, Width, Height, _paths[index]);
        return img;
    }

    public void Dispose() { }
}

/// <summary>
/// A video file read through OpenCV's <c>VideoCapture</c> (FFmpeg backend): frames are decoded sequentially; a jump
/// backwards (or far forwards) seeks by frame position. The frame count is OpenCV's, corrected downwards when the
/// stream ends early.
/// </summary>
internal sealed class VideoFileFrameSource : IFrameSource
{
    private readonly VideoCapture _cap;
    private int _next; // index of the frame the next Read() returns
    public int FrameCount { get; private set; }
    public int Width { get; }
    public int Height { get; }
    public string Description { get; }

    public VideoFileFrameSource(string path)
    {
        Description = path;
        try
        {
            _cap = new VideoCapture(path);
        }
        catch (Exception e) when (e is OpenCVException or DllNotFoundException or TypeInitializationException)
        {
            throw new Sam3ImageException($"{path}: cannot open the video ({e.Message})", e);
        }
        if (!_cap.IsOpened())
        {
            _cap.Dispose();
            throw new Sam3ImageException($"{path}: cannot open the video (unreadable file or unsupported codec/container)");
        }
        FrameCount = (int)Math.Max(0, _cap.Get(VideoCaptureProperties.FrameCount));
        using var first = new Mat();
        if (!_cap.Read(first) || first.Empty())
        {
            _cap.Dispose();
            throw new Sam3ImageException($"{path}: the video has no decodable frames (zero frames or unsupported codec)");
        }
        Width = first.Width;
        Height = first.Height;
        _next = 1;
        if (FrameCount <= 0) FrameCount = CountByReading();
    }

    private int CountByReading()
    {
        int n = 1;
        using var m = new Mat();
        while (_cap.Read(m) && !m.Empty()) n++;
        Seek(0);
        return n;
    }

    private void Seek(int index)
    {
        _cap.Set(VideoCaptureProperties.PosFrames, index);
        _next = index;
    }

    public RgbImage ReadFrame(int index)
    {
        if ((uint)index >= (uint)FrameCount)
            throw new ArgumentOutOfRangeException(nameof(index), index, $"frame index {index} outside [0, {FrameCount - 1}] of {Description}");
        if (index < _next || index > _next + 32) Seek(index);
        using var mat = new Mat();
        while (true)
        {
            if (!_cap.Read(mat) || mat.Empty())
            {
                FrameCount = Math.Min(FrameCount, _next);
                throw new Sam3ImageException($"{Description}: frame {index} could not be decoded (the stream ends after {_next} frames)");
            }
            _next++;
            if (_next - 1 == index) break;
        }
        var img = ImageLoader.FromMat(mat);
        FrameSource.CheckSize(img, Width, Height, $"{Description} frame {index}");
        return img;
    }

    public void Dispose() => _cap.Dispose();
}
