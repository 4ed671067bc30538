using System.Globalization;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Loading;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Tests.Infrastructure;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.IO;

/// <summary>
/// Loading keeps one copy of the weights (issue 15 item 3): the model is built on meta and the checkpoint's memory-mapped
/// tensors become its parameters. Checked structurally: every parameter's storage lies inside the process's mapping of
/// the checkpoint file (/proc/self/maps), i.e. nothing was allocated and copied for it.
/// </summary>
[TestFixture, Category("Fast")]
public class MappedLoadingTests
{
    /// <summary>Address ranges at which <paramref name="path"/> is mapped into this process.</summary>
    private static List<(ulong Start, ulong End)> MappingsOf(string path)
    {
        string full = Path.GetFullPath(path);
        string real = new FileInfo(full).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? full;
        var ranges = new List<(ulong, ulong)>();
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            // start-end perms offset dev inode path
            var parts = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length < 6) continue;
            string mapped = parts[5].Trim();
            if (mapped != full && mapped != real) continue;
            var se = parts[0].Split('-');
            ranges.Add((ulong.Parse(se[0], NumberStyles.HexNumber), ulong.Parse(se[1], NumberStyles.HexNumber)));
        }
        return ranges;
    }

    private static ulong StorageAddress(Tensor t) => t.dtype switch
    {
        ScalarType.Float32 => (ulong)t.storage<float>().data_ptr(),
        _ => throw new AssertionException($"unexpected dtype {t.dtype}"),
    };

    [Test]
    public void EveryParameterOfTheTinyModelLivesInTheMappedCheckpoint()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("/proc/self/maps is Linux-only");
        string path = SharedData.Parity("tiny", "model.safetensors");
        using var model = Sam3ModelLoader.LoadImageModel(path, Sam3Config.Tiny);
        var ranges = MappingsOf(path);
        Assert.That(ranges, Is.Not.Empty, $"{path} is not mapped into the process after loading");
        var outside = new List<string>();
        int count = 0;
        foreach (var (name, t) in model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)).Concat(model.named_buffers()))
        {
            count++;
            ulong a = StorageAddress(t);
            if (!ranges.Any(r => a >= r.Start && a + (ulong)(t.numel() * t.element_size()) <= r.End)) outside.Add(name);
        }
        Assert.That(count, Is.EqualTo(model.state_dict().Count).And.GreaterThan(500), "every state-dict tensor was checked");
        Assert.That(outside, Is.Empty, "tensors allocated separately instead of adopted from the mapped file");
        Assert.That(ParameterAdoption.Unmaterialized(model), Is.Empty);
    }

    [Test]
    public void AModelBuiltOnMetaAndNotLoadedReportsEveryTensorAsUnmaterialized()
    {
        using var model = ParameterAdoption.BuildOnMeta(() => new Sam3ImageModel(Sam3Config.Tiny));
        Assert.That(torch.get_default_device().type, Is.EqualTo(DeviceType.CPU), "the default device is restored");
        Assert.That(ParameterAdoption.HasMetaTensors(model), Is.True);
        var left = ParameterAdoption.Unmaterialized(model);
        long registered = model.named_parameters().Count() + model.named_buffers().Count();
        Assert.That(left.Count, Is.GreaterThanOrEqualTo(registered), "every registered tensor (and the fields holding them) is named");
    }

    [Test]
    public void AdoptionReplacesTheFieldThatForwardReadsNotOnlyTheRegistration()
    {
        using var m = ParameterAdoption.BuildOnMeta(() => new FieldHolder());
        using var w = torch.arange(6, dtype: ScalarType.Float32).view(2, 3);
        using var g = torch.ones(3);
        ParameterAdoption.Adopt(m, [new("weight", w.alias()), new("gain", g.alias())]);
        Assert.That(ParameterAdoption.Unmaterialized(m), Is.Empty);
        Assert.That(m.Weight.device_type, Is.EqualTo(DeviceType.CPU));
        Assert.That(m.Weight.storage<float>().data_ptr(), Is.EqualTo(w.storage<float>().data_ptr()), "adopted without a copy");
        Assert.That(m.named_parameters().Single().parameter.Handle, Is.EqualTo(m.Weight.Handle), "registration and field are the same tensor");
        using var x = torch.ones(1, 3);
        using var y = m.forward(x);
        Assert.That(y.data<float>().ToArray(), Is.EqualTo(new float[] { 3, 12 }));
    }

    [Test]
    public void AdoptionConvertsADifferentDtypeAndRejectsAWrongShape()
    {
        using var m = ParameterAdoption.BuildOnMeta(() => new FieldHolder());
        using var w64 = torch.ones(2, 3, dtype: ScalarType.Float64);
        ParameterAdoption.Adopt(m, [new("weight", w64.alias())]);
        Assert.That(m.Weight.dtype, Is.EqualTo(ScalarType.Float32));
        using var bad = torch.ones(3);
        using var m2 = ParameterAdoption.BuildOnMeta(() => new FieldHolder());
        var ex = Assert.Throws<Sam3CheckpointException>(() => ParameterAdoption.Adopt(m2, [new("weight", bad.alias())]));
        Assert.That(ex!.Message, Does.Contain("'weight'"));
    }

    /// <summary>A module whose forward reads a parameter through a field named differently from its registration.</summary>
    private sealed class FieldHolder : nn.Module<Tensor, Tensor>
    {
        private readonly Parameter _w = new(torch.empty(2, 3));
        private readonly Tensor _gain = torch.empty(3);

        public FieldHolder() : base(nameof(FieldHolder))
        {
            register_parameter("weight", _w);
            register_buffer("gain", _gain);
        }

        public Parameter Weight => _w;

        public override Tensor forward(Tensor x) => nn.functional.linear(x * _gain, _w);
    }
}
