using Sam3.Torch.Loading;
using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Modeling.Detector;

/// <summary>The whole image model: key/shape/dtype layout against the manifests, and strict checkpoint loading.</summary>
[TestFixture]
public class ImageModelTests
{
    private record Entry(string Key, long[] Shape, string DType);

    private static List<Entry> ReadList(string path, string listName, string? subList = null)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var node = doc.RootElement.GetProperty(listName);
        if (subList is not null) node = node.GetProperty(subList);
        return node.EnumerateArray().Select(e => new Entry(e.GetProperty("key").GetString()!,
            e.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray(), e.GetProperty("dtype").GetString()!)).ToList();
    }

    /// <summary>The model's state dict plus its recomputed RoPE tables (complex64 upstream), as (key, shape, dtype).</summary>
    private static List<Entry> ModelEntries(Sam3ImageModel model)
    {
        return model.state_dict().Select(kv => new Entry(kv.Key, kv.Value.shape, CheckpointDTypes.ToPythonName(kv.Value.dtype).Replace("torch.", ""))).ToList();
    }

    private static void AssertLayout(Sam3ImageModel model, List<Entry> expected)
    {
        var mine = ModelEntries(model).ToDictionary(e => e.Key);
        var exp = expected.ToDictionary(e => e.Key);
        var ropeKeys = exp.Keys.Where(k => k.EndsWith(".attn.freqs_cis")).ToList();
        var missing = exp.Keys.Except(mine.Keys).Except(ropeKeys).OrderBy(k => k).ToList();
        var extra = mine.Keys.Except(exp.Keys).OrderBy(k => k).ToList();
        var shapes = mine.Keys.Intersect(exp.Keys).Where(k => !mine[k].Shape.SequenceEqual(exp[k].Shape)).ToList();
        var dtypes = mine.Keys.Intersect(exp.Keys).Where(k => mine[k].DType != exp[k].DType).Select(k => $"{k}: {mine[k].DType} vs {exp[k].DType}").ToList();
        Assert.Multiple(() =>
        {
            Assert.That(missing, Is.Empty, "manifest keys the model lacks");
            Assert.That(extra, Is.Empty, "model keys the manifest lacks");
            Assert.That(shapes, Is.Empty, "shape mismatches");
            Assert.That(dtypes, Is.Empty, "dtype mismatches");
            Assert.That(mine.Count + ropeKeys.Count, Is.EqualTo(exp.Count));
        });
        // The RoPE tables are recomputed, one per manifest entry, with the manifest's complex shape.
        if (model.backbone.vision_backbone.trunk.FreqsCisAsReal(torch.META).ToList() is var tables && ropeKeys.Count > 0)
        {
            var recomputed = tables.ToDictionary(t => "backbone.vision_backbone.trunk." + t.key, t => t.table.shape[..^1]);
            Assert.That(recomputed.Keys.OrderBy(k => k), Is.EqualTo(ropeKeys.OrderBy(k => k)));
            foreach (var k in ropeKeys) Assert.That(recomputed[k], Is.EqualTo(exp[k].Shape), k);
        }
    }

    [Test, Category("Fast")]
    public void TinyImageModelHasExactlyTheManifestLayout()
    {
        var expected = ReadList(SharedData.Parity("tiny", "model_manifest.json"), "image_model_state_dict");
        using var model = KeyLayout.OnMeta(() => new Sam3ImageModel(Sam3Config.Tiny));
        AssertLayout(model, expected);
        Assert.That(expected, Has.Count.EqualTo(623));
    }

    [Test, Category("Fast")]
    public void FullImageModelHasExactlyTheReleasedLayout()
    {
        // full/manifest.json lists build_sam3_image_model(enable_inst_interactivity=True): 1,465 entries.
        var path = SharedData.Parity("full", "manifest.json");
        var expected = ReadList(path, "image_model", "state_dict");
        using var model = KeyLayout.OnMeta(() => new Sam3ImageModel(Sam3Config.Full));
        AssertLayout(model, expected);
        Assert.That(expected, Has.Count.EqualTo(1465));
        long parameters = model.parameters().Sum(p => p.numel());
        Assert.That(parameters, Is.EqualTo(860_055_224L), "the released parameter count (buffers: RoPE tables and the Gaussian matrix, excluded)");
    }

    [Test, Category("Fast")]
    public void ImageModelWithoutInteractivityDropsTrackerAndSam2Neck()
    {
        using var model = KeyLayout.OnMeta(() => new Sam3ImageModel(Sam3Config.Full, enableInstInteractivity: false));
        var keys = model.state_dict().Keys.ToList();
        Assert.That(keys.Any(k => k.StartsWith("inst_interactive_predictor.")), Is.False);
        Assert.That(keys.Any(k => k.Contains("sam2_convs")), Is.False);
        // guide §1.1: 1,134 state-dict entries, of which the 32 freqs_cis RoPE tables are recomputed here, not registered
        Assert.That(keys.Count + 32, Is.EqualTo(1134));
    }

    [Test, Category("Fast")]
    public void TinyReleasedCheckpointLoadsStrictlyAndMatchesRopeTables()
    {
        var progress = new List<(int, int, string)>();
        using var model = Sam3ModelLoader.LoadImageModel(TinyWeights.Path, Sam3Config.Tiny,
            new Sam3LoadOptions { Progress = new SyncProgress<(int, int, string)>(progress.Add) });
        Assert.That(progress, Is.Not.Empty);
        Assert.That(progress[^1].Item1, Is.EqualTo(progress[^1].Item2));
        using var file = SafetensorsFile.Open(TinyWeights.Path);
        using var scope = NewDisposeScope();
        var sd = model.state_dict();
        Assert.That((sd["transformer.decoder.query_embed.weight"] - file.Load("detector.transformer.decoder.query_embed.weight")).abs().max().item<float>(), Is.EqualTo(0f));
        Assert.That((sd["inst_interactive_predictor.model.no_mem_embed"] - file.Load("tracker.no_mem_embed")).abs().max().item<float>(), Is.EqualTo(0f));
    }

    [Test, Category("Fast")]
    public void CheckpointOfTheWrongConfigurationNamesTheMismatchedKeys()
    {
        var wrong = Sam3Config.Tiny with { Decoder = Sam3Config.Tiny.Decoder with { NumQueries = 8 } };
        var e = Assert.Throws<Sam3CheckpointMismatchException>(() => Sam3ModelLoader.LoadImageModel(TinyWeights.Path, wrong));
        Assert.That(e!.Message, Does.Contain("transformer.decoder.query_embed.weight"));
        Assert.That(e.WrongShapeKeys, Has.Count.GreaterThanOrEqualTo(2));
    }

    [Test, Category("Fast")]
    public void RopeTablesOfAnotherConfigurationAreRejected()
    {
        // Same weights, but a RoPE theta the tables were not computed with: every key fits, the tables do not.
        var other = Sam3Config.Tiny with { Vit = Sam3Config.Tiny.Vit with { RopeTheta = 500.0 } };
        var e = Assert.Throws<Sam3CheckpointException>(() => Sam3ModelLoader.LoadImageModel(TinyWeights.Path, other));
        Assert.That(e!.Message, Does.Contain("freqs_cis"));
    }

    [Test, Category("Fast")]
    public void TruncatedCheckpointIsATypedError()
    {
        string temp = Path.Combine(Path.GetTempPath(), $"sam3-trunc-{Guid.NewGuid():N}.safetensors");
        var bytes = File.ReadAllBytes(TinyWeights.Path);
        File.WriteAllBytes(temp, bytes[..(bytes.Length / 2)]);
        try
        {
            Assert.Throws(Is.InstanceOf<Sam3CheckpointException>(), () => Sam3ModelLoader.LoadImageModel(temp, Sam3Config.Tiny));
        }
        finally { File.Delete(temp); }
    }

    /// <summary>IProgress that reports synchronously (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}

