using System.Globalization;
using System.Text.RegularExpressions;
using NUnit.Framework;
using Sam3.Torch.Parity;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Tests.Training;

/// <summary>Dropout / drop-path of the training mode against upstream's training build, and the deterministic switch.</summary>
[TestFixture, Category("Parity"), Category("Fast")]
public class TrainingModeTests
{
    /// <summary>
    /// The fixture's <c>parameters.determinism.changes</c> lists every stochastic module of upstream's training build with
    /// its probability ("Dropout.p 0.1 -> 0"). Our layers hold one residual-dropout probability where upstream has
    /// <c>dropout1..4</c>/<c>catext_dropout</c> children, so those map to their parent module.
    /// </summary>
    [Test]
    public void ConfiguredProbabilitiesAreUpstreamsTrainingBuild()
    {
        using var fx = Fixtures.Tiny(TrainingFixture.Scenario);
        var expected = new Dictionary<(string, string), double>();
        foreach (var change in fx.Parameters.GetProperty("determinism").GetProperty("changes").EnumerateArray())
        {
            var text = change.GetProperty("change").GetString()!;
            var m = Regex.Match(text, @"^(\w+)\.(\w+) ([0-9.eE+-]+) -> 0$");
            Assert.That(m.Success, Is.True, text);
            double p = double.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture);
            foreach (var module in change.GetProperty("modules").EnumerateArray().Select(x => x.GetString()!))
            {
                var key = m.Groups[1].Value switch
                {
                    "DropPath" => (module, "drop_path"),
                    "Dropout" => (module[..module.LastIndexOf('.')], "dropout"),
                    _ => (module, "attention_dropout"), // MultiheadAttention(Wrapper).dropout
                };
                expected[key] = p;
            }
        }

        using var model = TrainingFixture.LoadTinyModel();
        var configured = TrainingMode.Apply(model);
        Assert.That(model.training, Is.True);
        var active = configured.Where(s => s.Probability > 0).ToDictionary(s => (s.Module, s.Kind), s => s.Probability);
        Assert.That(active.Keys.OrderBy(k => k.Item1).ThenBy(k => k.Item2), Is.EqualTo(expected.Keys.OrderBy(k => k.Item1).ThenBy(k => k.Item2)));
        foreach (var (key, p) in expected) Assert.That(active[key], Is.EqualTo(p).Within(1e-6), key.ToString());

        var deterministic = TrainingMode.Apply(model, TrainingModelOptions.DeterministicRun);
        Assert.That(deterministic.Select(s => (s.Module, s.Kind)), Is.EqualTo(configured.Select(s => (s.Module, s.Kind))));
        Assert.That(deterministic.All(s => s.Probability == 0), Is.True);
        Assert.That(model.training, Is.True, "deterministic still trains (DAC, aux outputs)");

        var custom = TrainingMode.Apply(model, new TrainingModelOptions { DropPathRate = 0.3 });
        Assert.That(custom.Single(s => s.Module.EndsWith("blocks.3.drop_path")).Probability, Is.EqualTo(0.3).Within(1e-12));
        Assert.That(custom.Single(s => s.Module.EndsWith("blocks.0.drop_path")).Probability, Is.EqualTo(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => TrainingMode.Apply(model, new TrainingModelOptions { DropPathRate = 1.0 }));
    }

    [Test]
    public void DropoutMakesTrainingStochasticUnlessDeterministic()
    {
        using var fx = Fixtures.Tiny(TrainingFixture.Scenario);
        using var model = TrainingFixture.LoadTinyModel();
        var tokenizer = TrainingFixture.Tokenizer();
        using var batch = TrainingFixture.Batch(fx);
        using var noGrad = torch.no_grad();

        double Diff()
        {
            using var scope = NewDisposeScope();
            using var a = Sam3TrainingForward.Forward(model, tokenizer, batch);
            using var b = Sam3TrainingForward.Forward(model, tokenizer, batch);
            return TrainingFixture.Named(a).Zip(TrainingFixture.Named(b)).Max(p => (p.First.Value - p.Second.Value).abs().max().item<float>());
        }

        // (the deterministic forward is exact parity with the fixture: TrainingForwardParityTests)
        torch.manual_seed(1);
        TrainingMode.Apply(model);
        Assert.That(Diff(), Is.GreaterThan(1e-3), "configured dropout / drop-path must change the outputs between runs");

        TrainingMode.Exit(model);
        Assert.Throws<Sam3Exception>(() => Sam3TrainingForward.Forward(model, tokenizer, batch));
    }
}
