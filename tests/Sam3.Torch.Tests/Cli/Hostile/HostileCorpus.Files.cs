using System.Text;
using System.Text.Json.Nodes;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.IO;
using TorchSharp;
using static Sam3.Torch.Tests.Cli.Hostile.HostileSandbox;

namespace Sam3.Torch.Tests.Cli.Hostile;

public static partial class HostileCorpus
{
    // ================================================================ configurations

    /// <summary>The tiny configuration's JSON with one field replaced (path "vit.embed_dim", value as JSON text).</summary>
    internal static string TinyConfigWith(string path, string json)
    {
        var root = JsonNode.Parse(Sam3Config.Tiny.ToJson())!.AsObject();
        var parts = path.Split('.');
        JsonObject o = root;
        foreach (var p in parts[..^1]) o = o[p]!.AsObject();
        o[parts[^1]] = JsonNode.Parse(json);
        return root.ToJsonString();
    }

    private static IEnumerable<HostileCase> Configurations()
    {
        const string K = "Config";
        var bad = new (string Name, Func<string> Text, string Fragment)[]
        {
            ("Empty", () => "", "configuration JSON"),
            ("NotJson", () => "{ this is not json", "configuration JSON"),
            ("Array", () => "[1, 2, 3]", "configuration JSON"),
            ("Null", () => "null", "null"),
            ("NegativeEmbedDim", () => TinyConfigWith("vit.embed_dim", "-8"), "vit.embed_dim"),
            ("ZeroDepth", () => TinyConfigWith("vit.depth", "0"), "vit.depth"),
            ("NegativeHeads", () => TinyConfigWith("vit.num_heads", "-1"), "vit.num_heads"),
            ("NegativeImageSize", () => TinyConfigWith("image_size", "-5"), "image_size"),
            ("ZeroStd", () => TinyConfigWith("image_std", "[0, 0.5, 0.5]"), "image_std[0]"),
            ("TwoMeans", () => TinyConfigWith("image_mean", "[0.5, 0.5]"), "image_mean"),
            ("NaNRopeTheta", () => TinyConfigWith("vit.rope_theta", "\"NaN\""), "vit.rope_theta"),
            ("InfiniteStd", () => TinyConfigWith("image_std", "[0.5, \"Infinity\", 0.5]"), "image_std[1]"),
            ("ZeroQueries", () => TinyConfigWith("decoder.num_queries", "0"), "decoder.num_queries"),
            ("NegativeContextLength", () => TinyConfigWith("text.context_length", "-1"), "text.context_length"),
            ("NegativeMemDim", () => TinyConfigWith("tracker.mem_dim", "-3"), "tracker.mem_dim"),
            ("StringDModel", () => TinyConfigWith("neck.d_model", "\"abc\""), "d_model"),
            ("NegativeGlobalBlock", () => TinyConfigWith("vit.global_att_blocks", "[-1]"), "vit.global_att_blocks[0]"),
            ("ZeroPatchSize", () => TinyConfigWith("vit.patch_size", "0"), "vit.patch_size"),
        };
        foreach (var (name, text, fragment) in bad)
        {
            yield return Case(K, name + "Segment", s => s.Segment(s.Png, "--text", "cat", "--config", s.Write("config.json", text())), 1, fragment);
            yield return Case(K, name + "Inspect", s => ["inspect", s.Model, "--config", s.Write("config.json", text())], 1, fragment);
        }
        yield return Case(K, "WiderThanCheckpoint", s => s.Segment(s.Png, "--text", "cat", "--config", s.Write("config.json", TinyConfigWith("vit.embed_dim", "48"))), 1, "does not fit");
        yield return Case(K, "FolderSegment", s => s.Segment(s.Png, "--text", "cat", "--config", s.Dir("cfg")), 1, "is a folder");
        yield return Case(K, "DevZeroSegment", s => s.Segment(s.Png, "--text", "cat", "--config", "/dev/zero"), 1, "not a regular file");
        yield return Case(K, "MissingSegment", s => s.Segment(s.Png, "--text", "cat", "--config", s.P("nope.json")), 2, "--config");
        yield return Case(K, "MissingInspect", s => ["inspect", s.Model, "--config", s.P("nope.json")], 2, "--config");
        yield return Case(K, "UnknownName", s => ["inspect", s.Model, "--config", "huge"], 2, "--config");
    }

    // ================================================================ checkpoints

    private const string OneTensorData = "\"dtype\":\"F32\",\"shape\":[2]";

