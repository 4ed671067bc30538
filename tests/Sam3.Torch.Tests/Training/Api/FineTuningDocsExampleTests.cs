using System.Text.RegularExpressions;
using NUnit.Framework;
using Sam3.Torch.Tests.Cli;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;

namespace Sam3.Torch.Tests.Training.Api;

/// <summary>
/// The "From .NET" example of docs/fine-tuning.md is the body of <see cref="Example"/> (checked line by line), so it
/// compiles; it runs here in a folder laid out as the example expects (sam3/ with the tiny model, data/ with the
/// two synthetic shape images as train and valid).
/// </summary>
[TestFixture, Category("Slow")]
public class FineTuningDocsExampleTests
{
    private static void Example()
    {
        // begin docs/fine-tuning.md
        using var stop = new CancellationTokenSource(); // stop.Cancel() saves a checkpoint and returns; run again to resume
        var result = Sam3FineTuning.Run(new Sam3FineTuningOptions
        {
            CheckpointPath = "sam3/",   // sam3.pt (or model.safetensors) + bpe_simple_vocab_16e6.txt.gz
            DataDirectory = "data/",    // a Roboflow COCO export: train/, valid/
            OutputDirectory = "runs/first",
            Freeze = Sam3FreezePreset.AllBackbones,
            Epochs = 2,
            BatchSize = 2,
        }, new Progress<Sam3TrainingProgress>(p => Console.WriteLine($"step {p.Step}/{p.TotalSteps}: loss {p.Loss:F4}, ETA {p.Eta:hh\\:mm\\:ss}")), stop.Token);
        Console.WriteLine($"box AP {result.Baseline?.Box.AP:F3} -> {result.FineTuned?.Box.AP:F3}{(result.IsWorseThanBaseline ? " (worse!)" : "")}");

        // the result is an ordinary checkpoint: load it, evaluate it on another split, segment with it
        using var model = Sam3Model.Load(result.ModelPath!, new Sam3ModelOptions { TokenizerPath = "sam3/bpe_simple_vocab_16e6.txt.gz" });
        var valid = Sam3Evaluation.Evaluate(model, "data/", new Sam3EvaluationOptions { Split = "valid" });
        Console.WriteLine($"mask AP {valid.Mask?.AP:F3}, mask cgF1 {valid.MaskCgF1?.CgF1:F3}");
        // end docs/fine-tuning.md
    }

    [Test]
    public void DocsExampleIsThisCode()
    {
        string doc = File.ReadAllText(Path.Combine(SharedData.RepoRoot, "docs", "fine-tuning.md")).ReplaceLineEndings("\n");
        var m = Regex.Match(doc, @"## From \.NET.*?```csharp\n(.*?)```", RegexOptions.Singleline);
        Assert.That(m.Success, "docs/fine-tuning.md has a 'From .NET' section with a csharp block");
        string source = File.ReadAllText(Path.Combine(SharedData.RepoRoot, "tests", "Sam3.Torch.Tests", "Training", "Api", "FineTuningDocsExampleTests.cs"))
            .ReplaceLineEndings("\n");
        var body = Regex.Match(source, @"// begin docs/fine-tuning\.md\n(.*?)\n\s*// end docs/fine-tuning\.md", RegexOptions.Singleline).Groups[1].Value;
        var code = string.Join("\n", body.Split('\n').Select(l => l.Length >= 8 ? l[8..] : l.TrimStart())) + "\n";
        Assert.That(m.Groups[1].Value, Is.EqualTo(code));
    }

    [Test]
    public void DocsExampleRuns()
    {
        string dir = Directory.CreateTempSubdirectory("sam3-ftdocs-").FullName;
        string previousDir = Environment.CurrentDirectory;
        var previousOut = Console.Out;
        var output = new StringWriter();
        try
        {
            string sam3 = Directory.CreateDirectory(Path.Combine(dir, "sam3")).FullName;
            File.CreateSymbolicLink(Path.Combine(sam3, "model.safetensors"), SharedData.Parity("tiny", "model.safetensors"));
            File.CreateSymbolicLink(Path.Combine(sam3, "config.json"), SharedData.Parity("tiny", "config.json"));
            File.CreateSymbolicLink(Path.Combine(sam3, "bpe_simple_vocab_16e6.txt.gz"), FinetuneWorkflowTests.Vocab);
            string data = SyntheticShapes.Write(Path.Combine(dir, "data"), SyntheticShapes.Default.Take(2).ToList()); // train/ and the same as valid/
            string valid = Directory.CreateDirectory(Path.Combine(data, "valid")).FullName;
            foreach (var f in Directory.GetFiles(Path.Combine(data, "train"))) File.Copy(f, Path.Combine(valid, Path.GetFileName(f)));
            Environment.CurrentDirectory = dir;
            Console.SetOut(TextWriter.Synchronized(output));
            Example();
        }
        finally
        {
            Console.SetOut(previousOut);
            Environment.CurrentDirectory = previousDir;
        }
        try
        {
            string text = output.ToString();
            TestContext.Out.WriteLine(text);
            Assert.That(File.Exists(Path.Combine(dir, "runs", "first", "model.safetensors")));
            Assert.That(text, Does.Match(@"box AP -?\d\.\d{3} -> -?\d\.\d{3}"));
            Assert.That(text, Does.Match(@"mask AP -?\d\.\d{3}, mask cgF1 (-?\d\.\d{3}|NaN)"));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
