using Sam3.Torch.Config;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Vision;

/// <summary>
/// The SAM3 vision trunk (vitdet.py <c>ViT</c>, ViTDet-style plain ViT): patch embedding, absolute position embedding
/// (pretraining grid, cls entry dropped, tiled to the token grid), <c>ln_pre</c>, blocks with window attention except the
/// configured global blocks, axial RoPE (interpolated for global blocks). Returns the last global block's output as
/// NCHW. State-dict keys: <c>pos_embed</c>, <c>patch_embed.proj.weight</c>, <c>blocks.{i}.*</c>, <c>ln_pre.*</c>
/// (plus <c>ln_post.*</c> when configured). Not ported (unused by SAM3, rejected with a config error): retained cls
/// token, relative position embeddings, intermediate-layer outputs, layer scale.
/// </summary>
internal sealed class ViT : nn.Module<Tensor, Tensor>
{
    /// <summary>Input image channels (builder default <c>in_chans=3</c>).</summary>
    public const int InChans = 3;

    public readonly PatchEmbed patch_embed;
    public readonly Parameter? pos_embed;
    public readonly ModuleList<Block> blocks;
    public readonly nn.Module<Tensor, Tensor> ln_pre;
    public readonly nn.Module<Tensor, Tensor> ln_post;

    public VitConfig Config { get; }
    /// <summary>Block indices with global attention (<c>full_attn_ids</c>).</summary>
    public IReadOnlyList<int> full_attn_ids { get; }
    public bool pretrain_use_cls_token { get; }
    public bool tile_abs_pos { get; }
    /// <summary>Output channels of the trunk (<c>channel_list[-1]</c>).</summary>
    public int EmbedDim => Config.EmbedDim;

    public ViT(Sam3Config cfg) : this(cfg.Vit, cfg.HardcodedInClasses.VitLayerNormEps) { }

    public ViT(VitConfig c, double layerNormEps) : base(nameof(ViT))
    {
        Config = c;
        if (c.RetainClsToken) throw new Sam3ConfigException("ViT: retain_cls_token=True is not supported by this port (SAM3 uses False)");
        if (c.RelPosBlocks.Length > 0) throw new Sam3ConfigException("ViT: relative position embeddings (rel_pos_blocks) are not supported by this port (SAM3 uses none)");
        if (c.GlobalAttBlocks.Length == 0) throw new Sam3ConfigException("ViT: global_att_blocks is empty (the output is taken after the last global block)");
        if (c.GlobalAttBlocks.Any(i => i < 0 || i >= c.Depth)) throw new Sam3ConfigException($"ViT: global_att_blocks [{string.Join(",", c.GlobalAttBlocks)}] out of range for depth {c.Depth}");
        if (c.TileAbsPos && !c.UseAbsPos) throw new Sam3ConfigException("ViT: tile_abs_pos requires use_abs_pos");
        if (c.ImgSize % c.PatchSize != 0) throw new Sam3ConfigException($"ViT: img_size {c.ImgSize} is not a multiple of patch_size {c.PatchSize}");
        full_attn_ids = c.GlobalAttBlocks.ToArray();
        pretrain_use_cls_token = c.PretrainUseClsToken;
        tile_abs_pos = c.TileAbsPos;

        patch_embed = new PatchEmbed(c.PatchSize, InChans, c.EmbedDim, c.BiasPatchEmbed);
        if (c.UseAbsPos)
        {
            int numPatches = c.PretrainTokensPerSide * c.PretrainTokensPerSide;
            int numPositions = c.PretrainUseClsToken ? numPatches + 1 : numPatches;
            pos_embed = new Parameter(torch.zeros(1, numPositions, c.EmbedDim));
        }

        int n = c.TokensPerSide;
        (int, int) ropePt = (c.RopePtSide, c.RopePtSide);
        blocks = new ModuleList<Block>();
        for (int i = 0; i < c.Depth; i++)
        {
            // stochastic depth decay rule: linspace(0, drop_path_rate, depth)
            double dpr = c.Depth > 1 ? c.DropPathRate * i / (c.Depth - 1) : 0.0;
            blocks.Add(new Block(c.EmbedDim, c.NumHeads, c.MlpHiddenDim, c.QkvBias, dpr, layerNormEps,
                c.IsGlobalBlock(i) ? 0 : c.WindowSize, (n, n), c.UseRope, c.RopeTheta, ropePt, c.UseInterpRope));
        }
        ln_pre = c.LnPre ? nn.LayerNorm(c.EmbedDim, layerNormEps) : nn.Identity();
        ln_post = c.LnPost ? nn.LayerNorm(c.EmbedDim, layerNormEps) : nn.Identity();
        RegisterComponents();
    }

