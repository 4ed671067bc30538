using Sam3.Torch.Config;
using Sam3.Torch.Modeling.Common;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Decoder;

/// <summary>
/// Output of <see cref="TransformerDecoder"/> (seq-first, as upstream): <see cref="Hs"/> [L,Q,B,d] normed query states per
/// layer, <see cref="ReferenceBoxes"/> [L,Q,B,4] the cxcywh (sigmoid-space) boxes each layer started from (layer 0 =
/// sigmoid(reference_points)), <see cref="PresenceLogits"/> [L,1,B] and <see cref="PresenceFeats"/> [1,B,d] (null without a
/// presence token). With DAC (training) Q = 2·num_queries: one-to-one queries first, then the one-to-many copies.
/// </summary>
internal sealed record TransformerDecoderOutput(Tensor Hs, Tensor ReferenceBoxes, Tensor? PresenceLogits, Tensor? PresenceFeats) : IDisposable
{
    public void Dispose()
    {
        Hs.Dispose();
        ReferenceBoxes.Dispose();
        PresenceLogits?.Dispose();
        PresenceFeats?.Dispose();
    }
}

/// <summary>
/// The detector decoder (sam3/model/decoder.py TransformerDecoder) with presence token, boxRPB attention bias, iterative box
/// refinement and DAC (training only). Supported configuration = what the reference asserts: <c>return_intermediate</c> and
/// <c>box_refine</c> must be true; no instance queries, no interaction layers.
/// </summary>
internal sealed class TransformerDecoder : nn.Module
{
    // Field order = the reference's registration order.
    public readonly ModuleList<TransformerDecoderLayer> layers;
    public readonly LayerNorm norm;
    public readonly Mlp bbox_embed;
    public readonly Embedding query_embed;
    public readonly Embedding reference_points;
    public readonly Mlp? boxRPB_embed_x;
    public readonly Mlp? boxRPB_embed_y;
    public readonly Embedding? presence_token;
    public readonly Mlp? presence_token_head;
    public readonly LayerNorm? presence_token_out_norm;
    public readonly Mlp ref_point_head;

    public int d_model { get; }
    public int num_layers { get; }
    public int num_queries { get; }
    public int num_heads { get; }
    /// <summary>DAC is configured (it is applied only when training, see <see cref="forward"/>).</summary>
    public bool dac { get; }
    /// <summary>With DAC the one-to-many query count equals num_queries, otherwise 0 (num_o2m_queries=0 in the builder).</summary>
    public int num_o2m_queries => dac ? num_queries : 0;
    public string boxRPB { get; }
    public bool dac_use_selfatt_ln { get; }

    /// <summary>
    /// Activation checkpointing of the layers when training (upstream <c>use_act_checkpoint</c>, True in the builder): each
    /// layer keeps only its inputs and is re-run in the backward (<see cref="Training.LayerCheckpoint"/>). Set by
    /// <see cref="Training.TrainingMode.Apply"/>; no effect in eval mode.
    /// </summary>
    public bool use_act_checkpoint { get; set; }
    public double clamp_presence_logit_max_val { get; }

    /// <summary>
    /// Upstream quirk (decoder.py, <c>clamp_presence_logits</c>): the intended ±<see cref="clamp_presence_logit_max_val"/> clamp
    /// of the per-layer presence logits is a non-in-place <c>clamp</c> whose result is discarded, i.e. a no-op. False
    /// (default, from <c>HardcodedInClasses.ClampPresenceLogitsIsEffective</c>) reproduces that; true applies the clamp.
    /// </summary>
    public bool ClampPresenceLogitsIsEffective { get; set; }

    private readonly double inverseSigmoidEps;
    private readonly double rpbLogScale;
    // Sine encoding of the reference boxes (gen_sineembed_for_position): temperature 10000, scale 2π = the common module's
    // defaults, num_feats = d_model per coordinate pair. Weightless; kept out of the module tree.
    private readonly PositionEmbeddingSine boxSine;
    // boxRPB coordinate cache (non-persistent in the reference): arange(H)/H, arange(W)/W per (H, W, device).
    private readonly Dictionary<(long, long, DeviceType, int), (Tensor h, Tensor w)> coordCache = new();

    public TransformerDecoder(Sam3Config cfg) : this(cfg.Decoder, cfg.HardcodedInClasses) { }

