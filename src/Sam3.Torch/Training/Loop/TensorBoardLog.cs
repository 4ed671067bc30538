using System.Globalization;
using Sam3.Torch.Training.Optim;

namespace Sam3.Torch.Training.Loop;

/// <summary>
/// TensorBoard event files (<see cref="TfEventFile"/>: TFRecord framing + protobuf <c>Event</c>s, no Python): per optimizer
/// step the scalars <c>loss/core</c>, <c>loss/&lt;term&gt;</c>, <c>grad_norm</c> (when clipping) and <c>lr/group&lt;i&gt;</c>
/// for each distinct group lr, and <see cref="AppendEvaluation"/> for AP/cgF1. Each run (and each resume) writes its own
/// events file in the folder, named to sort after the earlier ones, as TensorBoard expects.
/// <para>
/// A training session starts its file with <c>SessionLog{status: START}</c> at the first step it logs. TensorBoard's event
/// accumulator (<c>_CheckForRestartAndMaybePurge</c>, for <c>brain.Event:2</c> files) takes every START after a run's first
/// as a restart and purges the events already read at that step or later: the steps a killed run logged after its last
/// checkpoint, which the resumed run logs again, are shown once (the resumed run's). TensorBoard's Rust data server drops
/// them too, per tag, when a step comes again.
/// </para>
/// </summary>
internal sealed class TensorBoardLog
{
    private readonly TfEventFile _file;

    public string Directory { get; }

    /// <summary>The event file this log appends to.</summary>
    public string FilePath => _file.Path;

    /// <param name="directory">The run folder (created when missing).</param>
    /// <param name="sessionStartStep">
    /// The first step this training session will log (the resume step + 1; 1 for a fresh run): a <c>SessionLog.START</c>
    /// event at it purges what an earlier, killed session logged from that step on. Null for a log that only adds to a
    /// finished run (the evaluation figures) and must purge nothing.
    /// </param>
    public TensorBoardLog(string directory, int? sessionStartStep = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        if (sessionStartStep is < 0) throw new ArgumentOutOfRangeException(nameof(sessionStartStep), sessionStartStep, "must not be negative");
        Directory = Path.GetFullPath(directory);
        _file = TfEventFile.Create(Directory);
        if (sessionStartStep is { } step)
            _file.WriteSessionStart(step, step <= 1 ? "training started" : $"training resumed at step {step}");
    }

    public void Append(TrainerStepReport r, IReadOnlyList<ParamGroup> groups)
    {
        var scalars = new List<KeyValuePair<string, float>> { new("loss/core", (float)r.CoreLoss) };
        foreach (var (key, value) in r.Losses) scalars.Add(new("loss/" + key, (float)value));
        if (double.IsFinite(r.GradNorm)) scalars.Add(new("grad_norm", (float)r.GradNorm));
        var seen = new HashSet<double>();
        foreach (var g in groups)
            if (seen.Add(g.Lr)) scalars.Add(new("lr/group" + g.Index.ToString(CultureInfo.InvariantCulture), (float)g.Lr));
        _file.WriteScalars(r.Step, scalars);
    }

    /// <summary>One scalar per (name, value) at <paramref name="step"/> under <c>eval/</c> (non-finite values skipped).</summary>
    public void AppendEvaluation(int step, IEnumerable<KeyValuePair<string, double>> values) =>
        _file.WriteScalars(step, values.Where(v => double.IsFinite(v.Value))
            .Select(v => new KeyValuePair<string, float>("eval/" + v.Key, (float)v.Value)).ToList());
}
