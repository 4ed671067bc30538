using BenchmarkDotNet.Attributes;
using Sam3.Torch.Config;
using Sam3.Torch.Loading;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Video;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Benchmarks;

/// <summary>
/// One tracked frame of the SAM2-style tracker at the released size (<see cref="Sam3Config.Full"/>, random weights) on
/// CPU, side by side with the image path's backbone on the same model:
/// <list type="bullet">
/// <item>ImageBackbone: <c>backbone.ForwardImage</c> on one normalised 1008×1008 frame (the baseline of the Ratio column);</item>
/// <item>TrackedFrame: one non-conditioning frame of a session with one object prompted by a click on frame 0 —
///   frame decode/resize, backbone, memory attention over the conditioning memory, SAM heads, memory encoder, upsampling
///   to the video size.</item>
/// </list>
/// The video is synthetic (1280×720 gradient frames). Run:
/// dotnet run -c Release --project benchmarks/Sam3.Torch.Benchmarks -- --filter '*TrackerFrame*'
/// </summary>
[Config(typeof(TrackerFrameConfig))]
public class TrackerFrameBenchmarks
{
    private const int Width = 1280, Height = 720, Frames = 4;
    private Sam3ImageModel _model = null!;
    private VideoTracker _tracker = null!;
    private VideoSession _session = null!;
    private Tensor _image = null!;

    [GlobalSetup]
    public void Setup()
    {
        int threads = BenchEnvironment.PinThreads();
        torch.manual_seed(0);
        _model = Sam3ModelLoader.Build(Sam3Config.Full);
        int size = Sam3Config.Full.Vit.ImgSize;
        _image = torch.rand(1, 3, size, size) * 2 - 1;
        _tracker = new VideoTracker(_model);
        _session = _tracker.Open(Frames, Width, Height, Frame);
        _session.AddPoints(0, 1, [PointPrompt.Pixel(Width / 2f, Height / 2f)]);
        foreach (var _ in _session.Propagate(0, 0)) { } // the conditioning frame's memory
        Console.WriteLine($"// TrackerFrame setup: {threads} LibTorch threads, {_model.parameters().Sum(p => p.numel()):N0} parameters, video {Width}x{Height}");
    }

    private static RgbImage Frame(int index)
    {
        var data = new byte[Width * Height * 3];
        for (int y = 0; y < Height; y++)
            for (int x = 0; x < Width; x++)
            {
                int o = (y * Width + x) * 3;
                data[o] = (byte)(x * 255 / Width); data[o + 1] = (byte)(y * 255 / Height); data[o + 2] = (byte)(index * 40);
            }
        return new RgbImage(Width, Height, data);
    }

    [Benchmark(Baseline = true)]
    public void ImageBackbone()
    {
        using var scope = NewDisposeScope();
        using var mode = torch.inference_mode();
        using var output = _model.backbone.ForwardImage(_image);
    }

    [Benchmark]
    public int TrackedFrame()
    {
        int n = 0;
        foreach (var f in _session.Propagate(1, 0)) n += f.Objects.Count; // frame 1 only: tracked from frame 0's memory
        return n;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _session?.Dispose();
        _tracker?.Dispose();
        _model?.Dispose();
        _image?.Dispose();
    }
}
