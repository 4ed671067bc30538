using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training;

/// <summary>
/// Activation checkpointing of a layer with several tensor inputs and outputs, as upstream's
/// <c>activation_ckpt_wrapper</c> applies <c>torch.utils.checkpoint.checkpoint(use_reentrant=False)</c> to every fusion
/// encoder and decoder layer in training (model_builder: <c>use_act_checkpoint=True</c>): the forward keeps only the
/// layer's inputs; the backward re-runs the layer with gradients on and back-propagates through the re-run, which
/// accumulates the gradients of the layer's parameters into their <c>.grad</c> and returns those of the inputs.
/// <para>
/// As <c>preserve_rng_state=True</c> upstream, the state of the default CPU generator is saved before the forward and
/// restored for the re-run, so dropout draws the same masks twice and the gradients are those of the forward that was
/// done (the generator is put back afterwards). CUDA generators are not saved: on a GPU use it with dropout off.
/// </para>
/// <para>
/// Upstream's non-reentrant variant also gives the layer's parameters their gradients when no input requires one (the
/// first encoder layer behind a frozen backbone); here a zero-size dummy input that requires a gradient keeps the node in
/// the graph then. A layer whose parameters and inputs all lack gradients runs unchanged (no graph is recorded anyway).
/// <c>torch.autograd.grad</c> through a checkpointed layer is not supported (the re-run accumulates into <c>.grad</c>).
/// </para>
/// </summary>
internal static class LayerCheckpoint
{
    /// <summary>
    /// <paramref name="layer"/>(<paramref name="inputs"/>), checkpointed when gradients are being recorded and
    /// <paramref name="module"/> has a trainable parameter or an input requires a gradient. <paramref name="inputs"/> must
    /// hold every tensor argument of the layer, masks included: the re-run gets them back from the saved tensors (a
    /// captured one may be disposed by then, or back-propagated once per re-run). Null entries are passed through as null.
    /// Outputs are returned in the caller's dispose scope.
    /// </summary>
    public static Tensor?[] Apply(nn.Module module, Func<Tensor?[], Tensor?[]> layer, params Tensor?[] inputs)
    {
        ArgumentNullException.ThrowIfNull(module);
        ArgumentNullException.ThrowIfNull(layer);
        ArgumentNullException.ThrowIfNull(inputs);
        bool anyInputGrad = inputs.Any(t => t is not null && t.requires_grad);
        if (!torch.is_grad_enabled() || !(anyInputGrad || module.parameters().Any(p => p.requires_grad)))
            return layer(inputs);
        // the autograd function takes and returns non-null tensors only: nulls are put back around the layer
        int[] present = Enumerable.Range(0, inputs.Length).Where(i => inputs[i] is not null).ToArray();
        bool[]? outputPresent = null;
        Func<Tensor[], Tensor[]> packed = xs =>
        {
            var full = new Tensor?[inputs.Length];
            for (int k = 0; k < present.Length; k++) full[present[k]] = xs[k];
            var outs = layer(full);
            outputPresent ??= outs.Select(o => o is not null).ToArray();
            return outs.Where(o => o is not null).Select(o => o!).ToArray();
        };
        var args = new object[present.Length + 2];
        args[0] = packed;
        // dummy: keeps the node in the graph when no real input requires a gradient (the frozen-backbone case)
        args[1] = anyInputGrad ? torch.empty(0) : torch.empty(0).requires_grad_(true);
        for (int k = 0; k < present.Length; k++) args[k + 2] = inputs[present[k]]!;
        var results = CheckpointFunction.apply(args);
        var output = new Tensor?[outputPresent!.Length];
        int r = 0;
        for (int i = 0; i < output.Length; i++) output[i] = outputPresent[i] ? results[r++] : null;
        return output;
    }

    private sealed class CheckpointFunction : torch.autograd.MultiTensorFunction<CheckpointFunction>
    {
        public override string Name => "Sam3LayerCheckpoint";

        public override List<Tensor> forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            var layer = (Func<Tensor[], Tensor[]>)vars[0];
            var inputs = vars.Skip(2).Cast<Tensor>().ToArray();
            ctx.save_data("layer", layer);
            using (var rng = torch.random.get_rng_state()) ctx.save_data("rng", rng.data<byte>().ToArray());
            ctx.save_for_backward(inputs.ToList());
            using var scope = NewDisposeScope();
            var outputs = layer(inputs);
            // outputs must not alias the inputs (the engine would see a view of a saved tensor)
            return outputs.Select(o => o.MoveToOuterDisposeScope()).ToList();
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, List<Tensor> gradOutputs)
        {
            var layer = (Func<Tensor[], Tensor[]>)ctx.get_data("layer");
            var rngBytes = (byte[])ctx.get_data("rng");
            var saved = ctx.get_saved_variables();
            var result = new List<Tensor> { null!, null! }; // the layer delegate and the dummy get none
            using var scope = NewDisposeScope();
            var current = torch.random.get_rng_state();
            Tensor[] detached;
            try
            {
                torch.random.set_rng_state(torch.tensor(rngBytes, ScalarType.Byte));
                using var grad = torch.enable_grad();
                detached = saved.Select(x => x.detach().requires_grad_(x.requires_grad)).ToArray();
                var outputs = layer(detached);
                var roots = new List<Tensor>();
                var grads = new List<Tensor>();
                for (int i = 0; i < outputs.Length; i++)
                {
                    if (!outputs[i].requires_grad || i >= gradOutputs.Count || gradOutputs[i] is null || gradOutputs[i].IsInvalid) continue;
                    roots.Add(outputs[i]);
                    grads.Add(gradOutputs[i]);
                }
                if (roots.Count > 0) torch.autograd.backward(roots, grads);
            }
            finally
            {
                torch.random.set_rng_state(current);
            }
            foreach (var x in detached)
                result.Add(x.requires_grad && x.grad is { } g ? g.detach().DetachFromDisposeScope() : null!);
            return result;
        }
    }
}