    private static IEnumerable<HostileCase> Checkpoints()
    {
        const string K = "Checkpoint";
        var files = new (string Name, Func<HostileSandbox, string> Make, string Fragment)[]
        {
            ("EmptyFile", s => s.Write("empty.safetensors", []), "empty"),
            ("FiveBytes", s => s.Write("five.pt", [1, 2, 3, 4, 5]), "five.pt"),
            ("TextNamedPt", s => s.Write("notes.pt", "these are not weights\n"), "unrecognised checkpoint format"),
            ("HeaderSizeHuge", s => s.Write("huge.safetensors", [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, (byte)'{', (byte)'}']), "header size"),
            ("HeaderSizeBeyondFile", s => s.Write("beyond.safetensors", [0x40, 0, 0, 0, 0, 0, 0, 0, (byte)'{', (byte)'}']), "header size"),
            ("HeaderNotJson", s => s.Write("nj.safetensors", Safetensors("{\"a\": [nope", new byte[8])), "corrupt safetensors header"),
            ("OverlappingOffsets", s => s.Write("overlap.safetensors", Safetensors(
                $"{{\"a\":{{{OneTensorData},\"data_offsets\":[0,8]}},\"b\":{{{OneTensorData},\"data_offsets\":[4,12]}}}}", new byte[12])), "overlap"),
            ("SameOffsets", s => s.Write("alias.safetensors", Safetensors(
                $"{{\"a\":{{{OneTensorData},\"data_offsets\":[0,8]}},\"b\":{{{OneTensorData},\"data_offsets\":[0,8]}}}}", new byte[8])), "overlap"),
            ("OffsetsBeyondData", s => s.Write("past.safetensors", Safetensors($"{{\"a\":{{{OneTensorData},\"data_offsets\":[0,8]}}}}", new byte[4])), "outside the file"),
            ("BytesNotCoveringShape", s => s.Write("short.safetensors", Safetensors($"{{\"a\":{{{OneTensorData},\"data_offsets\":[0,4]}}}}", new byte[4])), "bytes for shape"),
            ("ReversedOffsets", s => s.Write("rev.safetensors", Safetensors($"{{\"a\":{{{OneTensorData},\"data_offsets\":[8,0]}}}}", new byte[8])), "outside the file"),
            ("UnsupportedDType", s => s.Write("dt.safetensors", Safetensors("{\"a\":{\"dtype\":\"X99\",\"shape\":[2],\"data_offsets\":[0,8]}}", new byte[8])), "unsupported dtype"),
            ("NegativeShape", s => s.Write("neg.safetensors", Safetensors("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", new byte[8])), "'a'"),
            ("DuplicateKey", s => s.Write("dup.safetensors", Safetensors(
                $"{{\"a\":{{{OneTensorData},\"data_offsets\":[0,8]}},\"a\":{{{OneTensorData},\"data_offsets\":[8,16]}}}}", new byte[16])), "appears twice"),
            ("MalformedOffsets", s => s.Write("mo.safetensors", Safetensors($"{{\"a\":{{{OneTensorData},\"data_offsets\":[8]}}}}", new byte[8])), "data_offsets"),
            ("MissingDType", s => s.Write("nodt.safetensors", Safetensors("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", new byte[8])), "corrupt safetensors header"),
            ("MetadataNotObject", s => s.Write("meta.safetensors", Safetensors("{\"__metadata__\":[1]}", [])), "__metadata__"),
            ("TruncatedTiny", s => { var b = File.ReadAllBytes(s.Model); return s.Write("cut.safetensors", b[..(b.Length / 2)]); }, "truncated"),
            ("LegacyPickle", s => s.Write("old.pt", [0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19, 0x2E]), "legacy"),
            ("EmptyZip", s => s.Write("ez.pt", [0x50, 0x4B, 0x05, 0x06, .. new byte[18]]), "ez.pt"),
            ("PtMissingStorage", s => { var b = new TorchPtBuilder().AddFloatStorage("0", 1f, 2f).AddTensor("w", "0", 0, [2]); b.OmitStorageMembers.Add("0"); b.Write(s.P("nostore.pt")); return s.P("nostore.pt"); }, "nostore.pt"),
            ("PtStorageTooShort", s => { new TorchPtBuilder().AddFloatStorage("0", 1f, 2f).AddTensor("w", "0", 0, [5]).Write(s.P("shortst.pt")); return s.P("shortst.pt"); }, "shortst.pt"),
            // the payload would write into the sandbox, whose byte-identical check then fails
            ("PtHostileGlobal", s => { new TorchPtBuilder().AddTopLevel("x", p => { p.Global("os", "system"); p.Mark(); p.Unicode("echo pwned > " + s.P("pwned")); p.TupleFromMark(); p.Reduce(); }).Write(s.P("evil.pt")); return s.P("evil.pt"); }, "evil.pt"),
            ("Directory", s => s.Dir("weights.safetensors"), "is a folder"),
            ("DevZero", _ => "/dev/zero", "not a regular file"),
            ("Fifo", s => MakeFifo(s.P("pipe.safetensors")), "not a regular file"),
            ("DanglingLink", s => s.Link("gone.safetensors", s.P("never.safetensors")), "symbolic link"),
        };
        foreach (var (name, make, fragment) in files)
        {
            yield return Case(K, name + "Inspect", s => ["inspect", make(s), "--config", "tiny"], 1, fragment);
            if (name is "OverlappingOffsets" or "TruncatedTiny" or "DevZero" or "HeaderNotJson" or "LegacyPickle" or "BytesNotCoveringShape" or "Directory")
                yield return Case(K, name + "Convert", s => ["convert", make(s), s.P("converted.safetensors")], 1, fragment);
            if (name is "OverlappingOffsets" or "TruncatedTiny" or "DevZero" or "EmptyFile" or "TextNamedPt" or "PtHostileGlobal")
                yield return Case(K, name + "Segment", s => s.Segment(s.Png, "--text", "cat", "--checkpoint", make(s)), 1, fragment);
        }
        yield return Case(K, "PtWithoutTensorsConvert", s => { new TorchPtBuilder().Write(s.P("none.pt")); return ["convert", s.P("none.pt"), s.P("none.safetensors")]; }, 1, "no tensors");
        yield return Case(K, "SafetensorsWithoutTensorsConvert", s => ["convert", s.Write("none.safetensors", Safetensors("{}", [])), s.P("again.safetensors")], 1, "no tensors");
        yield return Case(K, "MissingInspect", s => ["inspect", s.P("nope.pt")], 1, "not found");
        yield return Case(K, "EmptyPathInspect", _ => ["inspect", ""], 2, "empty");
        yield return Case(K, "EmptyPathSegment", s => s.Segment(s.Png, "--text", "cat", "--checkpoint", ""), 2, "--checkpoint is empty");
        yield return Case(K, "MissingSegment", s => s.Segment(s.Png, "--text", "cat", "--checkpoint", s.P("nope.safetensors")), 1, "not found");
        yield return Case(K, "WrongKeysSegment", s => s.Segment(s.Png, "--text", "cat", "--checkpoint",
            s.Write("other.safetensors", Safetensors($"{{\"a\":{{{OneTensorData},\"data_offsets\":[0,8]}}}}", new byte[8]))), 1, "does not fit");
        yield return Case(K, "FolderWithoutCheckpointSegment", s => s.Segment(s.Png, "--text", "cat", "--checkpoint", s.Dir("download")), 1, "download");
    }

