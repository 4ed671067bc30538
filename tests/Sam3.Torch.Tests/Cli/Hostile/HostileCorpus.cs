using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.IO;
using static Sam3.Torch.Tests.Cli.Hostile.HostileSandbox;

namespace Sam3.Torch.Tests.Cli.Hostile;

/// <summary>The cases of the corpus, by kind (images, prompts, thresholds, configurations, checkpoints, tokenizers, outputs, video).</summary>
public static partial class HostileCorpus
{
    public static IEnumerable<HostileCase> All() =>
        Images().Concat(Prompts()).Concat(Thresholds()).Concat(Configurations()).Concat(Checkpoints()).Concat(Tokenizers())
            .Concat(Outputs()).Concat(Video()).Concat(Accepted());

    private static HostileCase Case(string kind, string name, Func<HostileSandbox, string[]> arrange, int exit, string? fragment,
        Action<HostileSandbox, HostileResult>? verify = null) => new(kind, name, arrange, exit, fragment, verify);

    internal static string MakeFifo(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var p = Process.Start(new ProcessStartInfo("mkfifo", [path]) { UseShellExecute = false })!;
        p.WaitForExit();
        if (p.ExitCode != 0) Assert.Ignore("mkfifo is not available");
        return path;
    }

    // ================================================================ images

    private static IEnumerable<HostileCase> Images()
    {
        const string K = "Image";
        HostileCase Img(string name, Func<HostileSandbox, string> image, int exit, string? fragment) =>
            Case(K, name, s => s.Segment(image(s), "--text", "cat"), exit, fragment);

        yield return Img("Missing", s => s.P("nope.png"), 1, "not found");
        yield return Img("EmptyPath", _ => "", 2, "--image is empty");
        yield return Img("BlankPath", _ => "   ", 2, "--image is empty");
        yield return Img("Directory", s => s.Dir("pictures"), 1, "is a folder");
        yield return Img("DevZero", _ => "/dev/zero", 1, "not a regular file");
        yield return Img("DevNull", _ => "/dev/null", 1, "not a regular file");
        yield return Img("Fifo", s => MakeFifo(s.P("pipe.png")), 1, "not a regular file");
        yield return Img("EmptyFile", s => s.Write("empty.png", []), 1, "empty");
        yield return Img("TextNamedJpg", s => s.Write("notes.jpg", "these are not pixels\n"), 1, "not an image");
        yield return Img("RandomBytes", s => s.Write("noise.png", Enumerable.Range(0, 300).Select(i => (byte)(i * 37 % 251 + 1)).ToArray()), 1, "not a recognised image");
        yield return Img("PngSignatureOnly", s => s.Write("sig.png", PngBytes(8, 8)[..8]), 1, "sig.png");
        yield return Img("PngTruncatedHalf", s => { var b = PngBytes(64, 48); return s.Write("half.png", b[..(b.Length / 2)]); }, 1, "half.png");
        yield return Img("PngBadIdatCrc", s => s.Write("crc.png", CorruptIdat(PngBytes(64, 48))), 1, "crc.png");
        yield return Img("PngZeroWidth", s => s.Write("zero.png", PatchIhdr(PngBytes(8, 8), 0, 8)), 1, "zero");
        yield return Img("PngHugeDimensions", s => s.Write("huge.png", PatchIhdr(PngBytes(8, 8), 100_000, 100_000)), 1, "huge.png");
        yield return Img("JpegSoiOnly", s => s.Write("soi.jpg", [0xFF, 0xD8, 0xFF]), 1, "soi.jpg");
        yield return Img("JpegTruncatedHeader", s => { var b = JpegBytes(40, 32); return s.Write("cut.jpg", b[..40]); }, 1, "cut.jpg");
        yield return Img("Gif", s => s.Write("anim.gif", Encoding.ASCII.GetBytes("GIF89a\x01\x00\x01\x00\x00\x00\x00;")), 1, "anim.gif");
        yield return Img("BmpTruncated", s => s.Write("cut.bmp", Encoding.ASCII.GetBytes("BM").Concat(new byte[10]).ToArray()), 1, "cut.bmp");
        yield return Img("WebpGarbage", s => s.Write("bad.webp", Encoding.ASCII.GetBytes("RIFF\x10\x00\x00\x00WEBPVP8 ").Concat(new byte[4]).ToArray()), 1, "bad.webp");
        yield return Img("Tiff", s => s.Write("scan.tif", [0x49, 0x49, 0x2A, 0x00, 8, 0, 0, 0, 0, 0]), 1, "scan.tif");
        yield return Img("DanglingLink", s => s.Link("gone.png", s.P("never-there.png")), 1, "symbolic link");
        yield return Img("LinkLoop", s => { s.Link("a.png", s.P("b.png")); return s.Link("b.png", s.P("a.png")); }, 1, "b.png");
        yield return Img("CheckpointAsImage", s => s.Model, 1, "not a recognised image");
        yield return Img("PathWithNul", _ => "a\0b.png", 1, null);
        yield return Case(K, "SecondImageMissing", s => ["segment", "--checkpoint", s.Model, "--config", "tiny", "--vocab", s.Vocab,
            "--image", s.Png, "--image", s.P("nope.jpg"), "--out", s.Out, "--text", "cat"], 1, "nope.jpg");
        yield return Case(K, "SecondImageCorrupt", s => ["segment", "--checkpoint", s.Model, "--config", "tiny", "--vocab", s.Vocab,
            "--image", s.Png, "--image", s.Write("bad.png", CorruptIdat(PngBytes(30, 30))), "--out", s.Out, "--text", "cat"], 1, "bad.png");
    }

