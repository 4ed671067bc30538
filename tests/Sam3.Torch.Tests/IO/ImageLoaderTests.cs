using System.Buffers.Binary;
using NUnit.Framework;
using OpenCvSharp;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Tests.Processing;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using Scalar = OpenCvSharp.Scalar;

namespace Sam3.Torch.Tests.IO;

[TestFixture, Category("Fast")]
public class ImageLoaderTests
{
    private string _temp = "";

    [OneTimeSetUp]
    public void CreateTempFolder()
    {
        _temp = Path.Combine(Path.GetTempPath(), "sam3-imageloader-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_temp);
    }

    [OneTimeTearDown]
    public void DeleteTempFolder()
    {
        if (Directory.Exists(_temp)) Directory.Delete(_temp, recursive: true);
    }

    private static string TestImage => SharedData.Parity("inputs", "test_image.jpg");     // 1280x720
    private static string Groceries => SharedData.Parity("inputs", "groceries.jpg");      // 800x534

    private string TempFile(string name, byte[] content)
    {
        string path = Path.Combine(_temp, name);
        File.WriteAllBytes(path, content);
        return path;
    }

    /// <summary>Number of differing values and the largest absolute difference between two uint8 tensors of one shape.</summary>
    internal static (long Count, int Max) CompareUint8(torch.Tensor actual, torch.Tensor expected)
    {
        Assert.That(actual.shape, Is.EqualTo(expected.shape), "shape");
        using var scope = torch.NewDisposeScope();
        var diff = (actual.to(torch.ScalarType.Int16) - expected.to(torch.ScalarType.Int16)).abs();
        return (diff.count_nonzero().item<long>(), diff.numel() == 0 ? 0 : diff.max().item<short>());
    }

    private static void AssertSamePixels(RgbImage actual, RgbImage expected, string what)
    {
        Assert.That((actual.Width, actual.Height), Is.EqualTo((expected.Width, expected.Height)), what + ": size");
        int differing = 0;
        for (int i = 0; i < actual.Data.Length; i++) if (actual.Data[i] != expected.Data[i]) differing++;
        Assert.That(differing, Is.Zero, what + ": differing values");
    }

    // ---- parity with PIL ----------------------------------------------------------------------------------------

    public static IEnumerable<string> ScenariosWithRgb => ["a_image_text", "b_image_batch_text"];

    [TestCaseSource(nameof(ScenariosWithRgb))]
    public void DecodedRgbEqualsPilDecodeOfTheFixture(string name)
    {
        var scenario = ImageScenario.Load(name);
        using var fixture = SafetensorsFile.Open(scenario.TensorsPath);
        int compared = 0;
        for (int i = 0; i < scenario.ImagePaths.Count; i++)
        {
            string? tensorName = scenario.RgbTensorNames[i];
            if (tensorName == null) continue;
            using var scope = torch.NewDisposeScope();
            var image = ImageLoader.Load(scenario.ImagePaths[i]);
            var expected = fixture.Load(tensorName);
            var (count, max) = CompareUint8(image.ToTensor(ImageTensorLayout.Hwc), expected);
            TestContext.Out.WriteLine($"{name} {Path.GetFileName(scenario.ImagePaths[i])} vs {tensorName} [{string.Join(",", expected.shape)}]: " +
                                      $"{count} of {expected.numel()} values differ, max |diff| {max}");
            Assert.That(count, Is.Zero, $"{tensorName}: decoded RGB must equal PIL's decode exactly");
            compared++;
        }
        Assert.That(compared, Is.EqualTo(scenario.ImagePaths.Count), "every image of the scenario has a decoded-RGB tensor");
    }

    [Test]
    public void BytesStreamAndPathGiveTheSamePixels()
    {
        var fromPath = ImageLoader.Load(Groceries);
        byte[] bytes = File.ReadAllBytes(Groceries);
        AssertSamePixels(ImageLoader.Decode(bytes), fromPath, "byte[]");
        using var stream = new MemoryStream(bytes);
        AssertSamePixels(ImageLoader.Decode(stream), fromPath, "stream");
        Assert.That((fromPath.Width, fromPath.Height), Is.EqualTo((800, 534)));
    }

    [Test]
    public void ToTensorLayoutsHoldTheSamePixels()
    {
        var image = ImageLoader.FromRgbBytes(Enumerable.Range(0, 2 * 3 * 3).Select(i => (byte)(i * 7)).ToArray(), width: 3, height: 2);
        using var chw = image.ToTensor();
        using var hwc = image.ToTensor(ImageTensorLayout.Hwc);
        Assert.That(chw.shape, Is.EqualTo(new long[] { 3, 2, 3 }));
        Assert.That(hwc.shape, Is.EqualTo(new long[] { 2, 3, 3 }));
        Assert.That(chw.dtype, Is.EqualTo(torch.ScalarType.Byte));
        for (int y = 0; y < 2; y++)
            for (int x = 0; x < 3; x++)
                for (int c = 0; c < 3; c++)
                {
                    byte expected = (byte)(((y * 3 + x) * 3 + c) * 7);
                    Assert.That(chw[c, y, x].item<byte>(), Is.EqualTo(expected));
                    Assert.That(hwc[y, x, c].item<byte>(), Is.EqualTo(expected));
                }
        Assert.That(image[2, 1], Is.EqualTo(((byte)(15 * 7), (byte)(16 * 7), (byte)(17 * 7))));
    }

    // ---- other formats and in-memory sources --------------------------------------------------------------------

    [TestCase(".png")]
    [TestCase(".bmp")]
    [TestCase(".webp")]
    public void LosslessFormatsRoundTripExactly(string extension)
    {
        var original = ImageLoader.Load(Groceries);
        using var mat = original.ToMat();
        int[] prms = extension == ".webp" ? [(int)ImwriteFlags.WebPQuality, 101] : []; // quality > 100 = lossless WebP
        Cv2.ImEncode(extension, mat, out byte[] encoded, prms);
        var expectedFormat = extension switch { ".png" => ImageFileFormat.Png, ".bmp" => ImageFileFormat.Bmp, _ => ImageFileFormat.WebP };
        var header = ImageHeader.Inspect(encoded, "encoded");
        Assert.That(header, Is.EqualTo(new ImageHeaderInfo(expectedFormat, 800, 534)));
        AssertSamePixels(ImageLoader.Load(TempFile("roundtrip" + extension, encoded)), original, extension);
    }

    [Test]
    public void JpegVariantsPassTheStructuralCheck()
    {
        // Progressive (several scans), restart markers, grayscale, and bytes after the end-of-image marker are valid.
        using var full = ImageLoader.Load(Groceries).ToMat();
        using var crop = new Mat(full, new Rect(10, 20, 120, 90));
        using var gray = new Mat();
        Cv2.CvtColor(crop, gray, ColorConversionCodes.BGR2GRAY);
        Cv2.ImEncode(".jpg", crop, out byte[] progressive, [(int)ImwriteFlags.JpegProgressive, 1]);
        Cv2.ImEncode(".jpg", crop, out byte[] restarts, [(int)ImwriteFlags.JpegRstInterval, 2]);
        Cv2.ImEncode(".jpg", gray, out byte[] grayscale);
        Cv2.ImEncode(".jpg", crop, out byte[] plain);
        byte[] trailing = [.. plain, .. "trailing bytes"u8];
        foreach (var (what, bytes) in new[] { ("progressive", progressive), ("restart markers", restarts), ("grayscale", grayscale), ("trailing data", trailing) })
        {
            var image = ImageLoader.Decode(bytes, sourceName: what);
            Assert.That((image.Width, image.Height), Is.EqualTo((120, 90)), what);
        }
        var g = ImageLoader.Decode(grayscale);
        Assert.That(Enumerable.Range(0, 120 * 90).All(i => g.Data[3 * i] == g.Data[3 * i + 1] && g.Data[3 * i] == g.Data[3 * i + 2]), Is.True,
            "grayscale JPEG decodes to R = G = B");
    }

    [Test]
    public void GrayscaleIsReplicatedAndAlphaDropped()
    {
        using var gray = new Mat(2, 2, MatType.CV_8UC1, new Scalar(77));
        Cv2.ImEncode(".png", gray, out byte[] grayPng);
        var g = ImageLoader.Decode(grayPng);
        Assert.That(g.Data, Is.All.EqualTo((byte)77));

        using var bgra = new Mat(2, 2, MatType.CV_8UC4, new Scalar(10, 20, 30, 0)); // B, G, R, fully transparent
        Cv2.ImEncode(".png", bgra, out byte[] rgbaPng);
        Assert.That(ImageLoader.Decode(rgbaPng)[1, 1], Is.EqualTo(((byte)30, (byte)20, (byte)10)));
        Assert.That(ImageLoader.FromMat(bgra)[0, 1], Is.EqualTo(((byte)30, (byte)20, (byte)10)));
        Assert.That(ImageLoader.FromMat(gray)[1, 0], Is.EqualTo(((byte)77, (byte)77, (byte)77)));
    }

    [Test]
    public void MatIsReadAsBgr()
    {
        using var mat = new Mat(1, 2, MatType.CV_8UC3, new Scalar(10, 20, 30)); // B=10, G=20, R=30
        var image = ImageLoader.FromMat(mat);
        Assert.That(image[0, 0], Is.EqualTo(((byte)30, (byte)20, (byte)10)));
        Assert.That((image.Width, image.Height), Is.EqualTo((2, 1)));
    }

    [Test]
    public void MatRoundTripAndRegionOfInterest()
    {
        var original = ImageLoader.Load(Groceries);
        using var mat = original.ToMat();
        AssertSamePixels(ImageLoader.FromMat(mat), original, "Mat round trip");

        using var roi = new Mat(mat, new Rect(100, 50, 30, 20)); // not contiguous
        Assert.That(roi.IsContinuous(), Is.False);
        var crop = ImageLoader.FromMat(roi);
        Assert.That((crop.Width, crop.Height), Is.EqualTo((30, 20)));
        for (int y = 0; y < 20; y++)
            for (int x = 0; x < 30; x++)
                Assert.That(crop[x, y], Is.EqualTo(original[100 + x, 50 + y]));
    }

    [Test]
    public void ImageSharpImageRoundTripsExactly()
    {
        var decoded = ImageLoader.Load(TestImage);
        using var sharp = SixLabors.ImageSharp.Image.LoadPixelData<Rgb24>(decoded.Data, decoded.Width, decoded.Height);
        var back = ImageLoader.FromImageSharp(sharp);
        AssertSamePixels(back, decoded, "Image<Rgb24>");

        using var viaRgbImage = decoded.ToImageSharp();
        Assert.That(viaRgbImage[5, 7], Is.EqualTo(new Rgb24(decoded[5, 7].R, decoded[5, 7].G, decoded[5, 7].B)));

        using var rgba = new Image<Rgba32>(3, 2, new Rgba32(1, 2, 3, 4));
        var fromRgba = ImageLoader.FromImageSharp((SixLabors.ImageSharp.Image)rgba);
        Assert.That(fromRgba[2, 1], Is.EqualTo(((byte)1, (byte)2, (byte)3)));
    }

    [Test]
    public void RawBytesAreCopied()
    {
        byte[] raw = [1, 2, 3, 4, 5, 6];
        var image = ImageLoader.FromRgbBytes(raw, 2, 1);
        raw[0] = 99;
        Assert.That(image[0, 0], Is.EqualTo(((byte)1, (byte)2, (byte)3)));
        Assert.That(image[1, 0], Is.EqualTo(((byte)4, (byte)5, (byte)6)));
    }

    // ---- EXIF orientation -----------------------------------------------------------------------------------------

    /// <summary>The JPEG with an APP1 Exif segment (orientation tag = <paramref name="orientation"/>) inserted after SOI.</summary>
    private static byte[] WithExifOrientation(byte[] jpeg, ushort orientation)
    {
        var tiff = new byte[8 + 2 + 12 + 4];
        "II*\0"u8.CopyTo(tiff);
        BinaryPrimitives.WriteUInt32LittleEndian(tiff.AsSpan(4), 8);       // first IFD offset
        BinaryPrimitives.WriteUInt16LittleEndian(tiff.AsSpan(8), 1);       // one entry
        BinaryPrimitives.WriteUInt16LittleEndian(tiff.AsSpan(10), 0x0112); // Orientation
        BinaryPrimitives.WriteUInt16LittleEndian(tiff.AsSpan(12), 3);      // SHORT
        BinaryPrimitives.WriteUInt32LittleEndian(tiff.AsSpan(14), 1);      // count
        BinaryPrimitives.WriteUInt16LittleEndian(tiff.AsSpan(18), orientation);
        byte[] payload = [.. "Exif\0\0"u8, .. tiff];
        var segment = new byte[4 + payload.Length];
        segment[0] = 0xFF; segment[1] = 0xE1;
        BinaryPrimitives.WriteUInt16BigEndian(segment.AsSpan(2), (ushort)(2 + payload.Length));
        payload.CopyTo(segment, 4);
        return [.. jpeg.AsSpan(0, 2), .. segment, .. jpeg.AsSpan(2)];
    }

    [Test]
    public void ExifOrientationIgnoredByDefaultAndAppliedOnRequest()
    {
        byte[] plain = File.ReadAllBytes(Groceries);
        var stored = ImageLoader.Decode(plain);
        byte[] rotated = WithExifOrientation(plain, 6); // 6 = display rotated 90° clockwise

        AssertSamePixels(ImageLoader.Decode(rotated), stored, "orientation ignored (PIL behaviour)");

        var oriented = ImageLoader.Decode(rotated, new ImageLoadOptions { ApplyExifOrientation = true });
        Assert.That((oriented.Width, oriented.Height), Is.EqualTo((stored.Height, stored.Width)));
        int h = stored.Height;
        int mismatches = 0;
        for (int y = 0; y < oriented.Height; y++)
            for (int x = 0; x < oriented.Width; x++)
                if (oriented[x, y] != stored[y, h - 1 - x]) mismatches++; // displayed(x, y) = stored(col y, row H-1-x)
        Assert.That(mismatches, Is.Zero);
    }

    // ---- errors ---------------------------------------------------------------------------------------------------

    private static Sam3ImageException AssertImageError(Action call, params string[] fragments)
    {
        var e = Assert.Throws<Sam3ImageException>(call)!;
        foreach (var f in fragments) Assert.That(e.Message, Does.Contain(f).IgnoreCase, e.Message);
        TestContext.Out.WriteLine(e.Message);
        return e;
    }

    [Test]
    public void MissingFileAndDirectory()
    {
        string missing = Path.Combine(_temp, "nope.jpg");
        AssertImageError(() => ImageLoader.Load(missing), "not found", missing);
        AssertImageError(() => ImageLoader.Load(_temp), "directory");
        AssertImageError(() => ImageLoader.Load(""), "empty");
    }

    [Test]
    public void EmptyFile() => AssertImageError(() => ImageLoader.Load(TempFile("empty.jpg", [])), "empty", "0 bytes");

    [Test]
    public void TextFileRenamedToJpg()
    {
        string path = TempFile("notes.jpg", "Hello, this is not a picture.\nSecond line.\n"u8.ToArray());
        AssertImageError(() => ImageLoader.Load(path), "not an image", "text", "Hello", "JPEG, PNG, BMP, WebP", path);
    }

    [Test]
    public void BinaryGarbage() =>
        AssertImageError(() => ImageLoader.Decode([0x00, 0x01, 0x02, 0x03, 0xFE, 0xFF, 0x10, 0x80, 0x11]), "not a recognised image", "00 01 02 03");

    [TestCase(0.5)]
    [TestCase(0.98)]
    public void TruncatedJpeg(double keep)
    {
        byte[] full = File.ReadAllBytes(Groceries);
        string path = TempFile($"truncated{keep}.jpg", full[..(int)(full.Length * keep)]);
        AssertImageError(() => ImageLoader.Load(path), "truncated JPEG");
    }

    [Test]
    public void JpegCutInsideTheHeader()
    {
        byte[] full = File.ReadAllBytes(Groceries);
        AssertImageError(() => ImageLoader.Decode(full[..40]), "truncated JPEG");
        AssertImageError(() => ImageLoader.Decode(full[..3]), "truncated JPEG");
    }

    [Test]
    public void JpegWithGarbageWhereAMarkerBelongs()
    {
        byte[] bad = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00, 0x12, 0x34, 0x56];
        AssertImageError(() => ImageLoader.Decode(bad), "corrupt JPEG");
    }