    /// <summary>
    /// Absolute position embedding for an <c>h×w</c> token grid, channels-last <c>[1, h, w, E]</c> (vitdet.py
    /// <c>get_abs_pos</c> without a retained cls token): the cls entry is dropped, the square pretraining grid is tiled
    /// (repeated and cropped) or, with <c>tile_abs_pos=False</c>, bicubically interpolated.
    /// </summary>
    public Tensor AbsPos(long h, long w)
    {
        if (pos_embed is null) throw new Sam3StateException("ViT: use_abs_pos is False, there is no position embedding");
        using var scope = NewDisposeScope();
        Tensor abs = pos_embed;
        if (pretrain_use_cls_token) abs = abs.slice(1, 1, abs.shape[1], 1);
        long xyNum = abs.shape[1];
        long size = (long)Math.Round(Math.Sqrt(xyNum));
        if (size * size != xyNum) throw new Sam3Exception($"ViT: pos_embed has {xyNum} grid entries, not a square");
        var grid = abs.reshape(1, size, size, -1);
        if (size != h || size != w)
        {
            if (tile_abs_pos)
                grid = grid.tile([1, h / size + 1, w / size + 1, 1]).slice(1, 0, h, 1).slice(2, 0, w, 1);
            else
                grid = nn.functional.interpolate(grid.permute(0, 3, 1, 2), size: [h, w], mode: InterpolationMode.Bicubic,
                    align_corners: false).permute(0, 2, 3, 1);
        }
        return grid.MoveToOuterDisposeScope();
    }

    /// <param name="x">Normalised images <c>[B, 3, S, S]</c>, S = img_size.</param>
    /// <returns>The trunk feature <c>[B, E, N, N]</c> (upstream: the single entry of the returned list).</returns>
    public override Tensor forward(Tensor x) => Forward(x, null);

    /// <summary>
    /// Activation checkpointing of the blocks when training (upstream <c>use_act_checkpoint</c>): their activations are
    /// recomputed in the backward instead of kept. Needs drop-path 0 (see <see cref="Training.ActivationCheckpoint"/>).
    /// </summary>
    public bool use_act_checkpoint { get; set; }

    /// <summary>
    /// Forward that also records the intermediate tensors as (name, tensor): <c>patch_embed</c>, <c>ln_pre</c>,
    /// <c>block{i}</c> (channels-last <c>[B, N, N, E]</c>). The recorded tensors belong to the caller.
    /// </summary>
    public Tensor Forward(Tensor x, List<(string name, Tensor value)>? trace)
    {
        if (x.dim() != 4 || x.shape[1] != InChans)
            throw new Sam3Exception($"ViT expects images [B,{InChans},H,W], got [{string.Join(",", x.shape)}]");
        using var scope = NewDisposeScope();
        var kept = trace is null ? null : new List<(string, Tensor)>();
        x = patch_embed.forward(x);
        kept?.Add(("patch_embed", x.alias()));
        long h = x.shape[1], w = x.shape[2];
        if (pos_embed is not null) x = x + AbsPos(h, w);
        x = ln_pre.forward(x);
        kept?.Add(("ln_pre", x.alias()));
        int last = full_attn_ids[^1];
        // Upstream also runs the blocks after the last global block and discards their output; they are skipped here
        // (identical result).
        for (int i = 0; i <= last; i++)
        {
            x = use_act_checkpoint && training && x.requires_grad && torch.is_grad_enabled()
                ? Training.ActivationCheckpoint.Apply(blocks[i].forward, x)
                : blocks[i].forward(x);
            kept?.Add(($"block{i}", x.alias()));
        }
        x = ln_post.forward(x);
        var output = x.permute(0, 3, 1, 2);
        if (kept is not null)
            foreach (var (name, t) in kept) trace!.Add((name, t.MoveToOuterDisposeScope()));
        return output.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The RoPE tables of all blocks as the checkpoint stores them: key <c>blocks.{i}.attn.freqs_cis</c> → float32
    /// <c>[L, head_dim/2, 2]</c> (view_as_real of the complex64 buffer). Empty when RoPE is off.
    /// </summary>
    public IEnumerable<(string key, Tensor table)> FreqsCisAsReal(Device? device = null)
    {
        for (int i = 0; i < blocks.Count; i++)
            if (blocks[i].attn.FreqsCisAsReal(device) is { } t)
                yield return ($"blocks.{i}.attn.freqs_cis", t);
    }
}
