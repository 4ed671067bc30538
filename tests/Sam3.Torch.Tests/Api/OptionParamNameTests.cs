using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Video;

namespace Sam3.Torch.Tests.Api;

/// <summary>
/// A bad option given to a public entry (model loading, the image / interactive predictors, video sessions and streams)
/// is an <see cref="ArgumentException"/> whose ParamName is the offending property (<c>options.X</c>), not a bare
/// <c>options</c>, and whose message shows the bad value (as the trainer's option errors do, TrainerOptionErrorTests).
/// On an untrained tiny model: only the argument checks run.
/// </summary>
[TestFixture, Category("Fast")]
public class OptionParamNameTests
{
    private Sam3Model _sam = null!;

    private static string Vocab => SharedData.Parity("inputs", "bpe_simple_vocab_16e6.txt.gz");

    [OneTimeSetUp]
    public void SetUp()
    {
        _sam = Sam3Model.CreateUntrained(Sam3Config.Load(SharedData.Parity("tiny", "config.json")), Vocab);
        Assert.That(_sam.HasInteractivePredictor, Is.True);
    }

    [OneTimeTearDown]
    public void TearDown() => _sam?.Dispose();

    private static T AssertNames<T>(Action call, string param, string value) where T : ArgumentException
    {
        var e = Assert.Throws<T>(() => call())!;
        Assert.That(e.ParamName, Is.EqualTo(param), e.Message);
        Assert.That(e.Message, Does.Contain(value), "the message shows the bad value");
        return e;
    }

    [Test]
    public void ImagePredictorOptionsNameTheProperty()
    {
        var t = AssertNames<ArgumentOutOfRangeException>(() => _sam.CreateImagePredictor(new ImagePredictorOptions { ConfidenceThreshold = 1.5 }),
            "options.ConfidenceThreshold", "1.5");
        Assert.That(t.ActualValue, Is.EqualTo(1.5));
        var c = AssertNames<ArgumentOutOfRangeException>(() => _sam.CreateImagePredictor(new ImagePredictorOptions { TextCacheCapacity = 0 }),
            "options.TextCacheCapacity", "got 0");
        Assert.That(c.ActualValue, Is.EqualTo(0));
        var m = AssertNames<ArgumentOutOfRangeException>(() => _sam.CreateImagePredictor(new ImagePredictorOptions { MaskChunkElements = -7 }),
            "options.MaskChunkElements", "got -7");
        Assert.That(m.ActualValue, Is.EqualTo(-7L));
    }

    [Test]
    public void InteractivePredictorOptionsNameTheProperty()
    {
        (string Param, double Value, InteractivePredictorOptions Options)[] cases =
        [
            ("options.MaskThreshold", double.NaN, new InteractivePredictorOptions { MaskThreshold = double.NaN }),
            ("options.MaxHoleArea", double.PositiveInfinity, new InteractivePredictorOptions { MaxHoleArea = double.PositiveInfinity }),
            ("options.MaxSprinkleArea", double.NegativeInfinity, new InteractivePredictorOptions { MaxSprinkleArea = double.NegativeInfinity }),
        ];
        foreach (var (param, value, options) in cases)
        {
            var e = AssertNames<ArgumentOutOfRangeException>(() => _sam.CreateInteractivePredictor(options), param, value.ToString());
            Assert.That(e.ActualValue, Is.EqualTo(value), param);
        }
    }

    [Test]
    public void ModelDeviceOptionNamesTheProperty()
    {
        var config = Sam3Config.Load(SharedData.Parity("tiny", "config.json"));
        AssertNames<ArgumentException>(() => Sam3Model.CreateUntrained(config, Vocab, new Sam3ModelOptions { Device = "toaster" }),
            "options.Device", "toaster");
        Assert.That(Assert.Catch<ArgumentException>(() => Sam3Model.CreateUntrained(config, Vocab, new Sam3ModelOptions { Device = " " }))!.ParamName,
            Is.EqualTo("options.Device"));
    }

    [Test]
    public void VideoStreamAndSessionOptionsNameTheProperty()
    {
        // the video pipeline needs the video detector (joint scores): the tiny checkpoint loaded as a video model
        using var video = Sam3VideoPredictor.Load(TinyWeights.Path, Sam3Config.Load(SharedData.Parity("tiny", "config.json")), Vocab);
        var f = AssertNames<ArgumentOutOfRangeException>(() => video.StartStream("person", new Sam3VideoStreamOptions { MemoryFrames = 0 }),
            "options.MemoryFrames", "got 0");
        Assert.That(f.ActualValue, Is.EqualTo(0));
        AssertNames<ArgumentException>(() => video.StartStream("person", new Sam3VideoStreamOptions { Device = "abacus" }), "options.Device", "abacus");
        AssertNames<ArgumentException>(() => video.StartSession([SharedData.Parity("inputs", "test_image.jpg")], new Sam3VideoSessionOptions { Device = "cpu:3" }),
            "options.Device", "cpu:3");
    }
}
