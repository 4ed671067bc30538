using System.Globalization;

namespace Sam3.Cli;

/// <summary>
/// Progress of a conversion or a checkpoint load on stderr, in percent of the tensor bytes written (tensor count when
/// the sizes are not known). On a terminal a Spectre.Console bar (<see cref="CliProgress"/>) with the rate in tensors/s
/// and the remaining time; otherwise one line each time another 10 % is reached (at most ten lines), so logs stay short.
/// </summary>
internal sealed class ConvertProgress : IProgress<(int done, int total, string key)>
{
    private readonly TextWriter _writer;
    private readonly bool _terminal;
    private readonly IReadOnlyDictionary<string, long> _bytesByKey;
    private readonly long _totalBytes;
    private readonly string _label;
    private long _bytesDone;
    private int _nextDecile = 10;
    private CliProgress? _bar;

    public ConvertProgress(TextWriter writer, bool terminal, IReadOnlyDictionary<string, long> bytesByKey, string label = "convert")
    {
        _writer = writer;
        _terminal = terminal;
        _bytesByKey = bytesByKey;
        _totalBytes = bytesByKey.Values.Sum();
        _label = label;
    }

    public void Report((int done, int total, string key) value)
    {
        var (done, total, key) = value;
        _bytesDone += _bytesByKey.TryGetValue(key, out var b) ? b : 0;
        if (_terminal)
        {
            _bar ??= CliProgress.Start(_writer, true, _label, total, "tensors");
            _bar.Report(done);
            if (done >= total) Finish();
            return;
        }
        int percent = _totalBytes > 0
            ? (int)Math.Min(100, _bytesDone * 100 / _totalBytes)
            : total > 0 ? done * 100 / total : 100;
        if (done >= total) percent = 100;
        if (percent < _nextDecile) return;
        _writer.WriteLine(string.Format(CultureInfo.InvariantCulture, "{0}: {1,3}% ({2:N0}/{3:N0} tensors)", _label, percent, done, total));
        _writer.Flush();
        _nextDecile = (percent / 10 + 1) * 10;
    }

    /// <summary>Ends the terminal bar (before a summary or an error message).</summary>
    public void Finish()
    {
        _bar?.Dispose();
        _bar = null;
    }
}
