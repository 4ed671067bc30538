using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

/// <summary>Result of comparing one tensor with its reference.</summary>
internal sealed record ComparisonResult(string Name, bool Passed, double MaxAbsError, double MaxRelError, long Mismatches, long Count, string Detail)
{
    public override string ToString() =>
        $"{Name}: {(Passed ? "pass" : "FAIL")} max_abs={MaxAbsError:G3} max_rel={MaxRelError:G3} mismatches={Mismatches}/{Count}{(Detail.Length > 0 ? " " + Detail : "")}";
}

/// <summary>
/// The parity bar. Float tensors: every element within atol + rtol·|ref| (where the reference's own two-run noise is
/// larger than atol, the bar is 4× that noise). Boolean/integer tensors: at most <see cref="MaxMismatchFraction"/> of
/// elements differ (0 for integers).
/// </summary>
internal sealed record Tolerance(double Atol = 1e-4, double Rtol = 1e-4, double NoiseFactor = 4.0, double MaxMismatchFraction = 0.001)
{
    public static Tolerance Default { get; } = new();

    /// <summary>
    /// An extra absolute bar per element (broadcast to the reference's shape), for tensors whose sensitivity differs by
    /// element and is known from mathematics (e.g. an optimizer update from the gradient bar); owned by the caller.
    /// </summary>
    public Tensor? ElementAtol { get; init; }

    public ComparisonResult Compare(string name, Tensor actual, Tensor expected, double? observedNoise = null)
    {
        using var scope = NewDisposeScope();
        if (!actual.shape.SequenceEqual(expected.shape))
            return new ComparisonResult(name, false, double.NaN, double.NaN, -1, expected.numel(),
                $"shape [{string.Join(",", actual.shape)}] vs reference [{string.Join(",", expected.shape)}]");
        var a = actual.detach().cpu();
        var e = expected.detach().cpu();
        long count = e.numel();
        if (e.dtype == ScalarType.Bool || !e.is_floating_point())
        {
            long mism = a.to(e.dtype).ne(e).sum().item<long>();
            double allowed = e.dtype == ScalarType.Bool ? MaxMismatchFraction * count : 0;
            return new ComparisonResult(name, mism <= allowed, mism, count == 0 ? 0 : (double)mism / count, mism, count, "");
        }
        var af = a.to(ScalarType.Float64);
        var ef = e.to(ScalarType.Float64);
        if (count == 0) return new ComparisonResult(name, true, 0, 0, 0, 0, "");
        var diff = (af - ef).abs();
        double atol = Atol;
        if (observedNoise is double n && n * NoiseFactor > atol) atol = n * NoiseFactor;
        var bound = atol + Rtol * ef.abs();
        if (ElementAtol is { } extra) bound = bound + extra.detach().cpu().to(ScalarType.Float64);
        var nanMismatch = af.isnan().logical_xor(ef.isnan());
        var bad = diff.gt(bound).logical_and(ef.isnan().logical_not()).logical_or(nanMismatch);
        long mismatches = bad.sum().item<long>();
        double maxAbs = diff.nan_to_num(0).max().item<double>();
        double maxRel = (diff / ef.abs().clamp(min: 1e-12)).nan_to_num(0).max().item<double>();
        return new ComparisonResult(name, mismatches == 0, maxAbs, maxRel, mismatches, count, atol != Atol ? $"(atol raised to {atol:G3} by reference noise)" : "");
    }
}