    /// <summary>Flips a byte of the first IDAT chunk's data (its CRC no longer matches).</summary>
    internal static byte[] CorruptIdat(byte[] png)
    {
        var b = (byte[])png.Clone();
        for (int i = 8; i + 8 < b.Length;)
        {
            int len = (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3];
            if (Encoding.ASCII.GetString(b, i + 4, 4) == "IDAT") { b[i + 8 + len / 2] ^= 0x5A; return b; }
            i += 12 + len;
        }
        throw new InvalidOperationException("no IDAT");
    }

    /// <summary>Writes another width/height into IHDR (CRC left as is: the header check comes first).</summary>
    internal static byte[] PatchIhdr(byte[] png, int w, int h)
    {
        var b = (byte[])png.Clone();
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(16), w);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(20), h);
        return b;
    }

    // ================================================================ prompts and coordinates

    private static IEnumerable<HostileCase> Prompts()
    {
        const string K = "Prompt";
        foreach (var (name, box, fragment) in new[]
                 {
                     ("BoxThreeNumbers", "1,2,3", "expected 4"), ("BoxFiveNumbers", "0.5,0.5,0.2,0.2,0.1", "expected 4"),
                     ("BoxLetters", "a,b,c,d", "'a' is not a number"), ("BoxBadSuffix", "0.5,0.5,0.2,0.2:maybe", "suffix"),
                     ("BoxAboveOne", "1.5,0.5,0.2,0.2", "[0,1]"), ("BoxNegative", "-0.1,0.5,0.2,0.2", "[0,1]"),
                     ("BoxZeroWidth", "0.5,0.5,0,0.2", "positive"), ("BoxNaN", "NaN,0.5,0.2,0.2", "not a number"),
                     ("BoxInfinity", "Infinity,0.5,0.2,0.2", "not a number"), ("BoxFloatOverflow", "1e40,0.5,0.2,0.2", "not a number"),
                     ("BoxEmpty", "", "expected 4"), ("BoxCommasOnly", ",,,", "is not a number"), ("BoxSemicolons", "0.5;0.5;0.2;0.2", "expected 4"),
                     ("BoxDecimalCommas", "0,5,0,5,0,2,0,2", "expected 4"), ("BoxHex", "0x1,0.5,0.2,0.2", "not a number"),
                 })
            yield return Case(K, name, s => s.Segment(s.Png, "--box", box), 2, fragment);
        foreach (var (name, box, fragment) in new[]
                 {
                     ("XyxySwapped", "30,10,10,20", "x0 < x1"), ("XyxyEmpty", "10,10,10,20", "x0 < x1"), ("XyxyFlatY", "1,20,10,20", "y0 < y1"),
                     ("XyxyLeftOfImage", "-1,0,10,10", "lies outside"), ("XyxyRightOfImage", "0,0,65,10", "lies outside"),
                     ("XyxyBelowImage", "0,0,10,49", "lies outside"), ("XyxyAboveImage", "0,-5,10,10", "lies outside"),
                     ("XyxyThreeNumbers", "1,2,3", "expected 4"), ("XyxyNaN", "nan,0,10,10", "not a number"), ("XyxyFarAway", "1e6,1e6,2e6,2e6", "lies outside"),
                 })
        {
            yield return Case(K, name + "Detector", s => s.Segment(s.Png, "--text", "cat", "--box-xyxy", box), 2, fragment);
            yield return Case(K, name + "Interactive", s => s.Segment(s.Png, "--box-xyxy", box), 2, fragment);
        }
        foreach (var (name, point, fragment) in new[]
                 {
                     ("PointOneNumber", "1", "expected x,y"), ("PointThreeNumbers", "1,2,3", "expected x,y"), ("PointLetters", "a,b", "not a number"),
                     ("PointRightOfImage", "70,10", "lies outside"), ("PointNegative", "10,-1", "lies outside"), ("PointNaN", "NaN,1", "not a number"),
                     ("PointBadSuffix", "1,1:yes", "suffix"),
                 })
            yield return Case(K, name, s => s.Segment(s.Png, "--point", point), 2, fragment);
        yield return Case(K, "PointWithText", s => s.Segment(s.Png, "--text", "cat", "--point", "1,1"), 2, "--point");
        yield return Case(K, "PointsWithTwoBoxes", s => s.Segment(s.Png, "--point", "1,1", "--box-xyxy", "0,0,10,10", "--box-xyxy", "5,5,20,20"), 2, "at most one");
        yield return Case(K, "MultimaskWithText", s => s.Segment(s.Png, "--text", "cat", "--multimask"), 2, "--multimask");
        yield return Case(K, "NegativeBoxWithoutText", s => s.Segment(s.Png, "--box-xyxy", "1,1,10,10:neg"), 2, "negative boxes");
        yield return Case(K, "NoPrompt", s => s.Segment(s.Png), 2, "give a prompt");
        yield return Case(K, "TextEmpty", s => s.Segment(s.Png, "--text", ""), 2, "--text is empty");
        yield return Case(K, "TextBlank", s => s.Segment(s.Png, "--text", "  \t "), 2, "--text is empty");
        yield return Case(K, "BoxFitsFirstImageOnly", s => ["segment", "--checkpoint", s.Model, "--config", "tiny", "--vocab", s.Vocab,
            "--image", s.Png, "--image", s.Jpg, "--out", s.Out, "--text", "cat", "--box-xyxy", "0,0,60,40"], 2, "img.jpg");
        yield return Case(K, "PointFitsFirstImageOnly", s => ["segment", "--checkpoint", s.Model, "--config", "tiny", "--vocab", s.Vocab,
            "--image", s.Png, "--image", s.Jpg, "--out", s.Out, "--point", "50,10"], 2, "img.jpg");
        yield return Case(K, "UnknownOption", s => s.Segment(s.Png, "--text", "cat", "--boxes", "1,2,3,4"), 2, "unknown option --boxes");
        yield return Case(K, "OptionWithoutValue", s => [.. s.Segment(s.Png, "--text", "cat"), "--box"], 2, "needs a value");
        yield return Case(K, "NoImage", s => ["segment", "--checkpoint", s.Model, "--config", "tiny", "--out", s.Out, "--text", "cat"], 2, "--image");
        yield return Case(K, "NoOut", s => ["segment", "--checkpoint", s.Model, "--config", "tiny", "--image", s.Png, "--text", "cat"], 2, "--out");
        yield return Case(K, "NoCheckpoint", s => ["segment", "--image", s.Png, "--out", s.Out, "--text", "cat"], 2, "--checkpoint");
        yield return Case(K, "StrayPositional", s => [.. s.Segment(s.Png, "--text", "cat"), "extra"], 2, "unexpected argument");
    }

    // ================================================================ thresholds

    private static IEnumerable<HostileCase> Thresholds()
    {
        foreach (var (name, v) in new[]
                 {
                     ("Two", "2"), ("Negative", "-0.1"), ("NaN", "NaN"), ("Infinity", "Infinity"), ("Letters", "abc"), ("Empty", ""),
                     ("Overflow", "1e309"), ("Hex", "0x10"), ("DecimalComma", "0,5"), ("MinusInfinity", "-Infinity"),
                 })
            yield return Case("Threshold", name, s => s.SegmentText("--threshold", v), 2, "--threshold");
    }
}
