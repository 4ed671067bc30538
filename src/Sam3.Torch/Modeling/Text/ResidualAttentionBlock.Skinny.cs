using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Training.Lora;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Text;

/// <summary>
/// The block's few-token inference path (issue 15: a prompt's real tokens, M = B·L ≤ <see cref="SkinnyLinear.DefaultMaxRows"/>):
/// the four projections (packed q,k,v in one product, out_proj, c_fc, c_proj) run on <see cref="SkinnyLinear"/>, which
/// reads each weight once at the memory bandwidth; attention, GELU and the residuals are LibTorch's as in the module
/// path. Each method returns null where the kernel does not apply (<see cref="UseSkinnyLinear"/> off, a LoRA adapter on
/// the projection, grad mode with trainable operands, another dtype or device, more rows): the caller then runs the
/// modules as before.
/// </summary>
internal sealed partial class ResidualAttentionBlock
{
    /// <summary>
    /// Whether few-token fp32 CPU inference runs the projections on <see cref="SkinnyLinear"/> (default true). false keeps
    /// LibTorch's <c>linear</c> (MKL) everywhere: the reference path, within fp32 rounding of this one.
    /// </summary>
    internal bool UseSkinnyLinear { get; set; } = true;

    /// <summary>c_fc and c_proj of <see cref="mlp"/>, looked up once (not module fields: their keys live under mlp.*).</summary>
    private (Linear Fc, Linear Proj)? _mlpLinears;

    private (Linear Fc, Linear Proj) MlpLinears => _mlpLinears ??= (
        (Linear)mlp.named_children().Single(c => c.name == "c_fc").module,
        (Linear)mlp.named_children().Single(c => c.name == "c_proj").module);

    /// <summary><c>attn(h, h, h, attn_mask)</c> on the kernel, [B,L,W] batch-first; null where it does not apply.</summary>
    private Tensor? SkinnyAttention(Tensor h, Tensor? attnMask)
    {
        if (!UseSkinnyLinear || !attn.batch_first || h.dim() != 3 || LoraHooks.HasAdapter(attn) || LoraHooks.HasAdapter(attn.out_proj))
            return null;
        var outW = attn.out_proj.weight!;
        var qkv = SkinnyLinear.TryLinear(h, attn.in_proj_weight, attn.in_proj_bias);
        if (qkv is null) return null;
        int e = attn.embed_dim;
        return attn.AttendProjected(qkv.narrow(-1, 0, e), qkv.narrow(-1, e, e), qkv.narrow(-1, 2 * e, e), null, attnMask,
            o => SkinnyLinear.TryLinear(o, outW, attn.out_proj.bias) ?? nn.functional.linear(o, outW, attn.out_proj.bias));
    }

    /// <summary><c>mlp(h)</c> (c_fc → exact GELU → c_proj) on the kernel; null where it does not apply.</summary>
    private Tensor? SkinnyMlp(Tensor h)
    {
        if (!UseSkinnyLinear) return null;
        var (fc, proj) = MlpLinears;
        if (LoraHooks.HasAdapter(fc) || LoraHooks.HasAdapter(proj)) return null;
        var f = SkinnyLinear.TryLinear(h, fc.weight!, fc.bias);
        if (f is null) return null;
        f = nn.functional.gelu(f);
        return SkinnyLinear.TryLinear(f, proj.weight!, proj.bias) ?? nn.functional.linear(f, proj.weight!, proj.bias);
    }
}