    public TransformerDecoder(DecoderConfig d, HardcodedConfig hc) : base(nameof(TransformerDecoder))
    {
        if (!d.ReturnIntermediate) throw new Sam3ConfigException("TransformerDecoder supports return_intermediate=true only (as upstream)");
        if (!d.BoxRefine) throw new Sam3ConfigException("TransformerDecoder supports box_refine=true only (as upstream)");
        if (d.BoxRPB is not ("none" or "log" or "linear" or "both"))
            throw new Sam3ConfigException($"unknown boxRPB '{d.BoxRPB}' (expected none, log, linear or both)");
        d_model = d.DModel;
        num_layers = d.NumLayers;
        num_queries = d.NumQueries;
        num_heads = d.NumHeads;
        dac = d.Dac;
        boxRPB = d.BoxRPB;
        dac_use_selfatt_ln = d.DacUseSelfattLn;
        clamp_presence_logit_max_val = hc.ClampPresenceLogitMaxVal;
        ClampPresenceLogitsIsEffective = hc.ClampPresenceLogitsIsEffective;
        inverseSigmoidEps = hc.InverseSigmoidEps;
        rpbLogScale = hc.BoxRpbLogScale;

        var sym = new Dictionary<string, int> { ["d"] = d.DModel, ["num_heads"] = d.NumHeads };
        layers = new ModuleList<TransformerDecoderLayer>();
        for (int i = 0; i < d.NumLayers; i++) layers.Add(new TransformerDecoderLayer(d, hc));
        norm = nn.LayerNorm(d.DModel, hc.LayerNormEps);
        bbox_embed = MlpSpec.Build(hc.DecoderBboxEmbed, sym);
        // with DAC the o2m queries are copies, so query_embed has num_queries rows either way (num_o2m_queries=0 otherwise)
        query_embed = nn.Embedding(d.NumQueries, d.DModel);
        reference_points = nn.Embedding(d.NumQueries, 4);
        if (d.BoxRPB != "none")
        {
            // the spec's input size is for one delta pair (x0,x1); "both" feeds the raw and the log pair
            var (inDim, hidden, outDim, depth) = MlpSpec.Parse(hc.DecoderBoxRpbEmbed, sym);
            int nInput = d.BoxRPB == "both" ? 2 * inDim : inDim;
            boxRPB_embed_x = new Mlp(nInput, hidden, outDim, depth);
            boxRPB_embed_y = new Mlp(nInput, hidden, outDim, depth);
        }
        if (d.PresenceToken)
        {
            presence_token = nn.Embedding(1, d.DModel);
            presence_token_head = MlpSpec.Build(hc.DecoderPresenceTokenHead, sym);
            presence_token_out_norm = nn.LayerNorm(d.DModel, hc.LayerNormEps);
        }
        ref_point_head = MlpSpec.Build(hc.DecoderRefPointHead, sym);

        // reference init (a checkpoint overrides it): zero last box-head layer, N(0,1) query embeddings
        using (torch.no_grad())
        {
            var last = bbox_embed.layers[bbox_embed.layers.Count - 1];
            nn.init.zeros_(last.weight);
            nn.init.zeros_(last.bias!);
            nn.init.normal_(query_embed.weight);
        }
        RegisterComponents();
        boxSine = new PositionEmbeddingSine(d.DModel); // after RegisterComponents: not a submodule
    }

    /// <summary>gen_sineembed_for_position for 4-d boxes [Q,B,4] (cx,cy,w,h) → [Q,B,2·d_model] in the order (y, x, w, h).</summary>
    public Tensor SineEmbedBoxes(Tensor boxes)
    {
        using var scope = NewDisposeScope();
        long q = boxes.shape[0], b = boxes.shape[1];
        var flat = boxes.reshape(q * b, boxes.shape[2]);
        if (flat.shape[1] != 4) throw new Sam3Exception($"reference boxes must have 4 coordinates, got {flat.shape[1]}");
        var (px, py) = boxSine.EncodeXy(flat[.., 0], flat[.., 1]);
        var (pw, ph) = boxSine.EncodeXy(flat[.., 2], flat[.., 3]);
        return cat([py, px, pw, ph], 1).view(q, b, -1).MoveToOuterDisposeScope();
    }

    private (Tensor h, Tensor w) Coords(long h, long w, Device device)
    {
        var key = (h, w, device.type, device.index);
        if (!coordCache.TryGetValue(key, out var c))
        {
            var ch = (arange(0, h, dtype: ScalarType.Float32, device: device) / h).DetachFromDisposeScope();
            var cw = (arange(0, w, dtype: ScalarType.Float32, device: device) / w).DetachFromDisposeScope();
            c = (ch, cw);
            coordCache[key] = c;
        }
        return c;
    }

