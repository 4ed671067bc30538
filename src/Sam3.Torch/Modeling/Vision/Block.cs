using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Vision;

/// <summary>
/// Pre-norm ViT block with optional window attention (vitdet.py <c>Block</c>):
/// <c>x += drop_path(attn(norm1(x)))</c> (windowed: partition after norm1, unpartition after attn),
/// <c>x += drop_path(mlp(norm2(x)))</c>. No layer scale (SAM3 passes <c>init_values=None</c>), no dropout (0 upstream).
/// State-dict keys: <c>norm1.*</c>, <c>attn.{qkv,proj}.*</c>, <c>norm2.*</c>, <c>mlp.{fc1,fc2}.*</c>.
/// </summary>
internal sealed class Block : nn.Module<Tensor, Tensor>
{
    public readonly LayerNorm norm1;
    public readonly VitAttention attn;
    public readonly DropPath drop_path;
    public readonly LayerNorm norm2;
    public readonly VitMlp mlp;

    /// <summary>Window size of window attention; 0 = global attention.</summary>
    public int window_size { get; }

    /// <param name="dim">Embedding dim.</param>
    /// <param name="numHeads">VitAttention heads.</param>
    /// <param name="mlpHiddenDim">int(dim · mlp_ratio).</param>
    /// <param name="qkvBias">Bias in qkv.</param>
    /// <param name="dropPath">Stochastic depth rate of this block.</param>
    /// <param name="layerNormEps">LayerNorm eps.</param>
    /// <param name="windowSize">Window size, 0 for a global block.</param>
    /// <param name="inputSize">Token grid (N, N); the attention grid is (ws, ws) for windowed blocks.</param>
    /// <param name="useRope">Axial RoPE on q, k.</param>
    /// <param name="ropeTheta">RoPE θ.</param>
    /// <param name="ropePtSize">RoPE grid of pretraining (for interpolation).</param>
    /// <param name="ropeInterp">Scale RoPE positions by rope_pt_size / grid.</param>
    public Block(int dim, int numHeads, int mlpHiddenDim, bool qkvBias, double dropPath, double layerNormEps,
                 int windowSize, (int H, int W) inputSize, bool useRope, double ropeTheta, (int H, int W)? ropePtSize,
                 bool ropeInterp) : base(nameof(Block))
    {
        window_size = windowSize;
        norm1 = nn.LayerNorm(dim, layerNormEps);
        attn = new VitAttention(dim, numHeads, qkvBias, useRope, ropeTheta,
            windowSize == 0 ? inputSize : (windowSize, windowSize), ropePtSize, ropeInterp);
        drop_path = new DropPath(dropPath);
        norm2 = nn.LayerNorm(dim, layerNormEps);
        mlp = new VitMlp(dim, mlpHiddenDim);
        RegisterComponents();
    }

    /// <param name="x">Tokens <c>[B, H, W, C]</c>.</param>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var shortcut = x;
        var y = norm1.forward(x);
        if (window_size > 0)
        {
            long h = y.shape[1], w = y.shape[2];
            var (windows, padHw) = WindowOps.Partition(y, window_size);
            y = WindowOps.Unpartition(attn.forward(windows), window_size, padHw, (h, w));
        }
        else
        {
            y = attn.forward(y);
        }
        // bf16 policy: the branch outputs are bf16 GEMM outputs and the residual stream is fp32; the sum must be promoted
        // to fp32 as under autocast, so the in-place form (which keeps the branch's bf16) is used only for equal dtypes
        if (torch.is_grad_enabled() || y.dtype != shortcut.dtype)
        {
            x = shortcut + drop_path.forward(y);
            x = x + drop_path.forward(mlp.forward(norm2.forward(x)));
        }
        else
        {
            // Inference: the residuals are added in place into the branch outputs (fresh tensors of this forward, never
            // the caller's input), saving two [B,H,W,C] allocations per block; a + b = b + a, so the values are identical.
            x = drop_path.forward(y).add_(shortcut);
            x = drop_path.forward(mlp.forward(norm2.forward(x))).add_(x);
        }
        return x.MoveToOuterDisposeScope();
    }
}
