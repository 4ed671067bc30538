using System.Diagnostics;
using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.IO;
using static Sam3.Torch.Tests.Cli.Hostile.HostileSandbox;

namespace Sam3.Torch.Tests.Cli.Hostile;

public static partial class HostileCorpus
{
    internal static void HardLink(string target, string link)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(link)!);
        using var p = Process.Start(new ProcessStartInfo("ln", [target, link]) { UseShellExecute = false })!;
        p.WaitForExit();
        if (p.ExitCode != 0) Assert.Ignore("ln is not available");
    }

    // ================================================================ output paths

    private static IEnumerable<HostileCase> Outputs()
    {
        const string K = "Output";
        string[] Seg(HostileSandbox s, string image, string outDir, params string[] more) =>
            ["segment", "--checkpoint", s.Model, "--config", "tiny", "--vocab", s.Vocab, "--image", image, "--out", outDir, "--text", "cat", .. more];

        yield return Case(K, "OutEmpty", s => Seg(s, s.Png, ""), 2, "--out is empty");
        yield return Case(K, "OutIsAFile", s => Seg(s, s.Png, s.Write("results.txt", "keep me")), 2, "is a file");
        yield return Case(K, "OutDevNull", s => Seg(s, s.Png, "/dev/null"), 2, "not a folder");
        yield return Case(K, "OutUnderAFile", s => { s.Write("plain", "x"); return Seg(s, s.Png, s.P("plain", "sub")); }, 1, "cannot create the output folder");
        yield return Case(K, "OutDanglingLink", s => Seg(s, s.Png, s.Link("outlink", s.P("missing-dir"))), 2, "symbolic link");
        yield return Case(K, "OverlayExists", s => { s.Write("out/img.png", "old overlay"); return Seg(s, s.Png, s.Out); }, 2, "exists");
        yield return Case(K, "JsonExists", s => { s.Write("out/img.json", "{}"); return Seg(s, s.Png, s.Out); }, 2, "exists");
        yield return Case(K, "MaskExists", s => { s.Write("out/img_mask0.png", "old"); return Seg(s, s.Png, s.Out, "--masks"); }, 2, "exists");
        yield return Case(K, "OverlayNameIsAFolder", s => { s.Dir("out", "img.png"); return Seg(s, s.Png, s.Out); }, 2, "is a folder");
        yield return Case(K, "JsonNameIsAFolderForce", s => { s.Dir("out", "img.json"); return Seg(s, s.Png, s.Out, "--force"); }, 2, "is a folder");
        yield return Case(K, "InputInOutFolder", s => { var img = s.Write("out/pic.png", PngBytes(20, 20)); return Seg(s, img, s.Out, "--force"); }, 2, "would overwrite an input");
        yield return Case(K, "InputThroughLinkedFolder", s =>
        {
            var img = s.Write("data/pic.png", PngBytes(20, 20));
            return Seg(s, img, s.Link("view", s.P("data")), "--force");
        }, 2, "would overwrite an input");
        yield return Case(K, "InputThroughDotDot", s =>
        {
            var img = s.Write("data/pic.png", PngBytes(20, 20));
            s.Dir("data", "sub");
            return Seg(s, img, s.P("data", "sub", ".."), "--force");
        }, 2, "would overwrite an input");
        yield return Case(K, "InputThroughLinkThenDotDot", s =>
        {
            var img = s.Write("data/deep/pic.png", PngBytes(20, 20));
            s.Dir("elsewhere", "x");
            s.Link("data/deep/away", s.P("elsewhere", "x"));
            // .NET (like a shell's cd) takes away/.. as data/deep, where the input is; the kernel would go to elsewhere/
            return Seg(s, img, s.P("data", "deep", "away", ".."), "--force");
        }, 2, "would overwrite an input");
        yield return Case(K, "InputHardLinkedAsOutput", s =>
        {
            var img = s.Write("data/pic.png", PngBytes(20, 20));
            HardLink(img, s.P("out", "pic.png"));
            return Seg(s, img, s.Out, "--force");
        }, 2, "would overwrite an input");
        yield return Case(K, "OutputIsLinkToInput", s =>
        {
            var img = s.Write("data/pic.png", PngBytes(20, 20));
            s.Link("out/pic.png", img);
            return Seg(s, img, s.Out, "--force");
        }, 2, "would overwrite an input");

        // convert
        yield return Case(K, "ConvertOutIsIn", s => ["convert", s.Model, s.Model, "--force"], 2, "input");
        yield return Case(K, "ConvertOutThroughLinkedFolder", s => ["convert", s.Model, Path.Combine(s.Link("shared-link", s.Shared), "tiny.safetensors"), "--force"], 2, "input");
        yield return Case(K, "ConvertOutThroughDotDot", s => ["convert", s.Model, Path.Combine(s.Shared, "..", Path.GetFileName(s.Shared), "tiny.safetensors"), "--force"], 2, "input");
        yield return Case(K, "ConvertOutHardLink", s =>
        {
            var copy = s.Write("in.safetensors", File.ReadAllBytes(s.Model));
            HardLink(copy, s.P("hard.safetensors"));
            return ["convert", copy, s.P("hard.safetensors"), "--force"];
        }, 2, "input");
        yield return Case(K, "ConvertOutSymlinkToIn", s => ["convert", s.Model, s.Link("ln.safetensors", s.Model), "--force"], 2, "input");
        yield return Case(K, "ConvertOutIsAFolder", s => ["convert", s.Model, s.Dir("x.safetensors")], 1, "is a folder");
        yield return Case(K, "ConvertOutEmpty", s => ["convert", s.Model, ""], 2, "OUT is empty");
        yield return Case(K, "ConvertOutNotSafetensors", s => ["convert", s.Model, s.P("x.pt")], 2, ".safetensors");
        yield return Case(K, "ConvertOutExists", s => ["convert", s.Model, s.Write("old.safetensors", "previous")], 1, "already exists");
        yield return Case(K, "ConvertOutUnderAFile", s => { s.Write("plain", "x"); return ["convert", s.Model, s.P("plain", "y.safetensors")]; }, 1, "not a folder");
        yield return Case(K, "ConvertInMissing", s => ["convert", s.P("nope.pt"), s.P("y.safetensors")], 1, "not found");
        yield return Case(K, "ConvertInFolder", s => ["convert", s.Dir("weights"), s.P("y.safetensors")], 1, "is a folder");
        yield return Case(K, "ConvertInDevZero", s => ["convert", "/dev/zero", s.P("y.safetensors")], 1, "not a regular file");
        yield return Case(K, "ConvertInEmptyPath", s => ["convert", "", s.P("y.safetensors")], 2, "IN is empty");
        yield return Case(K, "ConvertNoArguments", _ => ["convert"], 2, "missing IN and OUT");

        // label
        string[] Label(HostileSandbox s, string outPath, params string[] more) =>
            ["label", "--checkpoint", s.Model, "--config", "tiny", "--images", Path.GetDirectoryName(s.Write("imgs/a.png", PngBytes(16, 16)))!,
             "--prompts", "cat", "--out", outPath, .. more];
        yield return Case(K, "LabelOutEmpty", s => Label(s, ""), 2, "--out is empty");
        yield return Case(K, "LabelOutIsAFolder", s => Label(s, s.Dir("results.json")), 1, "is a folder");
        yield return Case(K, "LabelOutIsTheCheckpoint", s => Label(s, s.Model, "--force"), 2, "would overwrite an input");
        yield return Case(K, "LabelOutUnderAFile", s => { s.Write("plain", "x"); return Label(s, s.P("plain", "r.json")); }, 1, "not a folder");
    }

    // ================================================================ video and frame folders (track / video)

    private static IEnumerable<HostileCase> Video()
    {
        const string K = "Video";
        foreach (var command in new[] { "track", "video" })
        {
            string[] Args(HostileSandbox s, string video) => command == "track"
                ? ["track", "--checkpoint", s.Model, "--config", "tiny", "--video", video, "--out", s.Out, "--point", "5,5@0", "--no-video"]
                : ["video", "--checkpoint", s.Model, "--config", "tiny", "--vocab", s.Vocab, "--video", video, "--out", s.Out, "--text", "cat", "--no-video"];
            string C = char.ToUpperInvariant(command[0]) + command[1..];
            yield return Case(K, C + "Missing", s => Args(s, s.P("nope.mp4")), 1, "not found");
            yield return Case(K, C + "EmptyPath", s => Args(s, ""), 2, "--video is empty");
            yield return Case(K, C + "DevZero", s => Args(s, "/dev/zero"), 1, "not a regular file");
            yield return Case(K, C + "EmptyFolder", s => Args(s, s.Dir("frames")), 1, "no frames");
            yield return Case(K, C + "FolderOfText", s => { s.Write("frames/0.txt", "x"); return Args(s, s.P("frames")); }, 1, "not an image");
            yield return Case(K, C + "EmptyVideoFile", s => Args(s, s.Write("clip.mp4", [])), 1, "empty");
            yield return Case(K, C + "GarbageVideoFile", s => Args(s, s.Write("clip.mp4", "this is not an mp4 file at all")), 1, "clip.mp4");
        }
    }

    // ================================================================ accepted (valid but unusual inputs that must work)

    private static IEnumerable<HostileCase> Accepted()
    {
        const string K = "Accepted";
        yield return Case(K, "InspectSafetensorsThroughSymlink", s => ["inspect", s.Link("model-link.safetensors", s.Model), "--config", "tiny"], 0, null,
            (_, r) => Assert.That(r.Out, Does.Contain("match:      yes")));
        yield return Case(K, "InspectThroughLinkChain", s => { var a = s.Link("a.safetensors", s.Model); return ["inspect", s.Link("b.safetensors", a), "--config", "tiny"]; }, 0, null);
        yield return Case(K, "InspectThroughLinkedFolder", s => ["inspect", Path.Combine(s.Link("ckpt", s.Shared), "tiny.safetensors"), "--config", "tiny"], 0, null);
        yield return Case(K, "InspectOutOfOrderOffsets", s => ["inspect", s.Write("ooo.safetensors", Safetensors(
            $"{{\"b\":{{{OneTensorData},\"data_offsets\":[8,16]}},\"a\":{{{OneTensorData},\"data_offsets\":[0,8]}}}}", new byte[16])), "--config", "tiny"], 1, "does not fit");
        yield return Case(K, "SegmentTextPng", s => s.SegmentText(), 0, null, (s, _) => AssertPair(s.Out, "img"));
        yield return Case(K, "SegmentJpegThroughSymlink", s => s.Segment(s.Link("pics/photo.jpg", s.Jpg), "--text", "cat"), 0, null, (s, _) => AssertPair(s.Out, "photo"));
        yield return Case(K, "SegmentForceReplacesThePair", s =>
        {
            s.Write("out/img.png", "old overlay");
            s.Write("out/img.json", "{\"old\": true}");
            return s.SegmentText("--force");
        }, 0, null, (s, _) => AssertPair(s.Out, "img"));
        yield return Case(K, "SegmentForceRemovesStaleMasks", s =>
        {
            s.Write("out/img_mask57.png", "stale");
            return s.SegmentText("--force", "--masks", "--threshold", "1");
        }, 0, null, (s, _) =>
        {
            AssertPair(s.Out, "img");
            Assert.That(File.Exists(Path.Combine(s.Out, "img_mask57.png")), Is.False, "a mask of an earlier run would not match the new JSON");
        });
        yield return Case(K, "SegmentNaNWeightsWarns", s => s.Segment(s.Png, "--text", "cat", "--checkpoint",
            NaNWeights(s, "detector.backbone.vision_backbone.trunk.patch_embed.proj.weight"), "--threshold", "0"), 0, null, (s, r) =>
        {
            var warnings = r.ErrLines.Where(l => l.Contains("warning")).ToList();
            Assert.That(warnings, Has.Count.EqualTo(1), r.ToString());
            Assert.That(warnings[0], Does.Contain("NaN").And.Contain("patch_embed"));
            AssertPair(s.Out, "img");
        });
        yield return Case(K, "SegmentNaNWeightsInteractive", s => s.Segment(s.Png, "--point", "5,5", "--checkpoint",
            NaNWeights(s, "tracker.sam_mask_decoder.iou_prediction_head.layers.0.weight")), 0, null, (s, r) =>
        {
            Assert.That(r.ErrLines.Count(l => l.Contains("warning")), Is.EqualTo(1), r.ToString());
            AssertPair(s.Out, "img");
        });
        yield return Case(K, "ConvertThroughSymlinkedInput", s => ["convert", s.Link("in/link.safetensors", s.Model), s.P("out", "copy.safetensors")], 0, null,
            (s, _) => Assert.That(SafetensorsFile.Open(s.P("out", "copy.safetensors")).Names, Has.Count.EqualTo(SafetensorsFile.Open(s.Model).Names.Count)));
    }

    /// <summary>The overlay decodes and the JSON parses; no temporary file beside them.</summary>
    internal static void AssertPair(string outDir, string stem)
    {
        var png = File.ReadAllBytes(Path.Combine(outDir, stem + ".png"));
        Assert.That(png[..8], Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }), "overlay is a PNG");
        Assert.That(ImageLoader.Load(Path.Combine(outDir, stem + ".png")).Width, Is.GreaterThan(0));
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, stem + ".json")));
        Assert.That(doc.RootElement.GetProperty("detections").ValueKind, Is.EqualTo(JsonValueKind.Array));
    }
}
