using Sam3.Torch.IO;

namespace Sam3.Torch.Video;

/// <summary>Thrown by a live frame source when a frame after the end of the stream is requested; propagation stops there.</summary>
internal sealed class EndOfVideoException(int frames) : Sam3ImageException($"the live video ended after {frames} frame(s)")
{
    public int Frames { get; } = frames;
}

/// <summary>
/// Frames that arrive one after another (a camera, a network stream, any sequence of images), read only when the
/// tracker asks for them. The length is unknown until the stream ends (<see cref="FrameCount"/> is
/// <see cref="int.MaxValue"/> until then, which gives the tracker the same settings as any video longer than its
/// pointer window). Until <see cref="StartStreaming"/> every frame read is kept (prompts and their memory encoding
/// re-read them); after it only the most recent <see cref="Window"/> frames and the frames read before are kept.
/// Only forward tracking is possible past the kept frames.
/// </summary>
internal sealed class LiveFrameSource : IFrameSource
{
    private readonly IEnumerator<RgbImage> _frames;
    private readonly Dictionary<int, RgbImage> _kept = new();
    private readonly Queue<int> _recent = new();
    private bool _streaming;
    private int _next; // frames pulled from the enumerator so far
    private int? _end;

    public int Window { get; }
    public int FrameCount => _end ?? int.MaxValue;
    public int Width { get; }
    public int Height { get; }
    public string Description { get; }

    public LiveFrameSource(IEnumerable<RgbImage> frames, string description = "a live video", int window = 4)
    {
        ArgumentNullException.ThrowIfNull(frames);
        if (window < 1) throw new ArgumentOutOfRangeException(nameof(window), window, "the window must hold at least one frame");
        Window = window;
        Description = description;
        _frames = frames.GetEnumerator();
        var first = Pull() ?? throw new Sam3ImageException($"{description}: the video has zero frames");
        Width = first.Width;
        Height = first.Height;
    }

    /// <summary>From now on, frames read are kept only while they are among the most recent <see cref="Window"/>.</summary>
    public void StartStreaming() => _streaming = true;

    private RgbImage? Pull()
    {
        if (_end is not null) return null;
        if (!_frames.MoveNext())
        {
            _end = _next;
            return null;
        }
        var img = _frames.Current ?? throw new Sam3ImageException($"{Description}: frame {_next} is null");
        if (_next > 0) FrameSource.CheckSize(img, Width, Height, $"{Description} frame {_next}");
        int index = _next++;
        _kept[index] = img;
        if (_streaming)
        {
            _recent.Enqueue(index);
            while (_recent.Count > Window) _kept.Remove(_recent.Dequeue());
        }
        return img;
    }

    public RgbImage ReadFrame(int index)
    {
        if (index < 0) throw new ArgumentOutOfRangeException(nameof(index), index, "frame index must not be negative");
        if (_kept.TryGetValue(index, out var img)) return img;
        if (index < _next)
            throw new Sam3ImageException($"{Description}: frame {index} is no longer available (a live source keeps the frames read before tracking and the {Window} most recent ones)");
        while (_next <= index)
        {
            var pulled = Pull();
            if (pulled is null) throw new EndOfVideoException(_next);
            if (_next - 1 == index) return pulled;
        }
        throw new InvalidOperationException("unreachable");
    }

    public void Dispose() => _frames.Dispose();
}
