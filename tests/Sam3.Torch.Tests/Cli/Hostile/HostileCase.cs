using System.Security.Cryptography;
using System.Text;
using NUnit.Framework;
using Sam3.Torch.IO;
using Sam3.Torch.Tests.Infrastructure;
using Sam3.Torch.Visualization;

namespace Sam3.Torch.Tests.Cli.Hostile;

/// <summary>
/// One hostile (bad or unusual) input to the sam3 CLI. <see cref="Arrange"/> makes the case's files in its sandbox and
/// returns the arguments. The contract checked for every case: the exit code; for failures exactly one stderr line
/// "sam3: ..." containing <see cref="Fragment"/> (no stack trace, no native text, no "internal error"); the inputs
/// byte-identical afterwards; nothing new or changed in the sandbox (no partial output, no temporary or lock file).
/// Successful cases (<see cref="Exit"/> 0) check their outputs with <see cref="Verify"/> instead.
/// </summary>
public sealed record HostileCase(string Kind, string Name, Func<HostileSandbox, string[]> Arrange, int Exit, string? Fragment,
    Action<HostileSandbox, HostileResult>? Verify = null)
{
    public override string ToString() => $"{Kind}.{Name}";
}

public sealed record HostileResult(int ExitCode, string Out, string Err)
{
    public string[] ErrLines => Err.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.TrimEnd('\r')).ToArray();
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Out}\n--- stderr\n{Err}";
}

/// <summary>
/// Files for the cases: <see cref="Shared"/> (made once: a copy of the tiny checkpoint, the vocabulary, two small
/// generated images) and a per-case <see cref="Root"/> with <see cref="Out"/> as the usual output folder.
/// </summary>
public sealed class HostileSandbox
{
    public HostileSandbox(string shared, string root)
    {
        Shared = shared;
        Root = root;
        Directory.CreateDirectory(root);
    }

    public string Shared { get; }
    public string Root { get; }
    public string Out => Path.Combine(Root, "out");
    public string Model => Path.Combine(Shared, "tiny.safetensors");
    public string Vocab => Path.Combine(Shared, "bpe_simple_vocab_16e6.txt.gz");
    /// <summary>64x48 PNG.</summary>
    public string Png => Path.Combine(Shared, "img.png");
    /// <summary>40x32 JPEG.</summary>
    public string Jpg => Path.Combine(Shared, "img.jpg");

    public string P(params string[] parts) => Path.Combine([Root, .. parts]);

    public string Write(string name, byte[] bytes)
    {
        string path = P(name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    public string Write(string name, string text) => Write(name, Encoding.UTF8.GetBytes(text));

    public string Dir(params string[] parts)
    {
        string path = P(parts);
        Directory.CreateDirectory(path);
        return path;
    }

    public string Link(string name, string target)
    {
        string path = P(name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        if (Directory.Exists(target)) Directory.CreateSymbolicLink(path, target);
        else File.CreateSymbolicLink(path, target);
        return path;
    }

    /// <summary>sam3 segment with the tiny model and the given image(s); more options after.</summary>
    public string[] Segment(string image, params string[] more)
    {
        // --checkpoint, --config and --vocab given in more replace the defaults (each may appear once)
        var defaults = new List<string>();
        foreach (var (option, value) in new[] { ("--checkpoint", Model), ("--config", "tiny"), ("--vocab", Vocab) })
            if (!more.Contains(option)) defaults.AddRange([option, value]);
        return ["segment", .. defaults, "--image", image, "--out", Out, .. more];
    }

    public string[] SegmentText(params string[] more) => Segment(Png, ["--text", "cat", .. more]);

    // ------------------------------------------------------------ generated files

    public static byte[] PngBytes(int w, int h, int seed = 1) => ImageWriter.EncodePng(Pixels(w, h, seed));
    public static byte[] JpegBytes(int w, int h, int seed = 1) => ImageWriter.EncodeJpeg(Pixels(w, h, seed));

    private static RgbImage Pixels(int w, int h, int seed)
    {
        var rgb = new byte[w * h * 3];
        var rng = new Random(seed);
        rng.NextBytes(rgb);
        return new RgbImage(w, h, rgb);
    }

    /// <summary>A safetensors file from a header (JSON text) and data bytes.</summary>
    public static byte[] Safetensors(string header, byte[] data)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + h.Length + data.Length];
        BitConverter.GetBytes((long)h.Length).CopyTo(bytes, 0);
        h.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + h.Length);
        return bytes;
    }

    // ------------------------------------------------------------ state of the sandbox

    /// <summary>Every regular file under the folders (links listed by their target, not followed), with a hash.</summary>
    public static Dictionary<string, string> Snapshot(params string[] roots)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var root in roots)
        {
            if (!Directory.Exists(root)) continue;
            var stack = new Stack<string>([root]);
            while (stack.Count > 0)
            {
                string dir = stack.Pop();
                foreach (var entry in Directory.EnumerateFileSystemEntries(dir))
                {
                    var info = new FileInfo(entry);
                    if (info.LinkTarget is { } target) { result[entry] = "link->" + target; continue; }
                    if (Directory.Exists(entry)) { result[entry + "/"] = "dir"; stack.Push(entry); continue; }
                    if (entry.EndsWith(".sam3.lock", StringComparison.Ordinal)) { result[entry] = "lock"; continue; } // held open by a run: not readable
                    var kind = PathIdentity.Stat(entry).Kind;
                    result[entry] = kind == FileKind.Regular ? Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(entry))) : "special";
                }
            }
        }
        return result;
    }
}

/// <summary>Assertions of the contract.</summary>
internal static class HostileContract
{
    public static void AssertOneLineFailure(HostileResult r, int exit, string? fragment)
    {
        Assert.That(r.ExitCode, Is.EqualTo(exit), r.ToString());
        Assert.That(r.ErrLines, Has.Length.EqualTo(1), "exactly one stderr line\n" + r);
        string line = r.ErrLines[0];
        Assert.That(line, Does.StartWith("sam3: "), r.ToString());
        if (fragment is not null) Assert.That(line, Does.Contain(fragment).IgnoreCase, r.ToString());
        Assert.That(line, Does.Not.Contain("internal error"), r.ToString());
        Assert.That(r.Err, Does.Not.Contain("   at "), r.ToString());
        Assert.That(line, Does.Not.Contain("Exception:").And.Not.Contain("c10::").And.Not.Contain("libpng").And.Not.Contain("Exception of type"), r.ToString());
    }

    public static void AssertUnchanged(Dictionary<string, string> before, Dictionary<string, string> after, string what)
    {
        var added = after.Keys.Except(before.Keys).ToList();
        var removed = before.Keys.Except(after.Keys).ToList();
        var changed = before.Keys.Intersect(after.Keys).Where(k => before[k] != after[k]).ToList();
        Assert.That(added, Is.Empty, $"{what}: files appeared (partial output?)");
        Assert.That(removed, Is.Empty, $"{what}: files disappeared");
        Assert.That(changed, Is.Empty, $"{what}: files changed");
    }

    /// <summary>No temporary or lock file left anywhere under the folders.</summary>
    public static void AssertNoLeftovers(params string[] roots)
    {
        foreach (var (path, _) in HostileSandbox.Snapshot(roots))
        {
            string name = Path.GetFileName(path.TrimEnd('/'));
            Assert.That(name.EndsWith(".tmp") || name.EndsWith(".sam3.lock") || name.StartsWith(".sam3-write-test"), Is.False, $"left behind: {path}");
        }
    }
}