    private Tensor LogDeltas(Tensor d)
    {
        // d·8 → sign·log2(|d|+1)/log2(8)
        var s = d * rpbLogScale;
        return sign(s) * log2(s.abs() + 1.0) / Math.Log2(rpbLogScale);
    }

    /// <summary>
    /// boxRPB bias (decoder.py _get_rpb_matrix): from reference boxes [Q,B,4] (cxcywh) and the feature size, returns
    /// [B,heads,Q,H·W] (contiguous). Coordinates are <c>arange(N)/N</c> (left/top edges); deltas to the box edges x0/x1
    /// (y0/y1), "log" mode: ×8 then sign·log2(|d|+1)/3; an MLP per axis gives one value per head; bias = dy + dx.
    /// With <paramref name="presenceRow"/> the result is [B,heads,1+Q,H·W] whose first query row is zero: the row the
    /// decoder layer prepends for the presence token (upstream concatenates <c>zeros_like</c> in the layer).
    /// </summary>
    /// <remarks>
    /// Upstream builds the sum query-major, <c>[B,Q,H,W,heads]</c>, then permutes it to head-major with a copy, and the
    /// layer copies it once more to prepend the presence row: three passes over a [heads,Q,H·W] tensor (33 MB at full
    /// size, per layer). Here the two small per-axis tables are made head-major first and the broadcast sum writes the
    /// head-major result once, presence row included. Every element is the same single fp32 addition <c>dy + dx</c> (and
    /// 0 + 0 = +0 for the presence row), so the values equal upstream's bit for bit.
    /// </remarks>
    public Tensor GetRpbMatrix(Tensor referenceBoxes, long featH, long featW, bool presenceRow = false)
    {
        if (boxRPB_embed_x is null || boxRPB_embed_y is null) throw new Sam3Exception("boxRPB is 'none': no RPB matrix");
        using var scope = NewDisposeScope();
        var xyxy = BoxOps.CxcywhToXyxy(referenceBoxes).transpose(0, 1); // B,Q,4
        long bs = xyxy.shape[0], nq = xyxy.shape[1];
        var (ch, cw) = Coords(featH, featW, referenceBoxes.device);
        var flat = xyxy.reshape(-1, 1, 4);
        var dy = (ch.view(1, -1, 1) - flat[.., .., TensorIndex.Slice(1, 4, 2)]).view(bs, nq, -1, 2);
        var dx = (cw.view(1, -1, 1) - flat[.., .., TensorIndex.Slice(0, 3, 2)]).view(bs, nq, -1, 2);
        switch (boxRPB)
        {
            case "log":
                dx = LogDeltas(dx);
                dy = LogDeltas(dy);
                break;
            case "both":
                dx = cat([dx, LogDeltas(dx)], -1);
                dy = cat([dy, LogDeltas(dy)], -1);
                break;
        }
        bool blocked = UseInferenceFastPaths && !training && !torch.is_grad_enabled();
        // inference on the CPU in fp32: both MLPs and the head-major sum in one kernel (not bit-identical, see BoxRpbKernel)
        if (blocked && UseRpbKernel && dx.device_type == DeviceType.CPU && dx.dtype == ScalarType.Float32
            && BoxRpbKernel.Supports(boxRPB_embed_x, boxRPB_embed_y))
            return BoxRpbKernel.Bias(dx, dy, boxRPB_embed_x, boxRPB_embed_y, presenceRow).MoveToOuterDisposeScope();
        var ex = blocked ? RpbMlpInRowBlocks(boxRPB_embed_x, dx) : boxRPB_embed_x.forward(dx); // B,Q,W,heads
        var ey = blocked ? RpbMlpInRowBlocks(boxRPB_embed_y, dy) : boxRPB_embed_y.forward(dy); // B,Q,H,heads
        if (presenceRow)
        {
            ex = cat([zeros_like(ex[.., TensorIndex.Slice(0, 1)]), ex], 1); // B,1+Q,W,heads
            ey = cat([zeros_like(ey[.., TensorIndex.Slice(0, 1)]), ey], 1);
        }
        // head-major tables (small copies), so that the broadcast sum is written head-major in one pass
        var exT = ex.permute(0, 3, 1, 2).contiguous(); // B,heads,Q',W
        var eyT = ey.permute(0, 3, 1, 2).contiguous(); // B,heads,Q',H
        var bias = eyT.unsqueeze(4) + exT.unsqueeze(3); // B,heads,Q',H,W
        return bias.flatten(3, 4).MoveToOuterDisposeScope(); // B,heads,Q',HW
    }

