using System.Reflection;
using NUnit.Framework;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Training;
using Sam3.Torch.Video;

namespace Sam3.Torch.Tests;

/// <summary>
/// The public API analyzer's overload rules, checked on the built assembly as the analyzer applies them: of a public
/// method's overloads at most one has optional parameters (RS0026), and that one has the most parameters (RS0027), so
/// adding a parameter later stays binary-compatible — except overloads already in PublicAPI.Shipped.txt (frozen; the
/// analyzer only flags an unshipped one). The call shapes the former optional parameters allowed still compile
/// (<see cref="CallShapes"/>).
/// </summary>
[TestFixture, Category("Fast")]
public class PublicApiOverloadTests
{
    [Test]
    public void AtMostOneOverloadWithOptionalParametersAndItHasTheMostParameters()
    {
        var problems = new List<string>();
        var shipped = File.ReadAllLines(Path.Combine(SharedData.RepoRoot, "src", "Sam3.Torch", "PublicAPI.Shipped.txt"));
        // shipped overloads of Type.Method with an optional parameter (an API line shows one as "name = value")
        int ShippedWithOptional(Type t, string method)
        {
            string prefix = t.FullName!.Replace('+', '.') + "." + method + "(";
            return shipped.Count(l => (l.StartsWith(prefix, StringComparison.Ordinal) || l.StartsWith("static " + prefix, StringComparison.Ordinal))
                                      && l.IndexOf(") -> ", StringComparison.Ordinal) is > 0 and var end
                                      && l[..end].Contains(" = ", StringComparison.Ordinal));
        }
        var types = typeof(Sam3Model).Assembly.GetExportedTypes();
        foreach (var type in types)
            foreach (var group in type.GetMethods(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly)
                         .Concat(type.GetMethods(BindingFlags.NonPublic | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly)
                             .Where(m => m.IsFamily || m.IsFamilyOrAssembly))
                         .Where(m => !m.IsSpecialName).GroupBy(m => m.Name))
            {
                var overloads = group.ToList();
                var withOptional = overloads.Where(m => m.GetParameters().Any(p => p.IsOptional)).ToList();
                if (withOptional.Count > 1 && withOptional.Count > ShippedWithOptional(type, group.Key))
                    problems.Add($"RS0026 {type.FullName}.{group.Key}: {withOptional.Count} overloads with optional parameters");
                else if (withOptional.Count == 1 && ShippedWithOptional(type, group.Key) == 0
                         && overloads.Any(m => m.GetParameters().Length > withOptional[0].GetParameters().Length))
                    problems.Add($"RS0027 {type.FullName}.{group.Key}: the overload with optional parameters is not the longest");
            }
        Assert.That(types, Does.Contain(typeof(Sam3VideoPredictor)).And.Contain(typeof(Sam3Evaluation)));
        Assert.That(ShippedWithOptional(typeof(Sam3VideoPredictor), "StartSession"), Is.EqualTo(2), "the shipped file is read");
        Assert.That(problems, Is.Empty);
    }

    /// <summary>Compiled, never run: every call shape of <c>StartStream</c> and <c>Sam3Evaluation.Evaluate</c> callers used.</summary>
    internal static void CallShapes(Sam3VideoPredictor p, Sam3Model model, BoxPrompt box, CancellationToken ct)
    {
        var o = new Sam3VideoStreamOptions();
        p.StartStream("person").Dispose();
        p.StartStream("person", o).Dispose();
        p.StartStream("person", options: o).Dispose();
        p.StartStream("person", null).Dispose();
        p.StartStream(box).Dispose();
        p.StartStream(box, "person").Dispose();
        p.StartStream(box, options: o).Dispose();
        var e = new Sam3EvaluationOptions();
        _ = Sam3Evaluation.Evaluate(model, "data/");
        _ = Sam3Evaluation.Evaluate(model, "data/", e);
        _ = Sam3Evaluation.Evaluate(model, "data/", null, ct);
        _ = Sam3Evaluation.Evaluate(model, "data/", options: e, cancellationToken: ct);
        _ = Sam3Evaluation.Evaluate(model, "data/", cancellationToken: ct);
        _ = Sam3Evaluation.Evaluate("ckpt/", "data/");
        _ = Sam3Evaluation.Evaluate("ckpt/", "data/", e, cancellationToken: ct);
    }
}
