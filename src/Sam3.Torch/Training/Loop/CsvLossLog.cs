using System.Globalization;
using System.Text;

namespace Sam3.Torch.Training.Loop;

/// <summary>
/// One CSV row of loss terms per optimizer step: <c>step,epoch,where,core_loss,grad_norm,steps_per_s,&lt;terms…&gt;</c>. The
/// header is written when the file is new; an existing file (a resumed run) is appended to with its own column order.
/// Each row goes out in one append call.
/// </summary>
internal sealed class CsvLossLog(string path)
{
    private static readonly string[] Fixed = ["step", "epoch", "where", "core_loss", "grad_norm", "steps_per_s"];
    private string[]? _terms;

    public string Path { get; } = path;

    public void Append(TrainerStepReport r)
    {
        if (_terms is null)
        {
            if (File.Exists(Path) && File.ReadLines(Path).FirstOrDefault() is { Length: > 0 } header)
                _terms = header.Split(',').Skip(Fixed.Length).ToArray();
            else
            {
                _terms = r.Losses.Select(p => p.Key).ToArray();
                var dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(Path));
                if (dir is not null) Directory.CreateDirectory(dir);
                File.WriteAllText(Path, string.Join(",", Fixed.Concat(_terms)) + "\n");
            }
        }
        var values = r.Losses.ToDictionary(p => p.Key, p => p.Value, StringComparer.Ordinal);
        var sb = new StringBuilder();
        sb.Append(r.Step.ToString(CultureInfo.InvariantCulture)).Append(',').Append(r.Epoch.ToString(CultureInfo.InvariantCulture));
        foreach (var v in new[] { r.Where, r.CoreLoss, r.GradNorm, r.StepsPerSecond }) sb.Append(',').Append(F(v));
        foreach (var t in _terms) sb.Append(',').Append(values.TryGetValue(t, out var v) ? F(v) : "");
        sb.Append('\n');
        File.AppendAllText(Path, sb.ToString());
    }

    /// <summary>
    /// Keeps the header and the rows of steps ≤ <paramref name="step"/> (a resumed run redoes the later ones); a last line
    /// without its newline (a killed append) goes too. Rewritten atomically (temporary file, then rename).
    /// </summary>
    public static void TruncateAfter(string path, int step)
    {
        if (!File.Exists(path)) return;
        string text = File.ReadAllText(path);
        var lines = text.Split('\n');
        var keep = new StringBuilder();
        bool changed = false;
        for (int i = 0; i < lines.Length; i++)
        {
            bool complete = i < lines.Length - 1; // the piece after the last '\n' is empty or a partial row
            if (!complete) { changed |= lines[i].Length > 0; break; }
            if (i > 0)
            {
                int comma = lines[i].IndexOf(',');
                if (comma <= 0 || !int.TryParse(lines[i].AsSpan(0, comma), NumberStyles.Integer, CultureInfo.InvariantCulture, out int s) || s > step)
                {
                    changed = true;
                    continue;
                }
            }
            keep.Append(lines[i]).Append('\n');
        }
        if (!changed) return;
        string full = System.IO.Path.GetFullPath(path);
        string temp = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(full)!, "." + System.IO.Path.GetFileName(full) + ".tmp");
        File.WriteAllText(temp, keep.ToString());
        File.Move(temp, full, overwrite: true);
    }

    private static string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);
}
