using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Sam;

/// <summary>
/// SAM prompt encoder (sam/prompt_encoder.py PromptEncoder) as built by the tracker's <c>_build_sam_heads</c>:
/// embed_dim = tracker hidden dim, image embedding N×N (N = image_size / backbone_stride), input image image_size²,
/// mask_in_chans from the hard-coded section. Sparse output: one embedding per point (labels −1 = padding,
/// 0 = negative, 1 = positive, 2/3 = box corners) and two per box; dense output: the downscaled mask prompt or the
/// broadcast <c>no_mask_embed</c>.
/// </summary>
internal sealed class PromptEncoder : nn.Module
{
    public readonly PositionEmbeddingRandom pe_layer;
    public readonly ModuleList<Embedding> point_embeddings;
    public readonly Embedding not_a_point_embed;
    /// <summary>Conv(1→c/4,k2s2), LN2d, GELU, Conv(c/4→c,k2s2), LN2d, GELU, Conv(c→d,k1): state-dict indices 0,1,3,4,6.</summary>
    public readonly Sequential mask_downscaling;
    public readonly Embedding no_mask_embed;

    public int embed_dim { get; }
    /// <summary>(H, W) of the image embedding.</summary>
    public (int H, int W) image_embedding_size { get; }
    /// <summary>(H, W) of the (padded) model input image.</summary>
    public (int H, int W) input_image_size { get; }
    /// <summary>(4H, 4W): the size a dense mask prompt must have.</summary>
    public (int H, int W) mask_input_size { get; }

    /// <summary>pos/neg point + 2 box corners.</summary>
    public const int NumPointEmbeddings = 4;

    public PromptEncoder(Sam3Config cfg)
        : this(cfg.Tracker.HiddenDim, (cfg.Tracker.ImageEmbeddingSize, cfg.Tracker.ImageEmbeddingSize),
               (cfg.Tracker.ImageSize, cfg.Tracker.ImageSize), cfg.HardcodedInClasses.PromptEncoderMaskInChans,
               cfg.HardcodedInClasses.SamLayerNorm2dEps)
    { }

    public PromptEncoder(int embedDim, (int H, int W) imageEmbeddingSize, (int H, int W) inputImageSize, int maskInChans, double layerNorm2dEps)
        : base(nameof(PromptEncoder))
    {
        if (embedDim <= 0 || embedDim % 2 != 0) throw new Sam3ConfigException($"PromptEncoder: embed_dim must be positive and even, got {embedDim}");
        if (maskInChans < 4 || maskInChans % 4 != 0) throw new Sam3ConfigException($"PromptEncoder: mask_in_chans must be a positive multiple of 4, got {maskInChans}");
        embed_dim = embedDim;
        image_embedding_size = imageEmbeddingSize;
        input_image_size = inputImageSize;
        mask_input_size = (4 * imageEmbeddingSize.H, 4 * imageEmbeddingSize.W);

        pe_layer = new PositionEmbeddingRandom(embedDim / 2);
        point_embeddings = new ModuleList<Embedding>();
        for (int i = 0; i < NumPointEmbeddings; i++) point_embeddings.Add(nn.Embedding(1, embedDim));
        not_a_point_embed = nn.Embedding(1, embedDim);
        mask_downscaling = nn.Sequential(
            ("0", nn.Conv2d(1, maskInChans / 4, kernel_size: 2, stride: 2)),
            ("1", new LayerNorm2d(maskInChans / 4, layerNorm2dEps)),
            ("2", nn.GELU()),
            ("3", nn.Conv2d(maskInChans / 4, maskInChans, kernel_size: 2, stride: 2)),
            ("4", new LayerNorm2d(maskInChans, layerNorm2dEps)),
            ("5", nn.GELU()),
            ("6", nn.Conv2d(maskInChans, embedDim, kernel_size: 1)));
        no_mask_embed = nn.Embedding(1, embedDim);
        RegisterComponents();
    }