    /// <summary>
    /// Inference fast paths (default true; they apply only when gradients are off and the module is in eval mode): the boxRPB
    /// MLPs run in row blocks with the ReLU in place (<see cref="RpbMlpRowBlock"/>), the memory's key input
    /// <c>memory + pos</c> is added once for all layers, the FFN's ReLU is in place. Every element goes through the same
    /// operations as in the plain path; false runs the plain path (A/B checks and tests).
    /// </summary>
    public bool UseInferenceFastPaths { get; set; } = true;

    /// <summary>
    /// On the inference fast path (<see cref="UseInferenceFastPaths"/>, eval, no gradients) with fp32 CPU tensors, build the
    /// boxRPB bias with the fused <see cref="BoxRpbKernel"/> (default true). Unlike the other fast paths it is not
    /// bit-identical to the plain path (its dot products are summed in another order; within fp32 rounding); false keeps
    /// the LibTorch construction (row-blocked MLPs and a broadcast sum), bit-identical to the plain path.
    /// </summary>
    public bool UseRpbKernel { get; set; } = true;

    /// <summary>
    /// Rows per block of the boxRPB MLPs on the inference fast path. Each axis's MLP maps B·Q·W rows (14,400 at full size)
    /// through a hidden layer of d_model: as one call the [rows, 256] hidden tensor (15 MB) is written, rectified and read
    /// back from main memory; in blocks of this many rows it stays in the cache (1024 rows = 1 MB).
    /// </summary>
    public int RpbMlpRowBlock { get; set; } = DefaultRpbMlpRowBlock;

    /// <summary>
    /// Fewest rows of a block (smaller settings are raised to it; a shorter remainder joins the last block): LibTorch's GEMM
    /// takes a matrix-vector kernel for a single row, which rounds differently (measured: one-row blocks change the output
    /// in the last bit); from a few rows on the blocked results equal the one-call results bit for bit.
    /// </summary>
    public const int MinRpbMlpRowBlock = 64;

    /// <summary>Default of <see cref="RpbMlpRowBlock"/>.</summary>
    public const int DefaultRpbMlpRowBlock = 1024;