    /// <summary>The tiny checkpoint with one weight set to NaN (written next to the case).</summary>
    internal static string NaNWeights(HostileSandbox s, string key)
    {
        string path = s.P("nan.safetensors");
        using var file = SafetensorsFile.Open(s.Model);
        using var scope = torch.NewDisposeScope();
        var tensors = file.Names.ToDictionary(n => n, n => file.Load(n).clone());
        tensors[key].view(-1)[0] = float.NaN;
        var metadata = file.Metadata.ToDictionary(kv => kv.Key, kv => kv.Value);
        var items = file.Names.Select(n => new SafetensorsWriter.Item(n, tensors[n].shape, tensors[n].dtype, () => tensors[n])).ToList();
        SafetensorsWriter.Write(path, items, metadata);
        return path;
    }

    // ================================================================ tokenizers

    private static IEnumerable<HostileCase> Tokenizers()
    {
        const string K = "Tokenizer";
        HostileCase Vocab(string name, Func<HostileSandbox, string> vocab, int exit, string? fragment) =>
            Case(K, name, s => s.Segment(s.Png, "--text", "cat", "--vocab", vocab(s)), exit, fragment);
        yield return Vocab("Missing", s => s.P("nope.txt.gz"), 1, "not found");
        yield return Vocab("Folder", s => s.Dir("vocab"), 1, "is a folder");
        yield return Vocab("DevZero", _ => "/dev/zero", 1, "not a regular file");
        yield return Vocab("EmptyPath", _ => "", 2, "--vocab is empty");
        yield return Vocab("EmptyFile", s => s.Write("empty.txt.gz", []), 1, "empty.txt.gz");
        yield return Vocab("NotGzip", s => s.Write("plain.txt.gz", "just text, not gzip\n"), 1, "plain.txt.gz");
        yield return Vocab("GzipOfGarbage", s => s.Write("garbage.txt.gz", Gzip("\x01\x02 no merges here")), 1, "garbage.txt.gz");
        yield return Vocab("JsonWithoutMerges", s => s.Write("v/vocab.json", "{\"a</w>\": 0}"), 1, "merges");
        yield return Vocab("JsonNotJson", s => { s.Write("w/merges.txt", "#version: 0.2\n"); return s.Write("w/vocab.json", "{nope"); }, 1, "vocab.json");
    }

    internal static byte[] Gzip(string text)
    {
        using var ms = new MemoryStream();
        using (var gz = new System.IO.Compression.GZipStream(ms, System.IO.Compression.CompressionLevel.Fastest)) gz.Write(Encoding.UTF8.GetBytes(text));
        return ms.ToArray();
    }
}
