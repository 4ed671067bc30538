using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using Sam3.Torch.Modeling.Encoder;
using TorchSharp;
using TorchSharp.Modules;
using TransformerEncoderLayer = Sam3.Torch.Modeling.Encoder.TransformerEncoderLayer;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Geometry;

/// <summary>
/// Encoder of geometric prompts (sam3/model/geometry_encoders.py <c>SequenceGeometryEncoder</c>; mask prompts are not
/// supported because SAM3 builds it without a mask encoder). Boxes (normalised cxcywh) and points (normalised xy)
/// are each encoded as the sum of a direct linear projection of the coordinates, a projection of image features
/// pooled at the location (RoIAlign 7×7 + conv for boxes, bilinear grid_sample for points, on the
/// <c>img_pre_norm</c>-normalised features) and a projection of a sine encoding of the location; plus a label
/// embedding. Points come first, then boxes, then a CLS token; the sequence goes through <c>final_proj</c> + <c>norm</c>,
/// pre-norm layers that cross-attend to the raw image tokens (keys = features + position encoding), and
/// <c>encode_norm</c>. Checkpoint prefix <c>detector.geometry_encoder.</c>.
/// </summary>
internal sealed class SequenceGeometryEncoder : nn.Module
{
    public readonly Embedding label_embed;
    public readonly Embedding? cls_embed;
    public readonly Linear? points_direct_project;
    public readonly Linear? points_pool_project;
    public readonly Linear? points_pos_enc_project;
    public readonly Linear? boxes_direct_project;
    public readonly Conv2d? boxes_pool_project;
    public readonly Linear? boxes_pos_enc_project;
    public readonly Linear? final_proj;
    public readonly LayerNorm? norm;
    /// <summary>LayerNorm when any pooling is on (Identity upstream otherwise, which has no keys).</summary>
    public readonly LayerNorm? img_pre_norm;
    public readonly ModuleList<TransformerEncoderLayer>? encode;
    public readonly LayerNorm? encode_norm;
    /// <summary>Sine encoding of coordinates (no weights).</summary>
    public readonly PositionEmbeddingSine pos_enc;

    public int d_model { get; }
    public int roi_size { get; }
    public bool encode_boxes_as_points { get; }
    /// <summary>Set when the point projections were not in the checkpoint (Hugging Face layout): why point prompts are refused.</summary>
    internal string? PointProjectionsUnavailable { get; set; }

    public SequenceGeometryEncoder(Sam3Config cfg) : base(nameof(SequenceGeometryEncoder))
    {
        var g = cfg.GeometryEncoder;
        double eps = cfg.HardcodedInClasses.LayerNormEps;
        d_model = g.DModel;
        roi_size = g.RoiSize;
        encode_boxes_as_points = g.EncodeBoxesAsPoints;
        if (!(g.PointsDirectProject || g.PointsPosEnc || g.PointsPool))
            throw new Sam3ConfigException("geometry encoder: need at least one way to encode points");
        if (!(g.EncodeBoxesAsPoints || g.BoxesDirectProject || g.BoxesPosEnc || g.BoxesPool))
            throw new Sam3ConfigException("geometry encoder: need at least one way to encode boxes");
        if (g.NumLayers > 0 && !g.AddCls)
            throw new Sam3ConfigException("geometry encoder: a CLS token is required when encode layers are used");

        pos_enc = new PositionEmbeddingSine(g.PosNumPosFeats, cfg.PositionEncoding.Temperature, cfg.PositionEncoding.Normalize,
                                            cfg.PositionEncoding.Scale);
        // 2 labels (negative/positive); encoding boxes as corner points gives 3 point kinds × 2 labels.
        label_embed = nn.Embedding(g.EncodeBoxesAsPoints ? 6 : 2, d_model);
        if (g.AddCls) cls_embed = nn.Embedding(1, d_model);

        if (g.PointsDirectProject) points_direct_project = nn.Linear(2, d_model);
        if (g.PointsPool) points_pool_project = nn.Linear(d_model, d_model);
        if (g.PointsPosEnc) points_pos_enc_project = nn.Linear(d_model, d_model);

        if (!g.EncodeBoxesAsPoints)
        {
            if (g.BoxesDirectProject) boxes_direct_project = nn.Linear(4, d_model);
            if (g.BoxesPool) boxes_pool_project = nn.Conv2d(d_model, d_model, roi_size);
            if (g.BoxesPosEnc) boxes_pos_enc_project = nn.Linear(d_model + 2, d_model);
        }
        if (g.AddPostEncodeProj)
        {
            final_proj = nn.Linear(d_model, d_model);
            norm = nn.LayerNorm(d_model, eps);
        }
        if (points_pool_project is not null || boxes_pool_project is not null) img_pre_norm = nn.LayerNorm(d_model, eps);
        if (g.NumLayers > 0)
        {
            encode = new ModuleList<TransformerEncoderLayer>();
            for (int i = 0; i < g.NumLayers; i++) encode.Add(TransformerEncoderLayer.ForGeometry(cfg));
            encode_norm = nn.LayerNorm(d_model, eps);
        }
        RegisterComponents();
    }