[TestFixture, Category("Fast")]
public class ModelSaveTests
{
    [Test]
    public void SavedWeightsReloadBitExactAndAreNeverOverwrittenSilently()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"sam3-save-{Guid.NewGuid():N}");
        string path = Path.Combine(dir, "finetuned.safetensors");
        try
        {
            using var model = Sam3ModelLoader.LoadImageModel(TinyWeights.Path, Sam3Config.Tiny);
            using (var scope = NewDisposeScope())
            using (torch.no_grad())
                model.state_dict()["transformer.decoder.query_embed.weight"].add_(1.0f); // "fine-tuned"
            Sam3ModelLoader.Save(model, path);
            Assert.Throws<Sam3CheckpointException>(() => Sam3ModelLoader.Save(model, path));

            using var again = Sam3ModelLoader.LoadImageModel(path, Sam3Config.Tiny);
            using var scope2 = NewDisposeScope();
            var a = model.state_dict();
            foreach (var (key, t) in again.state_dict())
                Assert.That((t.to(ScalarType.Float64) - a[key].to(ScalarType.Float64)).abs().max().item<double>(), Is.EqualTo(0.0), key);
            using var file = SafetensorsFile.Open(path);
            Assert.That(file.Names.Count(n => n.EndsWith("freqs_cis")), Is.EqualTo(Sam3Config.Tiny.Vit.Depth));
            Assert.That(file.Names.Count, Is.EqualTo(623), "a complete image-model state dict, as the manifest");
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }
}
