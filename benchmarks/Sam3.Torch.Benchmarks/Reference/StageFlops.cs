using Sam3.Torch.Config;

namespace Sam3.Torch.Benchmarks.Reference;

/// <summary>
/// Multiply-add counts (FLOPs = 2 × MACs) of the matrix products and convolutions of one image + one text prompt,
/// per stage, written from the configuration (nothing hard-coded). Element-wise work (norms, activations, softmax,
/// RoPE, copies) is not counted: these are the GEMM-shaped operations a roofline compares against.
/// </summary>
internal static class StageFlops
{
    /// <summary>2·m·k·n: one [m,k]·[k,n] product.</summary>
    public static double Gemm(double m, double k, double n) => 2.0 * m * k * n;

    /// <summary>Scaled dot-product attention of <paramref name="q"/> queries over <paramref name="kv"/> keys of total width <paramref name="dim"/> (all heads): QKᵀ and AV.</summary>
    public static double Attention(double q, double kv, double dim) => 2 * Gemm(q, dim, kv);

    /// <summary>Linear layers of one ViT block on <paramref name="tokens"/> tokens: qkv, proj, MLP fc1 and fc2.</summary>
    public static double VitBlockLinear(VitConfig v, double tokens)
    {
        double d = v.EmbedDim, hidden = VitMlpHidden(v);
        return Gemm(tokens, d, 3 * d) + Gemm(tokens, d, d) + Gemm(tokens, d, hidden) + Gemm(tokens, hidden, d);
    }

    /// <summary>MLP hidden width of the ViT (int(dim · mlp_ratio), as upstream).</summary>
    public static int VitMlpHidden(VitConfig v) => (int)(v.EmbedDim * v.MlpRatio);

    /// <summary>Tokens per side of the ViT's patch grid.</summary>
    public static int VitGrid(VitConfig v) => v.ImgSize / v.PatchSize;

    /// <summary>Attention of one ViT block: global over the whole grid, or per window (grid padded to whole windows).</summary>
    public static double VitBlockAttention(VitConfig v, bool global)
    {
        int n = VitGrid(v);
        if (global) return Attention((double)n * n, (double)n * n, v.EmbedDim);
        int w = v.WindowSize;
        int windowsPerSide = (n + w - 1) / w;
        double windows = (double)windowsPerSide * windowsPerSide;
        return windows * Attention((double)w * w, (double)w * w, v.EmbedDim);
    }

    /// <summary>The ViT: patch embedding, linear layers and attention of every block up to the last global one (the port skips later blocks).</summary>
    public static (double Linear, double Attention, double PatchEmbed) Vit(VitConfig v)
    {
        int n = VitGrid(v);
        double tokens = (double)n * n;
        int last = v.GlobalAttBlocks.Length > 0 ? v.GlobalAttBlocks.Max() : v.Depth - 1;
        double linear = 0, attn = 0;
        for (int i = 0; i <= last && i < v.Depth; i++)
        {
            linear += VitBlockLinear(v, tokens);
            attn += VitBlockAttention(v, v.GlobalAttBlocks.Contains(i));
        }
        double patch = Gemm(tokens, 3.0 * v.PatchSize * v.PatchSize, v.EmbedDim);
        return (linear, attn, patch);
    }

    /// <summary>One simple-FPN neck (per scale: transposed convs, 1×1 and 3×3 convs); × 2 with the SAM2 neck.</summary>
    public static double Necks(Sam3Config cfg)
    {
        int n = VitGrid(cfg.Vit);
        double dim = cfg.Vit.EmbedDim, dm = cfg.Neck.DModel;
        double one = 0;
        foreach (double s in cfg.Neck.ScaleFactors)
        {
            double side = n * s, pix = side * side, inDim;
            if (s == 4.0)
            {
                one += Gemm((double)n * n, dim, dim / 2 * 4);                 // 2×2 stride-2 transposed conv: each input pixel → 4 outputs
                one += Gemm((double)(2 * n) * (2 * n), dim / 2, dim / 4 * 4);
                inDim = dim / 4;
            }
            else if (s == 2.0) { one += Gemm((double)n * n, dim, dim / 2 * 4); inDim = dim / 2; }
            else inDim = dim;
            one += Gemm(pix, inDim, dm) + Gemm(pix, dm * 9, dm);
        }
        return cfg.Neck.AddSam2Neck ? 2 * one : one;
    }

