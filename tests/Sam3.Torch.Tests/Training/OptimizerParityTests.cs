using System.Text.Json;
using NUnit.Framework;
using Sam3.Torch.Config;
using Sam3.Torch.IO;
using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;
using Sam3.Torch.Training.Optim;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// The optimizer side of tiny/h_training_step: parameter groups (17, names / lr / weight decay per parameter as in the
/// json), the schedule at step 20, clipping of the recorded gradients (total norm, clip coefficient) and one AdamW step
/// from tiny/model.safetensors to every recorded updated parameter within atol 1e-6.
/// </summary>
[TestFixture, Category("Fast"), Category("Parity")]
public class OptimizerParityTests
{
    private const string TokenEmbedding = "backbone.language_backbone.encoder.token_embedding.weight";

    internal static Sam3ImageModel TinyDetector()
    {
        var model = new Sam3ImageModel(Sam3Config.Tiny, enableInstInteractivity: false);
        using var file = SafetensorsFile.Open(TinyWeights.Path);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        foreach (var (key, target) in model.state_dict())
        {
            string full = "detector." + key;
            if (!file.Contains(full)) { Assert.That(key, Does.EndWith("freqs_cis").Or.Contains("coords"), $"missing {full}"); continue; }
            target.copy_(file.Load(full));
        }
        return model;
    }

    private static (ScheduleConfig, int, double) Schedule(ScenarioFixture fx)
    {
        var at = fx.Parameters.GetProperty("optimizer").GetProperty("scheduler_evaluated_at");
        return (TrainingConfig.Default.Schedule, at.GetProperty("step").GetInt32(), at.GetProperty("where").GetDouble());
    }

    [Test]
    public void ParameterGroupsEqualUpstreams()
    {
        using var fx = Fixtures.Tiny("h_training_step");
        using var model = TinyDetector();
        var groups = ParamGroups.Build(model, TrainingConfig.Default.Optimizer);
        var (sched, step, where) = Schedule(fx);
        ParamGroups.StepSchedulers(groups, sched, step, where);

        var opt = fx.Parameters.GetProperty("optimizer");
        var expected = opt.GetProperty("param_groups").EnumerateArray().ToList();
        Assert.That(groups, Has.Count.EqualTo(expected.Count).And.Count.EqualTo(17));
        bool sameOrder = true;
        for (int i = 0; i < groups.Count; i++)
        {
            var e = expected[i];
            var g = groups[i];
            var names = e.GetProperty("params").EnumerateArray().Select(x => x.GetString()!).ToList();
            Assert.That(g.Params.Select(p => p.Name).ToHashSet(), Is.EquivalentTo(names), $"group {i} parameters");
            sameOrder &= g.Params.Select(p => p.Name).SequenceEqual(names);
            Assert.That(g.Lr, Is.EqualTo(e.GetProperty("lr").GetDouble()), $"group {i} lr");
            Assert.That(g.WeightDecay, Is.EqualTo(e.GetProperty("weight_decay").GetDouble()), $"group {i} weight_decay");
            Assert.That(g.LrBase, Is.EqualTo(e.GetProperty("lr_base").GetDouble()), $"group {i} lr_base");
            Assert.That(g.LrScale, Is.EqualTo(e.GetProperty("lr_layer_decay_scale").GetDouble()), $"group {i} layer scale");
        }
        TestContext.Out.WriteLine($"parameter order inside the groups equals upstream's: {sameOrder}");
        var perParam = opt.GetProperty("per_parameter(group,lr,weight_decay)");
        int n = 0;
        var ours = groups.SelectMany(g => g.Params.Select(p => (p.Name, g))).ToDictionary(x => x.Name, x => x.g);
        foreach (var prop in perParam.EnumerateObject())
        {
            var arr = prop.Value.EnumerateArray().ToArray();
            Assert.That(ours.ContainsKey(prop.Name), $"{prop.Name} in no group");
            var g = ours[prop.Name];
            Assert.That((g.Index, g.Lr, g.WeightDecay), Is.EqualTo((arr[0].GetInt32(), arr[1].GetDouble(), arr[2].GetDouble())), prop.Name);
            n++;
        }
        Assert.That(ours, Has.Count.EqualTo(n), "every model parameter is in exactly one group");
    }

    [Test]
    public void ScheduleWarmsUpFromZeroAndDecaysAsInverseSquareRoot()
    {
        var s = new InverseSquareRootScheduler(1.0, new ScheduleConfig { Timescale = 20, WarmupSteps = 20, CooldownSteps = 20 });
        Assert.That(s.At(0, 0.0), Is.EqualTo(0.0), "step 0: warm-up factor 0");
        Assert.That(s.At(10, 0.01), Is.EqualTo(0.5).Within(1e-15), "half-way through warm-up");
        Assert.That(s.At(20, 0.02), Is.EqualTo(1.0), "end of warm-up");
        Assert.That(s.At(80, 0.08), Is.EqualTo(1 / Math.Sqrt(80.0 / 20)).Within(1e-15), "1/sqrt((step + timescale - warmup)/timescale)");
        Assert.That(s.At(990, 0.99), Is.EqualTo(1 / Math.Sqrt(990.0 / 20) * 0.5).Within(1e-12), "cool-down: (total - step)/cooldown = 1/2");
    }

