using System.Diagnostics;
using System.Globalization;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace Sam3.Cli;

/// <summary>
/// Progress of one long step on stderr. On a terminal: a Spectre.Console progress bar (description, bar, percentage,
/// rate in the step's unit, remaining time), drawn by Spectre's live display on a thread of its own while the command
/// works. Otherwise (logs, pipes): plain lines, one each time another 10 % is reached, so an error stays easy to find.
/// Dispose ends the bar before anything else is written (the summary or an error line).
/// </summary>
internal sealed class CliProgress : IDisposable
{
    /// <summary>Formats a plain (non-terminal) line from done, total and elapsed time.</summary>
    public delegate string PlainLine(double done, double? total, TimeSpan elapsed);

    private readonly TextWriter _stderr;
    private readonly double? _total;
    private readonly string _unit;
    private readonly string _label;
    private readonly PlainLine _plain;
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly ProgressTask? _task;
    private readonly ManualResetEventSlim _stop = new();
    private readonly Thread? _render;
    private double _done;
    private int _nextDecile = 10;
    private bool _disposed;

    private CliProgress(TextWriter stderr, bool terminal, string label, double? total, string unit, double alreadyDone, PlainLine? plain)
    {
        _stderr = stderr;
        _total = total;
        _unit = unit;
        _label = label;
        _done = alreadyDone;
        _plain = plain ?? DefaultLine;
        if (_total is > 0) _nextDecile = (int)(alreadyDone * 10 / _total.Value + 1) * 10;
        if (!terminal) return;

        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(stderr),
            Ansi = AnsiSupport.Detect,
            Interactive = InteractionSupport.Yes,
        });
        var started = new ManualResetEventSlim();
        ProgressTask? task = null;
        _render = new Thread(() =>
        {
            console.Progress()
                .AutoClear(false)
                .HideCompleted(false)
                .Columns(total is null
                    ? [new TaskDescriptionColumn(), new SpinnerColumn(), new RateColumn(unit), new ElapsedTimeColumn()]
                    : [new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RateColumn(unit), new RemainingTimeColumn()])
                .Start(ctx =>
                {
                    task = ctx.AddTask(label, maxValue: total is > 0 ? total.Value : 1);
                    task.IsIndeterminate = total is null;
                    task.Value = alreadyDone;
                    started.Set();
                    _stop.Wait();
                    if (total is not null && task.Value < task.MaxValue && _finishedAll) task.Value = task.MaxValue;
                    task.StopTask();
                });
        }) { IsBackground = true, Name = "sam3 progress" };
        _render.Start();
        started.Wait();
        _task = task;
    }

    private bool _finishedAll;

    /// <summary>Starts the progress of a step of <paramref name="total"/> units (null: unknown), some maybe done already.</summary>
    public static CliProgress Start(CliContext context, string label, double? total, string unit, double alreadyDone = 0, PlainLine? plain = null) =>
        new(context.Stderr, context.StderrIsTerminal, label, total, unit, alreadyDone, plain);

    /// <inheritdoc cref="Start(CliContext, string, double?, string, double, PlainLine?)"/>
    public static CliProgress Start(TextWriter stderr, bool terminal, string label, double? total, string unit, double alreadyDone = 0, PlainLine? plain = null) =>
        new(stderr, terminal, label, total, unit, alreadyDone, plain);

    /// <summary>Sets the amount done (and an optional detail shown after the label on a terminal).</summary>
    public void Report(double done, string? detail = null)
    {
        _done = done;
        if (_task is not null)
        {
            _task.Value = done;
            if (detail is not null) _task.Description = $"{_label} {Markup.Escape(detail)}";
            return;
        }
        if (_total is not > 0) return;
        double percent = done * 100 / _total.Value;
        if (percent >= _nextDecile || done >= _total.Value)
        {
            _stderr.WriteLine(_plain(done, _total, _clock.Elapsed));
            _stderr.Flush();
            _nextDecile = (int)(percent / 10 + 1) * 10;
            if (done >= _total.Value) _nextDecile = int.MaxValue;
        }
    }

    /// <summary>Adds <paramref name="amount"/> to the amount done.</summary>
    public void Increment(double amount = 1, string? detail = null) => Report(_done + amount, detail);

    /// <summary>Marks the whole step done (the bar shows 100 % when it closes).</summary>
    public void Complete()
    {
        _finishedAll = true;
        if (_total is { } t) Report(t);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _stop.Set();
        _render?.Join();
        _stop.Dispose();
    }

    private string DefaultLine(double done, double? total, TimeSpan elapsed)
    {
        double rate = done / Math.Max(1e-9, elapsed.TotalSeconds);
        var eta = TimeSpan.FromSeconds(rate > 0 && total is { } t ? Math.Max(0, t - done) / rate : 0);
        return string.Format(CultureInfo.InvariantCulture, "{0}: {1}/{2} {3} ({4:F0}%), {5:F2} {3}/s, ETA {6}",
            _label, done, total, _unit, done * 100 / Math.Max(1e-9, total ?? done), rate, eta.ToString(@"h\:mm\:ss", CultureInfo.InvariantCulture));
    }

    /// <summary>The task's speed in the step's unit per second.</summary>
    private sealed class RateColumn(string unit) : ProgressColumn
    {
        public override IRenderable Render(RenderOptions options, ProgressTask task, TimeSpan deltaTime) =>
            new Text(task.Speed is { } s ? string.Format(CultureInfo.InvariantCulture, "{0:F2} {1}/s", s, unit) : $"-- {unit}/s");
    }
}