    /// <summary>
    /// Encodes a geometric prompt, as <c>Sam3ImageModel._encode_prompt</c> calls it.
    /// </summary>
    /// <param name="prompt">Boxes/points of B prompts.</param>
    /// <param name="imgFeats">Image feature levels, seq-first [H·W,B,d]; only the last one is used (SAM3: the N×N level).</param>
    /// <param name="imgSizes">(H,W) of each level.</param>
    /// <param name="imgPosEmbeds">Position encodings of the levels, seq-first [H·W,B,d]; null = zeros.</param>
    /// <returns>Encoded prompt seq-first [Np+Nb+1,B,d] and its mask bool [B,Np+Nb+1] (True = padding).</returns>
    public (Tensor Embeds, Tensor Mask) forward(Prompt prompt, IList<Tensor> imgFeats, IList<(int H, int W)> imgSizes,
                                                IList<Tensor>? imgPosEmbeds = null)
    {
        if (imgFeats.Count == 0 || imgFeats.Count != imgSizes.Count)
            throw new Sam3Exception($"geometry encoder: {imgFeats.Count} feature levels for {imgSizes.Count} sizes");
        var feats = imgFeats[^1];
        var (h, w) = imgSizes[^1];
        long bs = prompt.BatchSize;
        if (feats.dim() != 3 || feats.shape[0] != (long)h * w || feats.shape[1] != bs || feats.shape[2] != d_model)
            throw new Sam3Exception($"geometry encoder: image features must be [{h * w},{bs},{d_model}], got [{string.Join(",", feats.shape)}]");

        using var scope = NewDisposeScope();
        var pos = imgPosEmbeds is { Count: > 0 } ? imgPosEmbeds[^1] : torch.zeros_like(feats);
        if (!pos.shape.SequenceEqual(feats.shape))
            throw new Sam3Exception($"geometry encoder: position encoding [{string.Join(",", pos.shape)}] differs from the features");

        Tensor? imgNchw = null;
        if (img_pre_norm is not null)
        {
            var cur = Precision.PrecisionPolicy.Norm(img_pre_norm, feats);                             // [HW,B,C]
            imgNchw = cur.permute(1, 2, 0).reshape(bs, d_model, h, w);         // [B,C,H,W]
        }

        var points = prompt.PointEmbeddings;
        var pointsMask = prompt.PointMask;
        var pointsLabels = prompt.PointLabels.to(ScalarType.Int64);
        if (encode_boxes_as_points)
        {
            var xyxy = BoxOps.CxcywhToXyxy(prompt.BoxEmbeddings);
            var topLeft = xyxy[TensorIndex.Ellipsis, TensorIndex.Slice(null, 2)];
            var bottomRight = xyxy[TensorIndex.Ellipsis, TensorIndex.Slice(2, null)];
            var boxLabels = prompt.BoxLabels.to(ScalarType.Int64);
            // label ids: point kind (0 regular, 1 top-left, 2 bottom-right) × 2 + box label
            var labelsTl = boxLabels + 2;
            var labelsBr = boxLabels + 4;
            (points, _) = Prompt.ConcatPaddedSequences(points, pointsMask, topLeft, prompt.BoxMask);
            (pointsLabels, pointsMask) = Prompt.ConcatPaddedSequences(pointsLabels.unsqueeze(-1), pointsMask, labelsTl.unsqueeze(-1), prompt.BoxMask);
            pointsLabels = pointsLabels.squeeze(-1);
            (points, _) = Prompt.ConcatPaddedSequences(points, pointsMask, bottomRight, prompt.BoxMask);
            (pointsLabels, pointsMask) = Prompt.ConcatPaddedSequences(pointsLabels.unsqueeze(-1), pointsMask, labelsBr.unsqueeze(-1), prompt.BoxMask);
            pointsLabels = pointsLabels.squeeze(-1);
        }

        var (embeds, mask) = EncodePoints(points, pointsMask, pointsLabels, imgNchw);
        if (!encode_boxes_as_points)
        {
            var (boxEmbeds, boxMask) = EncodeBoxes(prompt.BoxEmbeddings, prompt.BoxMask, prompt.BoxLabels, imgNchw);
            (embeds, mask) = Prompt.ConcatPaddedSequences(embeds, mask, boxEmbeds, boxMask);
        }

        if (cls_embed is not null)
        {
            var cls = cls_embed.weight!.view(1, 1, d_model).repeat(1, bs, 1);
            var clsMask = torch.zeros(bs, 1, dtype: mask.dtype, device: mask.device);
            (embeds, mask) = Prompt.ConcatPaddedSequences(embeds, mask, cls, clsMask);
        }

        if (final_proj is not null) embeds = Precision.PrecisionPolicy.Norm(norm!, final_proj.forward(Precision.PrecisionPolicy.ToWeightDtype(embeds, final_proj.weight!)));

        if (encode is not null)
        {
            foreach (var layer in encode)
                embeds = layer.forward(embeds, feats, tgtKeyPaddingMask: mask, pos: pos);
            embeds = Precision.PrecisionPolicy.Norm(encode_norm!, embeds);
        }
        return (embeds.MoveToOuterDisposeScope(), mask.MoveToOuterDisposeScope());
    }