    [Test]
    public void ClippingAndOneAdamWStepReproduceTheUpdatedParameters()
    {
        using var scope = NewDisposeScope();
        using var fx = Fixtures.Tiny("h_training_step");
        using var model = TinyDetector();
        var cfg = TrainingConfig.Default;
        List<ParamGroup> groups;
        var (_, step, where) = Schedule(fx);

        var rows = fx.Get("data.token_embedding_rows");
        var grads = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var before = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, p) in model.named_parameters())
        {
            before[name] = p.detach().clone();
            if (fx.Has("grad." + name)) grads[name] = fx.Get("grad." + name);
            else if (name == TokenEmbedding)
            {
                var g = zeros_like(p);
                g.index_copy_(0, rows, fx.Get("grad_rows." + name));
                grads[name] = g;
            }
        }
        var withoutGrad = fx.Parameters.GetProperty("optimizer").GetProperty("per_parameter(group,lr,weight_decay)").EnumerateObject().Count() - grads.Count;
        Assert.That(withoutGrad, Is.EqualTo(JsonArrayLength(fx, "params_without_grad")));
        Assert.That(grads, Has.Count.EqualTo(331));

        // TrainingOptimizer: schedule at the recorded step, clip over every parameter with a gradient (model order), AdamW
        var optimizer = new TrainingOptimizer(model, cfg);
        var clip = optimizer.Step(step, where, (name, _) => grads.TryGetValue(name, out var g) ? g : null)!.Value;
        var tolNorm = new Tolerance(Atol: 0, Rtol: 1e-6, NoiseFactor: 1.0);
        var rn = tolNorm.Compare("optim.grad_total_norm", clip.TotalNorm, fx.Get("optim.grad_total_norm"));
        var rc = tolNorm.Compare("optim.clip_coef", clip.ClipCoef, fx.Get("optim.clip_coef"));
        TestContext.Out.WriteLine(rn.ToString());
        TestContext.Out.WriteLine(rc.ToString());
        Assert.That(rn.Passed && rc.Passed, Is.True, $"{rn}\n{rc}");
        Assert.That(optimizer.AdamW.StateCount, Is.EqualTo(grads.Count), "AdamW state only for parameters with a gradient");
        groups = optimizer.Groups.ToList();

        var tol = new Tolerance(Atol: 1e-6, Rtol: 0, NoiseFactor: 1.0);
        double worst = 0; string worstName = "";
        var failures = new List<string>();
        var named = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, p) in named)
        {
            ComparisonResult r;
            if (fx.Has("updated." + name)) r = tol.Compare("updated." + name, p, fx.Get("updated." + name));
            else if (name == TokenEmbedding)
            {
                r = tol.Compare("updated_rows." + name, p.index_select(0, rows), fx.Get("updated_rows." + name));
                // rows outside the batch: zero gradient -> only the decoupled weight decay
                var g = groups.First(gr => gr.Params.Any(x => x.Name == name));
                var mask = ones(p.shape[0], ScalarType.Bool);
                mask.index_fill_(0, rows, false);
                var expectOther = before[name].index(TensorIndex.Tensor(mask)) * (1 - g.Lr * g.WeightDecay);
                Assert.That(Same(p.detach().index(TensorIndex.Tensor(mask)), expectOther), Is.True, "token-embedding rows outside the batch: w·(1-lr·wd)");
            }
            else
            {
                Assert.That(Same(p.detach(), before[name]), Is.True, $"{name} has no gradient and must not move");
                continue;
            }
            if (r.MaxAbsError > worst) { worst = r.MaxAbsError; worstName = name; }
            if (!r.Passed) failures.Add(r.ToString());
        }
        TestContext.Out.WriteLine($"worst updated-parameter |Δ| = {worst:G3} ({worstName})");
        Assert.That(failures, Is.Empty, string.Join("\n", failures));
    }

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    private static int JsonArrayLength(ScenarioFixture fx, string name)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(fx.JsonPath));
        return doc.RootElement.GetProperty(name).GetArrayLength();
    }

    [Test]
    public void StateSavedAndLoadedResumesExactly()
    {
        using var scope = NewDisposeScope();
        var cfg = TrainingConfig.Default.Optimizer;
        var gen = new TorchSharp.torch.Generator(3);
        Tensor Grad() => randn([4, 3], generator: gen);
        var g1 = Grad(); var g2 = Grad();
        TorchSharp.Modules.Parameter P() => new(randn([4, 3], generator: new TorchSharp.torch.Generator(5)));
        List<ParamGroup> Groups(TorchSharp.Modules.Parameter p) => [new ParamGroup { Index = 0, LrBase = 1e-3, LrScale = 1, WeightDecay = 0.1, Params = [("w", p)], Lr = 1e-3 }];

        var pa = P();
        var a = new AdamW(Groups(pa), cfg);
        a.Step((_, _) => g1);
        string dir = Path.Combine(Path.GetTempPath(), "sam3-adamw-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            string path = Path.Combine(dir, "optim.safetensors");
            a.Save(path);
            a.Step((_, _) => g2);

            var pb = P();
            var b0 = new AdamW(Groups(pb), cfg);
            b0.Step((_, _) => g1);
            var b = new AdamW(Groups(pb), cfg);
            b.Load(path);
            Assert.That(b.StateCount, Is.EqualTo(1));
            b.Step((_, _) => g2);
            Assert.That(Same(pb, pa), Is.True, "resumed step equals the uninterrupted one bit for bit");
        }
        finally { Directory.Delete(dir, true); }
    }
}
