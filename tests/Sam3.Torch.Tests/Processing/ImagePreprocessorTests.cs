using Sam3.Torch.Tests.Infrastructure;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Processing;
using Sam3.Torch.Tests.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Processing;

[TestFixture, Category("Fast")]
public class ImagePreprocessorTests
{
    private const double InputTolerance = 1e-6;

    public static IEnumerable<string> Scenarios => ImageScenario.Names;

    private static ImagePreprocessor TinyPreprocessor(ImageScenario scenario)
    {
        Assert.That(Sam3Config.Tiny.ImageSize, Is.EqualTo(scenario.Resolution), "fixture resolution = tiny config image size");
        return new ImagePreprocessor(Sam3Config.Tiny);
    }

    [TestCaseSource(nameof(Scenarios))]
    public void MatchesTheFixture(string name)
    {
        var scenario = ImageScenario.Load(name);
        var preprocessor = TinyPreprocessor(scenario);
        using var fixture = SafetensorsFile.Open(scenario.TensorsPath);
        using var scope = NewDisposeScope();
        var images = scenario.ImagePaths.Select(p => ImageLoader.Load(p)).ToList();
        using var result = preprocessor.PreprocessWithIntermediates(images);
        int s = scenario.Resolution;
        Assert.That(result.Input.shape, Is.EqualTo(new long[] { images.Count, 3, s, s }));
        Assert.That(result.Input.dtype, Is.EqualTo(ScalarType.Float32));
        Assert.That(result.ResizedUint8.shape, Is.EqualTo(new long[] { images.Count, 3, s, s }));
        Assert.That(result.OriginalSizes, Is.EqualTo(images.Select(i => (i.Height, i.Width)).ToList()));

        if (scenario.ResizedTensorName is { } resizedName)
        {
            var expected = fixture.Load(resizedName);
            var actual = images.Count == 1 && expected.dim() == 3 ? result.ResizedUint8[0] : result.ResizedUint8;
            var (count, max) = ImageLoaderTests.CompareUint8(actual, expected);
            TestContext.Out.WriteLine($"{name} {resizedName} [{string.Join(",", expected.shape)}]: {count} of {expected.numel()} values differ, max |diff| {max}");
            Assert.That(count, Is.Zero, "resized uint8 must equal the reference byte for byte");
        }

        Assert.That(scenario.InputTensorName, Is.Not.Null, "every image scenario stores image_input");
        var expectedInput = fixture.Load(scenario.InputTensorName!);
        Assert.That(result.Input.shape, Is.EqualTo(expectedInput.shape));
        double maxAbs = (result.Input - expectedInput).abs().max().item<float>();
        long nonEqual = result.Input.not_equal(expectedInput).count_nonzero().item<long>();
        TestContext.Out.WriteLine($"{name} image_input [{string.Join(",", expectedInput.shape)}]: max |diff| {maxAbs:G3}, {nonEqual} of {expectedInput.numel()} values not bit-equal");
        Assert.That(maxAbs, Is.LessThanOrEqualTo(InputTolerance));
    }

    [Test]
    public void TensorAndBatchEntryPointsAgree()
    {
        var scenario = ImageScenario.Load("b_image_batch_text");
        var preprocessor = TinyPreprocessor(scenario);
        using var scope = NewDisposeScope();
        var images = scenario.ImagePaths.Select(p => ImageLoader.Load(p)).ToList();
        var batch = preprocessor.Preprocess(images);
        for (int i = 0; i < images.Count; i++)
        {
            var single = preprocessor.Preprocess(images[i]);
            var fromTensor = preprocessor.Preprocess(images[i].ToTensor());
            var fromHwcView = preprocessor.Preprocess(images[i].ToTensor(ImageTensorLayout.Hwc).permute(2, 0, 1)); // strided input
            Assert.That(single.shape, Is.EqualTo(new long[] { 1, 3, 336, 336 }));
            Assert.That(single.equal(batch[i].unsqueeze(0)).all().item<bool>(), Is.True, $"image {i}: single vs batch");
            Assert.That(fromTensor.equal(single).all().item<bool>(), Is.True, $"image {i}: tensor vs RgbImage");
            Assert.That(fromHwcView.equal(single).all().item<bool>(), Is.True, $"image {i}: permuted HWC view vs RgbImage");
        }
    }

