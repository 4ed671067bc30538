using System.Globalization;

namespace Sam3.Cli;

/// <summary>
/// Progress of a conversion on stderr, in percent of the tensor bytes written (tensor count when there are none).
/// On a terminal one line is rewritten in place (<c>\r</c>) at every percent change; otherwise one line is written
/// each time another 10 % is reached (at most ten lines), so logs stay short.
/// </summary>
internal sealed class ConvertProgress : IProgress<(int done, int total, string key)>
{
    private readonly TextWriter _writer;
    private readonly bool _terminal;
    private readonly IReadOnlyDictionary<string, long> _bytesByKey;
    private readonly long _totalBytes;
    private readonly string _label;
    private long _bytesDone;
    private int _lastPercent = -1;
    private int _nextDecile = 10;
    private bool _lineOpen;

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
        int percent = _totalBytes > 0
            ? (int)Math.Min(100, _bytesDone * 100 / _totalBytes)
            : total > 0 ? done * 100 / total : 100;
        if (done >= total) percent = 100;
        string line = string.Format(CultureInfo.InvariantCulture, "{0}: {1,3}% ({2:N0}/{3:N0} tensors)", _label, percent, done, total);
        if (_terminal)
        {
            if (percent == _lastPercent && done < total) return;
            _writer.Write("\r" + line);
            _lineOpen = true;
            if (done >= total) Finish();
        }
        else if (percent >= _nextDecile)
        {
            _writer.WriteLine(line);
            _nextDecile = (percent / 10 + 1) * 10;
        }
        _lastPercent = percent;
        _writer.Flush();
    }

    /// <summary>Ends the rewritten terminal line (before a summary or an error message).</summary>
    public void Finish()
    {
        if (!_lineOpen) return;
        _writer.WriteLine();
        _lineOpen = false;
    }
}
