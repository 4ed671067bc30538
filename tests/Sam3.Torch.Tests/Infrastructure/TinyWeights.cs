using NUnit.Framework;
using Sam3.Torch.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Infrastructure;

/// <summary>
/// Test helper: copies the tiny checkpoint's tensors (shared/parity/tiny/model.safetensors, released layout) into a
/// sub-module. <paramref name="prefix"/> is the checkpoint prefix of that module, e.g.
/// "detector.backbone.vision_backbone.trunk.". Strict: every module key must exist with the same shape; RoPE
/// <c>freqs_cis</c> tables in the file are skipped (modules recompute them).
/// </summary>
internal static class TinyWeights
{
    public static string Path => SharedData.Parity("tiny", "model.safetensors");

    public static void LoadInto(nn.Module module, string prefix)
    {
        using var file = SafetensorsFile.Open(Path);
        using var scope = NewDisposeScope();
        using var _ = torch.no_grad();
        var problems = new List<string>();
        foreach (var (key, target) in module.state_dict())
        {
            string full = prefix + key;
            if (!file.Contains(full)) { problems.Add($"missing {full}"); continue; }
            var src = file.Load(full);
            if (!src.shape.SequenceEqual(target.shape)) { problems.Add($"shape {full}: file [{string.Join(",", src.shape)}] vs module [{string.Join(",", target.shape)}]"); continue; }
            target.copy_(src);
        }
        var moduleKeys = module.state_dict().Keys.Select(k => prefix + k).ToHashSet();
        foreach (var name in file.Names)
            if (name.StartsWith(prefix) && !moduleKeys.Contains(name) && !name.EndsWith("freqs_cis"))
                problems.Add($"unexpected {name}");
        Assert.That(problems, Is.Empty, "tiny checkpoint does not fit the module:\n" + string.Join("\n", problems));
    }
}