    [Test]
    public void ZeroSizeJpeg()
    {
        byte[] jpeg = File.ReadAllBytes(Groceries);
        int sof = FindJpegFrameHeader(jpeg);
        jpeg[sof + 7] = 0; jpeg[sof + 8] = 0; // width = 0
        AssertImageError(() => ImageLoader.Decode(jpeg), "zero-size", "0x534");
    }

    /// <summary>Offset of the 0xFF of the first SOFn marker (walking segments, so thumbnails are skipped).</summary>
    private static int FindJpegFrameHeader(byte[] d)
    {
        int pos = 2;
        while (true)
        {
            byte m = d[pos + 1];
            if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) return pos;
            pos += 2 + BinaryPrimitives.ReadUInt16BigEndian(d.AsSpan(pos + 2));
        }
    }

    private static byte[] SmallPng()
    {
        using var mat = new Mat(4, 5, MatType.CV_8UC3, new Scalar(1, 2, 3));
        Cv2.ImEncode(".png", mat, out byte[] png);
        return png;
    }

    [Test]
    public void PngSignatureOnly()
    {
        string path = TempFile("header-only.png", SmallPng()[..8]);
        AssertImageError(() => ImageLoader.Load(path), "truncated PNG");
    }

    [Test]
    public void TruncatedPng()
    {
        byte[] png = SmallPng();
        AssertImageError(() => ImageLoader.Decode(png[..(png.Length - 6)]), "truncated PNG");
    }

    [Test]
    public void ZeroSizePng()
    {
        byte[] png = SmallPng();
        BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(16), 0); // IHDR width
        AssertImageError(() => ImageLoader.Decode(png), "zero-size", "0x4");
    }

    [Test]
    public void HugeDeclaredSizeIsRejectedBeforeDecoding()
    {
        byte[] png = SmallPng();
        BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(16), 100_000);
        BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(20), 100_000);
        AssertImageError(() => ImageLoader.Decode(png), "100000x100000", "16384", "MaxSide");
    }

    [Test]
    public void ConfigurableSizeLimits()
    {
        byte[] jpeg = File.ReadAllBytes(TestImage); // 1280x720
        AssertImageError(() => ImageLoader.Decode(jpeg, new ImageLoadOptions { MaxSide = 1000 }), "1280x720", "1000", "MaxSide");
        AssertImageError(() => ImageLoader.Decode(jpeg, new ImageLoadOptions { MaxPixels = 1280 * 720 - 1 }), "921600", "MaxPixels");
        Assert.That(ImageLoader.Decode(jpeg, new ImageLoadOptions { MaxSide = 1280, MaxPixels = 1280 * 720 }).Width, Is.EqualTo(1280));
        AssertImageError(() => ImageLoader.FromRgbBytes(new byte[3 * 20], 20, 1, new ImageLoadOptions { MaxSide = 10 }), "MaxSide");
        using var mat = new Mat(5, 20, MatType.CV_8UC3);
        AssertImageError(() => ImageLoader.FromMat(mat, new ImageLoadOptions { MaxPixels = 99 }), "MaxPixels");
    }

    [Test]
    public void TruncatedBmpAndWebP()
    {
        using var full = ImageLoader.Load(Groceries).ToMat();
        using var mat = new Mat(full, new Rect(0, 0, 200, 150));
        Cv2.ImEncode(".bmp", mat, out byte[] bmp);
        AssertImageError(() => ImageLoader.Decode(bmp[..(bmp.Length / 2)]), "truncated BMP");
        Cv2.ImEncode(".webp", mat, out byte[] webp);
        AssertImageError(() => ImageLoader.Decode(webp[..(webp.Length / 2)]), "truncated WebP");
    }

    [Test]
    public void UnsupportedFormatsAreNamed()
    {
        using var image = new Image<Rgb24>(4, 4);
        using (var gif = new MemoryStream())
        {
            image.SaveAsGif(gif);
            string path = TempFile("anim.gif", gif.ToArray());
            AssertImageError(() => ImageLoader.Load(path), "GIF images are not supported", "JPEG, PNG, BMP, WebP");
        }
        using (var tiff = new MemoryStream())
        {
            image.SaveAsTiff(tiff);
            AssertImageError(() => ImageLoader.Decode(tiff.ToArray()), "TIFF images are not supported");
        }
    }

    [Test]
    public void BadInMemoryInputs()
    {
        AssertImageError(() => ImageLoader.FromRgbBytes(new byte[5], 2, 1), "6 bytes", "got 5");
        AssertImageError(() => ImageLoader.FromRgbBytes([], 0, 1), "zero-size");
        using (var empty = new Mat())
            AssertImageError(() => ImageLoader.FromMat(empty), "zero-size");
        using (var floats = new Mat(2, 2, MatType.CV_32FC3))
            AssertImageError(() => ImageLoader.FromMat(floats), "8-bit");
        using (var twoChannels = new Mat(2, 2, MatType.CV_8UC2))
            AssertImageError(() => ImageLoader.FromMat(twoChannels), "channels");
        AssertImageError(() => _ = new RgbImage(2, 2, new byte[11]), "12 bytes");
    }
}