    /// <summary>
    /// The text transformer and the 1024→256 resizer over <paramref name="tokens"/> positions: by default the full
    /// context (upstream runs all context_length tokens); the image predictor runs only the prompt's real tokens.
    /// </summary>
    public static double Text(TextConfig t, int? tokens = null)
    {
        double l = tokens ?? t.ContextLength, w = t.Width, hidden = w * t.MlpRatio;
        double layer = Gemm(l, w, 3 * w) + Gemm(l, w, w) + Attention(l, l, w) + Gemm(l, w, hidden) + Gemm(l, hidden, w);
        return t.Layers * layer + Gemm(l, w, t.DModel);
    }

    /// <summary>Image tokens the detector heads see (the ViT grid; the neck level at scale 1).</summary>
    public static double HeadTokens(Sam3Config cfg) => (double)VitGrid(cfg.Vit) * VitGrid(cfg.Vit);

    /// <summary>
    /// Fusion encoder: per layer self-attention over the image tokens (q,k,v,out projections + attention), cross-attention
    /// to the <paramref name="promptTokens"/> prompt tokens, FFN.
    /// </summary>
    public static double FusionEncoder(Sam3Config cfg, double promptTokens)
    {
        var e = cfg.Encoder;
        double n = HeadTokens(cfg), d = e.DModel, p = promptTokens;
        double layer = 4 * Gemm(n, d, d) + Attention(n, n, d)
                     + 2 * Gemm(n, d, d) + 2 * Gemm(p, d, d) + Attention(n, p, d)
                     + Gemm(n, d, e.DimFeedforward) + Gemm(n, e.DimFeedforward, d);
        return e.NumLayers * layer;
    }

    /// <summary>
    /// Decoder (queries + presence token): self-attention, text cross-attention, image cross-attention (memory keys and
    /// values projected every layer), FFN, box head; then dot-product scoring of every layer's queries.
    /// </summary>
    public static double DecoderAndScoring(Sam3Config cfg, double promptTokens)
    {
        var dc = cfg.Decoder;
        double q = dc.NumQueries + (dc.PresenceToken ? 1 : 0), d = dc.DModel, n = HeadTokens(cfg), p = promptTokens;
        double layer = 4 * Gemm(q, d, d) + Attention(q, q, d)
                     + 2 * Gemm(q, d, d) + 2 * Gemm(p, d, d) + Attention(q, p, d)
                     + 2 * Gemm(q, d, d) + 2 * Gemm(n, d, d) + Attention(q, n, d)
                     + Gemm(q, d, dc.DimFeedforward) + Gemm(q, dc.DimFeedforward, d)
                     + 3 * Gemm(q, d, d);                                            // bbox_embed MLP (3 layers)
        var s = cfg.DotProdScoring;
        double scoring = dc.NumLayers * (Gemm(dc.NumQueries, d, s.DProj) + Gemm(dc.NumQueries, s.DProj, 1))
                       + Gemm(p, d, s.PromptMlpHiddenDim) + Gemm(p, s.PromptMlpHiddenDim, d) + Gemm(1, d, s.DProj);
        return dc.NumLayers * layer + scoring;
    }

    /// <summary>
    /// Segmentation head: prompt cross-attention on the encoder memory, pixel decoder (a 3×3 conv per upsampling stage at
    /// 2×, 4×, … the grid), instance/semantic projections, and the per-query mask product at the finest level.
    /// </summary>
    public static double SegmentationHead(Sam3Config cfg, double promptTokens)
    {
        var sh = cfg.SegmentationHead;
        double h = sh.HiddenDim, n = HeadTokens(cfg), p = promptTokens;
        double flops = 2 * Gemm(n, h, h) + 2 * Gemm(p, h, h) + Attention(n, p, h); // q, out on the image tokens; k, v on the prompt
        double side = VitGrid(cfg.Vit);
        for (int i = 0; i < sh.UpsamplingStages; i++)
        {
            side *= 2;
            if (side > VitGrid(cfg.Vit) * 4) break;                               // the pixel decoder stops at the finest backbone level
            flops += Gemm(side * side, h * 9, h);
        }
        double fine = VitGrid(cfg.Vit) * 4.0;
        flops += Gemm(fine * fine, h, h) + Gemm(fine * fine, h, 1);                    // instance / semantic 1×1 projections
        flops += 3 * Gemm(cfg.Decoder.NumQueries, h, h);                               // mask embed MLP
        flops += Gemm(cfg.Decoder.NumQueries, h, fine * fine);                         // masks = queries · pixel embeddings
        return flops;
    }
}