    /// <summary>
    /// A boxRPB MLP (Linear → ReLU → … → Linear, as <see cref="Mlp.forward"/> without dropout) over the rows of
    /// <paramref name="x"/> [..., in] in blocks of <see cref="RpbMlpRowBlock"/> rows, ReLU in place; no autograd.
    /// </summary>
    private Tensor RpbMlpInRowBlocks(Mlp mlp, Tensor x)
    {
        using var scope = NewDisposeScope();
        var lead = x.shape[..^1];
        var flat = x.reshape(-1, x.shape[^1]);
        long rows = flat.shape[0];
        long block = Math.Max(MinRpbMlpRowBlock, RpbMlpRowBlock);
        int depth = mlp.layers.Count;
        var parts = new List<Tensor>();
        for (long start = 0, end; start < rows; start = end)
        {
            // a short remainder joins the last block: a GEMM of very few rows (one: a matrix-vector product) may take a
            // kernel that rounds differently
            end = rows - (start + block) < MinRpbMlpRowBlock ? rows : start + block;
            using var blockScope = NewDisposeScope();
            var h = flat[TensorIndex.Slice(start, end)];
            for (int i = 0; i < depth; i++)
            {
                var linear = mlp.layers[i];
                h = linear.forward(Precision.PrecisionPolicy.ToWeightDtype(h, linear.weight!));
                if (i < depth - 1) h = h.relu_();
            }
            parts.Add(h.MoveToOuterDisposeScope());
        }
        var y = parts.Count == 1 ? parts[0] : cat(parts, 0);
        return y.view([.. lead, y.shape[1]]).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The image cross-attention's k and v in-projections of every layer at once: <paramref name="keyInput"/>
    /// (<c>memory + pos</c>) and <paramref name="valueInput"/> (<c>memory</c>), seq-first [HW,B,d], times the layers' stacked
    /// k (v) weights → batch-first [B,HW,layers·d]; layer i's projection is the column slice [i·d, (i+1)·d). Each output
    /// element is the same dot product over d as in the per-layer GEMM.
    /// </summary>
    private (Tensor k, Tensor v) ProjectMemoryForAllLayers(Tensor keyInput, Tensor valueInput)
    {
        using var scope = NewDisposeScope();
        var wk = new List<Tensor>(); var bk = new List<Tensor>(); var wv = new List<Tensor>(); var bv = new List<Tensor>();
        foreach (var layer in layers)
        {
            var w = layer.cross_attn.in_proj_weight.chunk(3, 0);
            var b = layer.cross_attn.in_proj_bias.chunk(3, 0);
            wk.Add(w[1]); bk.Add(b[1]); wv.Add(w[2]); bv.Add(b[2]);
        }
        var weight = layers[0].cross_attn.in_proj_weight;
        var k = nn.functional.linear(Precision.PrecisionPolicy.ToWeightDtype(keyInput.transpose(0, 1), weight), cat(wk, 0), cat(bk, 0));
        var v = nn.functional.linear(Precision.PrecisionPolicy.ToWeightDtype(valueInput.transpose(0, 1), weight), cat(wv, 0), cat(bv, 0));
        return (k.MoveToOuterDisposeScope(), v.MoveToOuterDisposeScope());
    }

    private Tensor Slice(Tensor all, int layer) => all[.., .., TensorIndex.Slice(layer * d_model, (layer + 1) * d_model)];

    /// <summary>
    /// Runs the decoder. Seq-first inputs as upstream: <paramref name="tgt"/> [Q,B,d] (Sam3ImageModel passes query_embed repeated
    /// over the batch), <paramref name="memory"/>/<paramref name="pos"/> [HW,B,d] (single feature level of size
    /// <paramref name="featH"/>×<paramref name="featW"/>), <paramref name="memoryText"/> [S,B,d] (the prompt) with
    /// <paramref name="textAttentionMask"/> [B,S] (True = padding), <paramref name="memoryKeyPaddingMask"/> [HW,B] (seq-first
    /// as the encoder returns it; transposed here), <paramref name="validRatios"/> [B,levels,2] (null = ones),
    /// <paramref name="referenceBoxes"/> [Q,B,4] (null = sigmoid(reference_points)), <paramref name="applyDac"/> (null =
    /// <see cref="dac"/>; Sam3ImageModel passes <c>dac &amp;&amp; training</c>). <paramref name="probe"/>, if given, receives
    /// intermediate tensors named like the parity fixtures ("rpb" [B,heads,Q,HW] per layer, "layer{i}.0" queries, "layer{i}.1"
    /// presence token); the tensors are only valid during the call.
    /// </summary>
    public TransformerDecoderOutput forward(
        Tensor tgt, Tensor memory, Tensor? pos, long featH, long featW,
        Tensor? memoryText = null, Tensor? textAttentionMask = null, Tensor? memoryKeyPaddingMask = null,
        Tensor? validRatios = null, Tensor? referenceBoxes = null, Tensor? tgtMask = null, bool? applyDac = null,
        Action<string, Tensor>? probe = null)
    {
        using var scope = NewDisposeScope();
        if (tgt.dim() != 3 || tgt.shape[2] != d_model)
            throw new Sam3Exception($"decoder tgt must be [Q,B,{d_model}], got [{string.Join(",", tgt.shape)}]");
        if (memory.dim() != 3 || memory.shape[0] != featH * featW || memory.shape[1] != tgt.shape[1])
            throw new Sam3Exception($"decoder memory must be [{featH * featW},{tgt.shape[1]},d], got [{string.Join(",", memory.shape)}]");
        bool useDac = applyDac ?? dac;
        if (useDac)
        {
            if (tgt.shape[0] != num_queries)
                throw new Sam3Exception($"DAC expects {num_queries} queries, got {tgt.shape[0]}");
            tgt = tgt.repeat(2, 1, 1);
            if (referenceBoxes is not null)
            {
                if (referenceBoxes.shape[0] != num_queries)
                    throw new Sam3Exception($"DAC expects {num_queries} reference boxes, got {referenceBoxes.shape[0]}");
                referenceBoxes = referenceBoxes.repeat(2, 1, 1);
            }
        }
        long bs = tgt.shape[1];
        if (referenceBoxes is null)
            referenceBoxes = reference_points.weight!.unsqueeze(1).repeat(useDac ? 2 : 1, bs, 1).sigmoid();
        var intermediate = new List<Tensor>();
        var intermediateRef = new List<Tensor> { referenceBoxes };
        var presenceLogits = new List<Tensor>();
        Tensor? presenceFeats = null;
        Tensor? presenceOut = presence_token is null ? null : presence_token.weight![TensorIndex.None].expand(1, bs, -1);
        var kpm = memoryKeyPaddingMask?.transpose(0, 1);
        Tensor? ratios4 = validRatios is null ? null : cat([validRatios, validRatios], -1)[TensorIndex.None]; // 1,B,levels,4

        // inference: the image cross-attention's key input memory + pos is the same for every layer, added once here
        bool fastPaths = UseInferenceFastPaths && !training && !torch.is_grad_enabled();
        Tensor? memoryKey = fastPaths && pos is not null ? memory + pos : null;
        // inference: the k and v projections of the memory (the same inputs in every layer, per-layer weights) for all
        // layers in two GEMMs of N = layers·d instead of 2·layers GEMMs of N = d; each layer reads its column slice
        var (kAll, vAll) = fastPaths && !useDac && num_layers > 1 ? ProjectMemoryForAllLayers(memoryKey ?? memory, memory) : (null, null);

        var output = tgt;
        for (int i = 0; i < num_layers; i++)
        {
            var refInput = ratios4 is null ? referenceBoxes : (referenceBoxes[.., .., TensorIndex.None] * ratios4)[.., .., 0];
            var queryPos = ref_point_head.forward(SineEmbedBoxes(refInput));
            Tensor? memoryMask = null;
            bool withPresenceRow = presenceOut is not null;
            if (boxRPB != "none")
            {
                // with a presence token the bias already holds the layer's zero presence row (one write, see GetRpbMatrix)
                var rpb = GetRpbMatrix(referenceBoxes, featH, featW, withPresenceRow);
                probe?.Invoke("rpb", withPresenceRow ? rpb[.., .., TensorIndex.Slice(1, null)] : rpb);
                memoryMask = rpb.flatten(0, 1); // (B·heads, [1+]Q, HW), batch-major head order
            }
            if (use_act_checkpoint && training)
            {
                var layer = layers[i];
                var outs = Training.LayerCheckpoint.Apply(layer, t =>
                {
                    var (o, p) = layer.forward(t[0]!, t[1]!, t[2]!, t[3], t[4], t[7], t[8], t[9], t[5], useDac,
                        dac_use_selfatt_ln, t[6], crossAttnMaskHasPresenceRow: withPresenceRow);
                    return [o, p];
                }, output, queryPos, memory, pos, memoryText, memoryMask, presenceOut, textAttentionMask, kpm, tgtMask);
                (output, presenceOut) = (outs[0]!, outs[1]);
            }
            else
                (output, presenceOut) = layers[i].forward(output, queryPos, memory, pos, memoryText, textAttentionMask, kpm,
                    tgtMask, memoryMask, useDac, dac_use_selfatt_ln, presenceOut, crossAttnMaskHasPresenceRow: withPresenceRow,
                    memoryKey: memoryKey, inPlaceActivation: fastPaths,
                    memoryKvProjected: kAll is null ? null : (Slice(kAll, i), Slice(vAll!, i)));
            probe?.Invoke($"layer{i}.0", output);
            if (presenceOut is not null) probe?.Invoke($"layer{i}.1", presenceOut);

            // iterative box refinement from the normed output; the refined boxes are detached for the next layer
            var normed = norm.forward(output);
            var newRef = (bbox_embed.forward(normed) + BoxOps.InverseSigmoid(referenceBoxes, inverseSigmoidEps)).sigmoid();
            referenceBoxes = newRef.detach();
            if (i != num_layers - 1) intermediateRef.Add(newRef);
            intermediate.Add(normed);

            if (presenceOut is not null)
            {
                var logit = presence_token_head!.forward(presence_token_out_norm!.forward(presenceOut)).squeeze(-1); // 1,B
                // Quirk (named above): upstream's clamp result is discarded. Applied only when ClampPresenceLogitsIsEffective.
                if (ClampPresenceLogitsIsEffective)
                    logit = logit.clamp(-clamp_presence_logit_max_val, clamp_presence_logit_max_val);
                presenceLogits.Add(logit);
                presenceFeats = presenceOut.clone();
            }
        }
        var result = new TransformerDecoderOutput(
            stack(intermediate).MoveToOuterDisposeScope(),
            stack(intermediateRef).MoveToOuterDisposeScope(),
            presenceLogits.Count > 0 ? stack(presenceLogits).MoveToOuterDisposeScope() : null,
            presenceFeats?.MoveToOuterDisposeScope());
        return result;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            foreach (var (h, w) in coordCache.Values) { h.Dispose(); w.Dispose(); }
            coordCache.Clear();
            boxSine.Dispose();
        }
        base.Dispose(disposing);
    }
}
