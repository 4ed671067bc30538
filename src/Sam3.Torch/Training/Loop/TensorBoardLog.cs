using System.Globalization;
using Sam3.Torch.Training.Optim;
using TorchSharp;

namespace Sam3.Torch.Training.Loop;

/// <summary>
/// TensorBoard event files through TorchSharp's own <c>torch.utils.tensorboard.SummaryWriter</c> (pure .NET: TFRecord
/// framing + protobuf <c>Event</c>s, no Python): per optimizer step the scalars <c>loss/core</c>, <c>loss/&lt;term&gt;</c>,
/// <c>grad_norm</c> (when clipping) and <c>lr/group&lt;i&gt;</c> for each distinct group lr, and <see cref="AppendEvaluation"/>
/// for AP/cgF1. Each run (and each resume) writes its own events file in the folder, as TensorBoard expects.
/// </summary>
internal sealed class TensorBoardLog
{
    private readonly TorchSharp.Modules.SummaryWriter _writer;

    public string Directory { get; }

    public TensorBoardLog(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        Directory = Path.GetFullPath(directory);
        System.IO.Directory.CreateDirectory(Directory);
        _writer = torch.utils.tensorboard.SummaryWriter(Directory);
    }

    public void Append(TrainerStepReport r, IReadOnlyList<ParamGroup> groups)
    {
        _writer.add_scalar("loss/core", (float)r.CoreLoss, r.Step);
        foreach (var (key, value) in r.Losses) _writer.add_scalar("loss/" + key, (float)value, r.Step);
        if (double.IsFinite(r.GradNorm)) _writer.add_scalar("grad_norm", (float)r.GradNorm, r.Step);
        var seen = new HashSet<double>();
        foreach (var g in groups)
            if (seen.Add(g.Lr)) _writer.add_scalar("lr/group" + g.Index.ToString(CultureInfo.InvariantCulture), (float)g.Lr, r.Step);
    }

    /// <summary>One scalar per (name, value) at <paramref name="step"/> under <c>eval/</c> (non-finite values skipped).</summary>
    public void AppendEvaluation(int step, IEnumerable<KeyValuePair<string, double>> values)
    {
        foreach (var (key, value) in values)
            if (double.IsFinite(value)) _writer.add_scalar("eval/" + key, (float)value, step);
    }
}
