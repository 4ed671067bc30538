using System.Text;
using System.Text.RegularExpressions;
using NUnit.Framework;
using Sam3.Cli;
using Sam3.Torch.Tests.Infrastructure;
using YamlDotNet.Serialization;

namespace Sam3.Torch.Tests.Cli;

/// <summary>
/// The job files of docs/scale-out.md, parsed: the SLURM job array (#SBATCH directives, array size = shard count, each
/// task's --shard and --out) and the Kubernetes Indexed Job (YAML: completion mode, completions = shard count, the
/// index in --shard); the sam3 command line of each is checked against the real option parser.
/// </summary>
[TestFixture, Category("Fast")]
public class ScaleOutExamplesTests
{
    private static string Docs(params string[] parts) => Path.Combine([SharedData.RepoRoot, "docs", .. parts]);

    /// <summary>Shell-like split: whitespace separates words, double quotes group, backslash-newline continues.</summary>
    internal static List<string> ShellWords(string command)
    {
        var words = new List<string>();
        var cur = new StringBuilder();
        bool quoted = false, any = false;
        foreach (char c in command.Replace("\\\n", " "))
        {
            if (c == '"') { quoted = !quoted; any = true; continue; }
            if (!quoted && char.IsWhiteSpace(c))
            {
                if (any) words.Add(cur.ToString());
                cur.Clear();
                any = false;
                continue;
            }
            cur.Append(c);
            any = true;
        }
        Assert.That(quoted, Is.False, "unbalanced quotes in: " + command);
        if (any) words.Add(cur.ToString());
        return words;
    }

    private static string Expand(string word, IReadOnlyDictionary<string, string> vars) =>
        Regex.Replace(word, @"\$\{(\w+)\}|\$(\w+)", m =>
        {
            string name = m.Groups[1].Success ? m.Groups[1].Value : m.Groups[2].Value;
            return vars.TryGetValue(name, out var v) ? v : throw new AssertionException($"undefined variable {name} in '{word}'");
        });

    /// <summary>The options exist (the parser accepts them; --help stops before anything runs).</summary>
    private static void AssertOptionsAccepted(IEnumerable<string> args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Program.Run([.. args, "--help"], o, e);
        Assert.That(code, Is.EqualTo(0), $"sam3 {string.Join(' ', args)}: {e}");
    }

    private static (List<string> Lines, Dictionary<string, string> Directives, Dictionary<string, string> Vars) ReadSbatch(string path)
    {
        var text = File.ReadAllText(path).Replace("\r\n", "\n");
        Assert.That(text, Does.StartWith("#!/bin/bash\n"));
        var lines = text.Split('\n').ToList();
        var directives = new Dictionary<string, string>();
        bool commandsStarted = false;
        foreach (var l in lines)
        {
            if (l.StartsWith("#SBATCH "))
            {
                Assert.That(commandsStarted, Is.False, "SLURM ignores #SBATCH lines after the first command: " + l);
                var m = Regex.Match(l, @"^#SBATCH (--[\w-]+)(?:=(\S+))?\s*$");
                Assert.That(m.Success, Is.True, "malformed directive: " + l);
                directives[m.Groups[1].Value] = m.Groups[2].Value;
            }
            else if (l.Length > 0 && !l.StartsWith('#')) commandsStarted = true;
        }
        var vars = new Dictionary<string, string>();
        foreach (var l in lines)
        {
            var m = Regex.Match(l, @"^(\w+)=(\S+)");
            if (m.Success) vars[m.Groups[1].Value] = m.Groups[2].Value;
        }
        return (lines, directives, vars);
    }

    [Test]
    public void SlurmArrayRunsOneShardPerTask()
    {
        var (lines, directives, vars) = ReadSbatch(Docs("examples", "sam3-label.sbatch"));
        Assert.That(directives.Keys, Is.SupersetOf(new[] { "--job-name", "--array", "--gres", "--output", "--requeue" }));
        var array = Regex.Match(directives["--array"], @"^0-(\d+)$");
        Assert.That(array.Success, Is.True, "--array=0-(N-1)");
        int tasks = int.Parse(array.Groups[1].Value) + 1;
        Assert.That(int.Parse(vars["SHARDS"]), Is.EqualTo(tasks), "SHARDS = number of array tasks");
        Assert.That(directives["--output"], Does.Contain("%a"), "one log per task");

        string script = string.Join("\n", lines);
        int start = script.IndexOf("sam3 label", StringComparison.Ordinal);
        Assert.That(start, Is.GreaterThan(0));
        int end = start;
        while (end < script.Length && !(script[end] == '\n' && script[end - 1] != '\\')) end++;
        var words = ShellWords(script[start..end]);
        var outs = new HashSet<string>();
        for (int task = 0; task < tasks; task++)
        {
            var v = new Dictionary<string, string>(vars) { ["SLURM_ARRAY_TASK_ID"] = task.ToString() };
            var args = words.Skip(1).Select(w => Expand(w, v)).ToList();
            AssertOptionsAccepted(args);
            var shard = LabelCommand.ParseShard(args[args.IndexOf("--shard") + 1]);
            Assert.That(shard, Is.EqualTo((task, tasks)));
            outs.Add(args[args.IndexOf("--out") + 1]);
        }
        Assert.That(outs, Has.Count.EqualTo(tasks), "each task has its own --out");

        var (mergeLines, mergeDirectives, mergeVars) = ReadSbatch(Docs("examples", "sam3-label-merge.sbatch"));
        Assert.That(mergeDirectives.ContainsKey("--array"), Is.False);
        Assert.That(int.Parse(mergeVars["SHARDS"]), Is.EqualTo(tasks));
        Assert.That(string.Join("\n", mergeLines), Does.Contain("sam3 label merge --out"));
    }

