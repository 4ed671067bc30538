using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Training;

/// <summary>
/// Activation checkpointing for a function of one tensor (the counterpart of upstream's reentrant
/// <c>torch.utils.checkpoint</c>, which TorchSharp 0.107 does not have): the forward runs without recording the graph, so
/// none of the function's intermediate activations are kept; the backward recomputes the function with gradients on and
/// back-propagates through the recomputation, which accumulates the gradients of the parameters it uses into their
/// <c>.grad</c> (as PyTorch's reentrant variant does). Built on TorchSharp's custom autograd functions.
/// Restrictions (as the reentrant variant): the input must require a gradient (otherwise no backward runs and the
/// parameters inside get none), the function must be deterministic (no dropout / drop-path, or the recomputation
/// differs), and <c>torch.autograd.grad</c> cannot be used through it.
/// </summary>
internal static class ActivationCheckpoint
{
    /// <summary><paramref name="fn"/>(<paramref name="input"/>) with its activations recomputed in the backward.</summary>
    public static Tensor Apply(Func<Tensor, Tensor> fn, Tensor input)
    {
        ArgumentNullException.ThrowIfNull(fn);
        ArgumentNullException.ThrowIfNull(input);
        if (!torch.is_grad_enabled() || !input.requires_grad) return fn(input);
        return CheckpointFunction.apply(fn, input);
    }

    private sealed class CheckpointFunction : torch.autograd.SingleTensorFunction<CheckpointFunction>
    {
        public override string Name => "Sam3ActivationCheckpoint";

        public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
        {
            var fn = (Func<Tensor, Tensor>)vars[0];
            var x = (Tensor)vars[1];
            ctx.save_data("fn", fn);
            ctx.save_for_backward([x]);
            return fn(x);
        }

        public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var fn = (Func<Tensor, Tensor>)ctx.get_data("fn");
            var x = ctx.get_saved_variables()[0];
            using var grad = torch.enable_grad();
            var xd = x.detach().requires_grad_(true);
            var y = fn(xd);
            torch.autograd.backward([y], [gradOutput]);
            // one entry per argument of apply: none for the function, the input's gradient
            return [null!, xd.grad ?? torch.zeros_like(x)];
        }
    }
}