    /// <summary>Positional encoding of the image-embedding grid, [1, d, H, W].</summary>
    public Tensor GetDensePe()
    {
        using var scope = NewDisposeScope();
        return pe_layer.forward(image_embedding_size.H, image_embedding_size.W).unsqueeze(0).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Embeds points [B, N, 2] (pixels of the input image, x then y) with labels [B, N]. With <paramref name="pad"/> one
    /// padding point (label −1) is appended. Returns [B, N(+1), d].
    /// </summary>
    public Tensor EmbedPoints(Tensor points, Tensor labels, bool pad)
    {
        using var scope = NewDisposeScope();
        points = points.to(ScalarType.Float32) + 0.5; // shift to the pixel centre
        labels = labels.to(ScalarType.Float32);
        if (pad)
        {
            points = torch.cat([points, torch.zeros(points.shape[0], 1, 2, device: points.device)], 1);
            labels = torch.cat([labels, -torch.ones(labels.shape[0], 1, device: labels.device)], 1);
        }
        var pe = pe_layer.ForwardWithCoords(points, input_image_size.H, input_image_size.W);
        Tensor Is(double value) => labels.eq(value).unsqueeze(-1);
        pe = torch.where(Is(-1), torch.zeros_like(pe) + not_a_point_embed.weight!, pe);
        for (int i = 0; i < NumPointEmbeddings; i++)
            pe = torch.where(Is(i), pe + point_embeddings[i].weight!, pe);
        return pe.MoveToOuterDisposeScope();
    }

    /// <summary>Embeds boxes [B, 4] (xyxy pixels of the input image) as two corner tokens: [B, 2, d].</summary>
    public Tensor EmbedBoxes(Tensor boxes)
    {
        using var scope = NewDisposeScope();
        var coords = (boxes.to(ScalarType.Float32) + 0.5).reshape(-1, 2, 2); // shift to the pixel centre
        var pe = pe_layer.ForwardWithCoords(coords, input_image_size.H, input_image_size.W);
        var c0 = pe[.., 0..1, ..] + point_embeddings[2].weight!;
        var c1 = pe[.., 1..2, ..] + point_embeddings[3].weight!;
        return torch.cat([c0, c1], 1).MoveToOuterDisposeScope();
    }

    /// <summary>Embeds a dense mask prompt [B, 1, 4H, 4W] → [B, d, H, W].</summary>
    public Tensor EmbedMasks(Tensor masks)
    {
        using var scope = NewDisposeScope();
        return Precision.PrecisionPolicy.ForwardSequential(mask_downscaling, masks).MoveToOuterDisposeScope(); // = mask_downscaling.forward(masks) with the bf16 policy's casts
    }

    /// <summary>
    /// Sparse [B, P, d] and dense [B, d, H, W] prompt embeddings. <paramref name="pointCoords"/> [B, N, 2] with
    /// <paramref name="pointLabels"/> [B, N]; <paramref name="boxes"/> [B, 4] xyxy; <paramref name="masks"/> [B, 1, 4H, 4W]
    /// logits. Points get a padding point when no boxes are given (upstream behaviour).
    /// </summary>
    public (Tensor sparse, Tensor dense) forward(Tensor? pointCoords, Tensor? pointLabels, Tensor? boxes, Tensor? masks)
    {
        if ((pointCoords is null) != (pointLabels is null))
            throw new Sam3PromptException("point coordinates and point labels must be given together");
        if (pointCoords is not null)
        {
            if (pointCoords.dim() != 3 || pointCoords.shape[2] != 2)
                throw new Sam3PromptException($"point coordinates must be [B, N, 2], got [{string.Join(",", pointCoords.shape)}]");
            if (pointLabels!.dim() != 2 || pointLabels.shape[0] != pointCoords.shape[0] || pointLabels.shape[1] != pointCoords.shape[1])
                throw new Sam3PromptException($"point labels must be [B, N] = [{pointCoords.shape[0]}, {pointCoords.shape[1]}], got [{string.Join(",", pointLabels.shape)}]");
        }
        if (boxes is not null && !((boxes.dim() == 2 && boxes.shape[1] == 4) || (boxes.dim() == 3 && boxes.shape[1] == 2 && boxes.shape[2] == 2)))
            throw new Sam3PromptException($"boxes must be [B, 4] (xyxy) or [B, 2, 2], got [{string.Join(",", boxes.shape)}]");
        if (boxes is not null && pointCoords is not null && boxes.shape[0] != pointCoords.shape[0])
            throw new Sam3PromptException($"{boxes.shape[0]} boxes for {pointCoords.shape[0]} point sets: batch sizes must match");
        if (masks is not null && (pointCoords ?? boxes) is { } first && masks.shape[0] != first.shape[0])
            throw new Sam3PromptException($"{masks.shape[0]} mask prompts for a batch of {first.shape[0]} prompts");
        if (masks is not null && (masks.dim() != 4 || masks.shape[1] != 1 || masks.shape[2] != mask_input_size.H || masks.shape[3] != mask_input_size.W))
            throw new Sam3PromptException($"mask prompt must be [B, 1, {mask_input_size.H}, {mask_input_size.W}], got [{string.Join(",", masks.shape)}]");

        using var scope = NewDisposeScope();
        long bs = pointCoords is not null ? pointCoords.shape[0] : boxes is not null ? boxes.shape[0] : masks is not null ? masks.shape[0] : 1;
        var device = point_embeddings[0].weight!.device;
        var sparse = torch.empty(bs, 0, embed_dim, device: device);
        if (pointCoords is not null)
            sparse = torch.cat([sparse, EmbedPoints(pointCoords, pointLabels!, pad: boxes is null)], 1);
        if (boxes is not null)
            sparse = torch.cat([sparse, EmbedBoxes(boxes)], 1);
        var dense = masks is not null
            ? EmbedMasks(masks)
            : no_mask_embed.weight!.reshape(1, -1, 1, 1).expand(bs, -1, image_embedding_size.H, image_embedding_size.W);
        return (sparse.MoveToOuterDisposeScope(), dense.MoveToOuterDisposeScope());
    }
}