    private static Dictionary<object, object> Map(object? o) => o as Dictionary<object, object> ?? throw new AssertionException($"expected a mapping, got {o}");
    private static List<object> Seq(object? o) => o as List<object> ?? throw new AssertionException($"expected a sequence, got {o}");

    [Test]
    public void KubernetesIndexedJobRunsOneShardPerIndex()
    {
        var yaml = new DeserializerBuilder().Build();
        var job = Map(yaml.Deserialize<object>(File.ReadAllText(Docs("examples", "sam3-label-job.yaml"))));
        Assert.That(job["apiVersion"], Is.EqualTo("batch/v1"));
        Assert.That(job["kind"], Is.EqualTo("Job"));
        var spec = Map(job["spec"]);
        Assert.That(spec["completionMode"], Is.EqualTo("Indexed"));
        int completions = int.Parse((string)spec["completions"]);
        Assert.That(int.Parse((string)spec["parallelism"]), Is.InRange(1, completions));
        var pod = Map(Map(spec["template"])["spec"]);
        Assert.That(pod["restartPolicy"], Is.AnyOf("Never", "OnFailure"));
        var container = Map(Seq(pod["containers"]).Single());
        Assert.That(Seq(container["command"]), Is.EqualTo(new[] { "/bin/sh", "-c" }));
        string line = (string)Seq(container["args"]).Single();
        var words = ShellWords(line);
        Assert.That(words.Take(3), Is.EqualTo(new[] { "exec", "sam3", "label" }));
        var outs = new HashSet<string>();
        for (int index = 0; index < completions; index++)
        {
            var args = words.Skip(2).Select(w => Expand(w, new Dictionary<string, string> { ["JOB_COMPLETION_INDEX"] = index.ToString() })).ToList();
            AssertOptionsAccepted(args);
            Assert.That(LabelCommand.ParseShard(args[args.IndexOf("--shard") + 1]), Is.EqualTo((index, completions)));
            outs.Add(args[args.IndexOf("--out") + 1]);
        }
        Assert.That(outs, Has.Count.EqualTo(completions), "each index has its own --out");
        // every mount has its volume
        var volumes = Seq(pod["volumes"]).Select(v => (string)Map(v)["name"]).ToHashSet();
        foreach (var m in Seq(container["volumeMounts"])) Assert.That(volumes, Does.Contain((string)Map(m)["name"]));

        var merge = Map(yaml.Deserialize<object>(File.ReadAllText(Docs("examples", "sam3-label-merge-job.yaml"))));
        Assert.That(merge["kind"], Is.EqualTo("Job"));
        var mergeContainer = Map(Seq(Map(Map(Map(merge["spec"])["template"])["spec"])["containers"]).Single());
        var mergeWords = ShellWords((string)Seq(mergeContainer["args"]).Single());
        Assert.That(mergeWords.Take(4), Is.EqualTo(new[] { "exec", "sam3", "label", "merge" }));
        AssertOptionsAccepted(mergeWords.Skip(2));
        var shardFiles = mergeWords.Skip(4).Where(w => !w.StartsWith("--") && w != mergeWords[mergeWords.IndexOf("--out") + 1]).ToList();
        Assert.That(shardFiles, Is.EquivalentTo(outs), "the merge job joins exactly the shards' outputs");
    }

    [Test]
    public void ScaleOutDocLinksTheExamples()
    {
        string doc = File.ReadAllText(Docs("scale-out.md"));
        var links = Regex.Matches(doc, @"\]\((examples/[^)]+)\)").Select(m => m.Groups[1].Value).Distinct().ToList();
        Assert.That(links, Is.EquivalentTo(new[] { "examples/sam3-label.sbatch", "examples/sam3-label-merge.sbatch", "examples/sam3-label-job.yaml", "examples/sam3-label-merge-job.yaml" }));
        foreach (var l in links) Assert.That(File.Exists(Docs(l)), Is.True, l);
    }
}