    [Test]
    public void ConstantImageStaysConstant()
    {
        // A constant image resizes to the same constant (the filter weights sum to one); the normalised value is
        // (v/255 - mean)/std, computed here in double.
        var preprocessor = new ImagePreprocessor(16, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        byte[] rgb = [200, 13, 255];
        var data = new byte[37 * 23 * 3];
        for (int i = 0; i < data.Length; i++) data[i] = rgb[i % 3];
        var image = ImageLoader.FromRgbBytes(data, 37, 23);
        using var result = preprocessor.PreprocessWithIntermediates([image]);
        using var scope = NewDisposeScope();
        for (int c = 0; c < 3; c++)
        {
            Assert.That(result.ResizedUint8[0, c].eq(rgb[c]).all().item<bool>(), Is.True, $"channel {c} resized");
            double expected = (rgb[c] / 255.0 - preprocessor.Mean[c]) / preprocessor.Std[c];
            double err = (result.Input[0, c] - expected).abs().max().item<float>();
            Assert.That(err, Is.LessThanOrEqualTo(1e-6), $"channel {c} normalised");
        }
    }

    [Test]
    public void ImageAlreadyAtTheTargetSizeIsUnchanged()
    {
        // Scale 1: the bilinear (triangle) filter has weight 1 on the source pixel and 0 on its neighbours.
        var preprocessor = new ImagePreprocessor(Sam3Config.Tiny);
        var generator = new Random(1234);
        var data = new byte[336 * 336 * 3];
        generator.NextBytes(data);
        var image = ImageLoader.FromRgbBytes(data, 336, 336);
        using var scope = NewDisposeScope();
        var (count, max) = ImageLoaderTests.CompareUint8(preprocessor.ResizeUint8(image), image.ToTensor());
        Assert.That((count, max), Is.EqualTo((0L, 0)));
    }

    [Test]
    public void NormalizeUsesTheConfiguredMeanAndStd()
    {
        var preprocessor = new ImagePreprocessor(Sam3Config.Full);
        Assert.That(preprocessor.ImageSize, Is.EqualTo(1008));
        using var scope = NewDisposeScope();
        var u = tensor(new byte[] { 0, 255, 51, 128, 1, 254 }, new long[] { 3, 1, 2 });
        var x = preprocessor.Normalize(u);
        float[] got = x.data<float>().ToArray();
        double[] expected = [-1, 1, 51 / 127.5 - 1, 128 / 127.5 - 1, 1 / 127.5 - 1, 254 / 127.5 - 1];
        for (int i = 0; i < got.Length; i++) Assert.That(got[i], Is.EqualTo(expected[i]).Within(1e-6), $"value {i}");
    }

    [Test]
    public void RejectsBadInputs()
    {
        var preprocessor = new ImagePreprocessor(Sam3Config.Tiny);
        using var scope = NewDisposeScope();
        Assert.Throws<Sam3ImageException>(() => preprocessor.Preprocess(zeros(3, 4, 4)));
        Assert.Throws<Sam3ImageException>(() => preprocessor.Preprocess(zeros(new long[] { 4, 4, 3 }, ScalarType.Byte)));
        Assert.Throws<Sam3ImageException>(() => preprocessor.Preprocess(zeros(new long[] { 3, 0, 4 }, ScalarType.Byte)));
        Assert.Throws<Sam3ImageException>(() => preprocessor.Preprocess(Array.Empty<RgbImage>()));
        Assert.Throws<Sam3ConfigException>(() => _ = new ImagePreprocessor(336, [0.5, 0.5], [0.5, 0.5, 0.5]));
        Assert.Throws<Sam3ConfigException>(() => _ = new ImagePreprocessor(336, [0.5, 0.5, 0.5], [0.5, 0, 0.5]));
        Assert.Throws<Sam3ConfigException>(() => _ = new ImagePreprocessor(0, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]));
    }

    [Test]
    public void NoTensorsLeakAcrossCalls()
    {
        var preprocessor = new ImagePreprocessor(32, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]);
        var image = ImageLoader.FromRgbBytes(new byte[40 * 30 * 3], 40, 30);
        void Cycle()
        {
            using (var x = preprocessor.Preprocess(image)) { }
            using (var r = preprocessor.PreprocessWithIntermediates([image, image])) { }
            using (var t = image.ToTensor()) { }
        }
        Cycle(); // warm-up
        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 200; i++) Cycle();
        long after = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Assert.That(after, Is.EqualTo(before), "live tensors after 200 calls");
    }

    [Test]
    public void CudaGivesTheSameInput()
    {
        if (!cuda.is_available()) TestPolicy.GpuOnly("CUDA is not available on this machine");
        var scenario = ImageScenario.Load("a_image_text");
        var preprocessor = TinyPreprocessor(scenario);
        using var scope = NewDisposeScope();
        var image = ImageLoader.Load(scenario.ImagePaths[0]);
        var cpu = preprocessor.Preprocess(image);
        var gpu = preprocessor.Preprocess(image, CUDA);
        Assert.That(gpu.device_type, Is.EqualTo(DeviceType.CUDA));
        Assert.That(gpu.cpu().equal(cpu).all().item<bool>(), Is.True);
    }
}
