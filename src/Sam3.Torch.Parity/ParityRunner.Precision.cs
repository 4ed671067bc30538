using Sam3.Torch.Modeling.Detector;
using Sam3.Torch.Precision;
using static TorchSharp.torch;

namespace Sam3.Torch.Parity;

/// <summary>
/// The bf16 policy on the fixtures' scenarios (issue 15 item 4): the runner can load its models under
/// <see cref="PrecisionPolicy"/> and hand every produced tensor that the fixture recorded to an observer, so that a
/// caller measures task-level figures (object ids, mask IoU, scores) against the fp32 fixtures. Under the policy the
/// per-tensor comparisons naturally fail (the fixtures are fp32); the report is not the measure then.
/// </summary>
internal sealed partial class ParityRunner
{
    /// <summary>Load the image and video models with the bf16 policy applied (<see cref="PrecisionPolicy.Apply"/>).</summary>
    internal bool Bf16Policy { get; init; }

    /// <summary>
    /// Called with (fixture key, produced tensor) for every produced tensor the fixture recorded, before it is compared;
    /// bit-packed masks are handed over unpacked, under the name without <c>_packbits</c>. The tensor is valid only
    /// during the call.
    /// </summary>
    internal Action<string, Tensor>? Capture { get; init; }

    private Sam3ImageModel WithPolicy(Sam3ImageModel model)
    {
        if (Bf16Policy) PrecisionPolicy.Apply(model);
        return model;
    }
}