    /// <summary>_encode_points: points [Np,B,2] (normalised xy) → [Np,B,d].</summary>
    private (Tensor, Tensor) EncodePoints(Tensor points, Tensor mask, Tensor labels, Tensor? imgNchw)
    {
        long n = points.shape[0], bs = points.shape[1];
        if (n > 0 && PointProjectionsUnavailable is { } why) throw new Sam3PromptException($"detector point prompt: {why}");
        Tensor? emb = null;
        if (points_direct_project is not null) emb = points_direct_project.forward(Precision.PrecisionPolicy.ToWeightDtype(points, points_direct_project.weight!));
        if (points_pool_project is not null)
        {
            Tensor sampled;
            if (n == 0)
            {
                sampled = TieToGraph(torch.zeros(new long[] { 0, bs, d_model }, dtype: imgNchw!.dtype, device: imgNchw.device), imgNchw);
            }
            else
            {
                // grid [B,Np,1,2] in [-1,1]; bilinear, zero padding, align_corners=False
                var grid = points.transpose(0, 1).unsqueeze(2) * 2 - 1;
                var s = nn.functional.grid_sample(imgNchw!, grid.to(imgNchw!.dtype), GridSampleMode.Bilinear,
                                                  GridSamplePaddingMode.Zeros, align_corners: false);   // [B,C,Np,1]
                sampled = s.squeeze(-1).permute(2, 0, 1);                                                // [Np,B,C]
            }
            var proj = points_pool_project.forward(Precision.PrecisionPolicy.ToWeightDtype(sampled, points_pool_project.weight!));
            emb = emb is null ? proj : emb + proj;
        }
        if (points_pos_enc_project is not null)
        {
            var xy = points.unbind(-1);
            var (encX, encY) = pos_enc.EncodeXy(xy[0].flatten(), xy[1].flatten());
            // points: x encoding first (boxes put y first)
            var enc = torch.cat([encX.view(n, bs, encX.shape[^1]), encY.view(n, bs, encY.shape[^1])], -1);
            var proj = points_pos_enc_project.forward(Precision.PrecisionPolicy.ToWeightDtype(enc, points_pos_enc_project.weight!));
            emb = emb is null ? proj : emb + proj;
        }
        var typeEmbed = label_embed.forward(labels.to(ScalarType.Int64));
        return (typeEmbed + emb!, mask);
    }

    /// <summary>
    /// An empty tensor tied into the autograd graph of <paramref name="source"/> (adds the sum of an empty slice, i.e. 0).
    /// Upstream pools (grid_sample / roi_align) and projects even an empty prompt, so in training <c>img_pre_norm</c> and
    /// the pooling projections get an all-zero gradient rather than none (AdamW weight-decays the former, skips the latter).
    /// Without gradients the empty tensor is returned as is.
    /// </summary>
    private static Tensor TieToGraph(Tensor empty, Tensor source)
        => source.requires_grad ? empty + source.flatten().narrow(0, 0, 0).sum().to(empty.dtype) : empty;

    /// <summary>_encode_boxes: boxes [Nb,B,4] (normalised cxcywh) → [Nb,B,d].</summary>
    private (Tensor, Tensor) EncodeBoxes(Tensor boxes, Tensor mask, Tensor labels, Tensor? imgNchw)
    {
        long n = boxes.shape[0], bs = boxes.shape[1];
        Tensor? emb = null;
        if (boxes_direct_project is not null) emb = boxes_direct_project.forward(Precision.PrecisionPolicy.ToWeightDtype(boxes, boxes_direct_project.weight!));
        if (boxes_pool_project is not null)
        {
            long hh = imgNchw!.shape[2], ww = imgNchw.shape[3];
            var xyxy = BoxOps.CxcywhToXyxy(boxes);
            var scale = torch.tensor(new float[] { ww, hh, ww, hh }, device: boxes.device).to(xyxy.dtype).view(1, 1, 4);
            xyxy = (xyxy * scale).to(ScalarType.Float32);
            var perImage = xyxy.transpose(0, 1).unbind(0);   // B × [Nb,4]
            var rois = RoiAlign.BoxesToRois(perImage, imgNchw.dtype, imgNchw.device);
            var sampled = RoiAlign.Forward(imgNchw, rois, roi_size, roi_size, spatialScale: 1.0, samplingRatio: -1, aligned: false);
            var proj = n == 0
                ? TieToGraph(torch.zeros(new long[] { 0, bs, d_model }, dtype: imgNchw.dtype, device: imgNchw.device),
                             boxes_pool_project.forward(Precision.PrecisionPolicy.ToWeightDtype(TieToGraph(sampled, imgNchw), boxes_pool_project.weight!)))
                : boxes_pool_project.forward(Precision.PrecisionPolicy.ToWeightDtype(sampled, boxes_pool_project.weight!)).view(bs, n, d_model).transpose(0, 1);
            emb = emb is null ? proj : emb + proj;
        }
        if (boxes_pos_enc_project is not null)
        {
            var u = boxes.unbind(-1);
            var enc = pos_enc.EncodeBoxes(u[0].flatten(), u[1].flatten(), u[2].flatten(), u[3].flatten());
            var proj = boxes_pos_enc_project.forward(Precision.PrecisionPolicy.ToWeightDtype(enc.view(n, bs, enc.shape[^1]), boxes_pos_enc_project.weight!));
            emb = emb is null ? proj : emb + proj;
        }
        var typeEmbed = label_embed.forward(labels.to(ScalarType.Int64));
        return (typeEmbed + emb!, mask);
    }
}
