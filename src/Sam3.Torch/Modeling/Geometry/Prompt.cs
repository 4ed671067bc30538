using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Geometry;

/// <summary>
/// Geometric prompt (sam3/model/geometry_encoders.py <c>Prompt</c>), without mask prompts (SAM3 builds no mask encoder).
/// Sequences are seq-first as upstream; masks are batch-first with True = padding; labels are seq-first
/// (1 / true = positive, 0 / false = negative).
/// <list type="bullet">
/// <item>BoxEmbeddings [Nb,B,4] normalised cxcywh, BoxMask bool [B,Nb], BoxLabels [Nb,B] (int64 or bool)</item>
/// <item>PointEmbeddings [Np,B,2] normalised xy, PointMask bool [B,Np], PointLabels [Np,B]</item>
/// </list>
/// Missing parts are filled as upstream: zero-length sequences, all-positive labels, all-valid masks. Sequences are
/// right-padded; <see cref="AppendBoxes"/>/<see cref="AppendPoints"/> keep them so. The tensors belong to the dispose
/// scope that was active when they were created (this class does not dispose them).
/// </summary>
internal sealed class Prompt
{
    public Tensor BoxEmbeddings { get; private set; }
    public Tensor BoxMask { get; private set; }
    public Tensor BoxLabels { get; private set; }
    public Tensor PointEmbeddings { get; private set; }
    public Tensor PointMask { get; private set; }
    public Tensor PointLabels { get; private set; }

    public long BatchSize => BoxEmbeddings.shape[1];
    public long NumBoxes => BoxEmbeddings.shape[0];
    public long NumPoints => PointEmbeddings.shape[0];

    /// <summary>
    /// At least one of <paramref name="boxEmbeddings"/> / <paramref name="pointEmbeddings"/> must be given (it fixes the
    /// batch size and device); the other parts default as upstream (<c>_init_box</c>, <c>_init_point</c>).
    /// </summary>
    public Prompt(Tensor? boxEmbeddings = null, Tensor? boxMask = null, Tensor? pointEmbeddings = null, Tensor? pointMask = null,
                  Tensor? boxLabels = null, Tensor? pointLabels = null)
    {
        if (boxEmbeddings is null && pointEmbeddings is null)
            throw new Sam3PromptException("a geometric prompt needs box or point embeddings (use Prompt.Empty for a prompt without geometry)");
        long bs;
        Device device;
        if (boxEmbeddings is not null)
        {
            CheckSeq(boxEmbeddings, 4, "box embeddings");
            bs = boxEmbeddings.shape[1];
            device = boxEmbeddings.device;
            if (pointEmbeddings is not null && pointEmbeddings.shape[1] != bs)
                throw new Sam3PromptException($"batch size mismatch between box and point embeddings: {bs} vs {pointEmbeddings.shape[1]}");
        }
        else
        {
            bs = pointEmbeddings!.shape[1];
            device = pointEmbeddings.device;
        }
        if (pointEmbeddings is not null) CheckSeq(pointEmbeddings, 2, "point embeddings");
        long nb = boxEmbeddings?.shape[0] ?? 0, np = pointEmbeddings?.shape[0] ?? 0;

        BoxEmbeddings = boxEmbeddings ?? torch.zeros(nb, bs, 4, device: device);
        BoxLabels = boxLabels ?? torch.ones(nb, bs, dtype: ScalarType.Int64, device: device);
        BoxMask = boxMask ?? torch.zeros(bs, nb, dtype: ScalarType.Bool, device: device);
        PointEmbeddings = pointEmbeddings ?? torch.zeros(np, bs, 2, device: device);
        PointLabels = pointLabels ?? torch.ones(np, bs, dtype: ScalarType.Int64, device: device);
        PointMask = pointMask ?? torch.zeros(bs, np, dtype: ScalarType.Bool, device: device);
        CheckShapes();
    }

    private Prompt(Tensor be, Tensor bm, Tensor bl, Tensor pe, Tensor pm, Tensor pl, bool _)
    {
        BoxEmbeddings = be; BoxMask = bm; BoxLabels = bl; PointEmbeddings = pe; PointMask = pm; PointLabels = pl;
    }

    /// <summary>A prompt without boxes or points (<c>Sam3ImageModel._get_dummy_prompt</c>): [0,B,4] boxes, [B,0] mask.</summary>
    public static Prompt Empty(long batchSize = 1, Device? device = null)
        => new(boxEmbeddings: torch.zeros(0, batchSize, 4, device: device),
               boxMask: torch.zeros(batchSize, 0, dtype: ScalarType.Bool, device: device));

    private static void CheckSeq(Tensor t, int lastDim, string what)
    {
        if (t.dim() != 3 || t.shape[2] != lastDim)
            throw new Sam3PromptException($"{what} must be [N,B,{lastDim}], got [{string.Join(",", t.shape)}]");
        if (!t.is_floating_point()) throw new Sam3PromptException($"{what} must be floating point, got {t.dtype}");
    }

    private void CheckShapes()
    {
        long bs = BoxEmbeddings.shape[1], nb = BoxEmbeddings.shape[0], np = PointEmbeddings.shape[0];
        static string S(Tensor t) => "[" + string.Join(",", t.shape) + "]";
        if (!BoxMask.shape.SequenceEqual(new[] { bs, nb })) throw new Sam3PromptException($"box mask must be [{bs},{nb}], got {S(BoxMask)}");
        if (!BoxLabels.shape.SequenceEqual(new[] { nb, bs })) throw new Sam3PromptException($"box labels must be [{nb},{bs}], got {S(BoxLabels)}");
        if (PointEmbeddings.shape[1] != bs) throw new Sam3PromptException($"point embeddings batch {PointEmbeddings.shape[1]} differs from {bs}");
        if (!PointMask.shape.SequenceEqual(new[] { bs, np })) throw new Sam3PromptException($"point mask must be [{bs},{np}], got {S(PointMask)}");
        if (!PointLabels.shape.SequenceEqual(new[] { np, bs })) throw new Sam3PromptException($"point labels must be [{np},{bs}], got {S(PointLabels)}");
        if (BoxMask.dtype != ScalarType.Bool || PointMask.dtype != ScalarType.Bool) throw new Sam3PromptException("prompt masks must be bool (True = padding)");
    }

    /// <summary>Appends boxes [n,B,4] with labels [n,B] (and optional mask [B,n]), keeping the sequence right-padded.</summary>
    public void AppendBoxes(Tensor boxes, Tensor labels, Tensor? mask = null)
    {
        CheckSeq(boxes, 4, "boxes");
        if (boxes.shape[1] != BatchSize || !labels.shape.SequenceEqual(boxes.shape.Take(2)))
            throw new Sam3PromptException($"boxes [{string.Join(",", boxes.shape)}] / labels [{string.Join(",", labels.shape)}] do not fit batch size {BatchSize}");
        using var scope = NewDisposeScope();
        mask ??= torch.zeros(BatchSize, boxes.shape[0], dtype: ScalarType.Bool, device: boxes.device);
        var (lab, _) = ConcatPaddedSequences(BoxLabels.unsqueeze(-1), BoxMask, labels.unsqueeze(-1), mask);
        var (emb, m) = ConcatPaddedSequences(BoxEmbeddings, BoxMask, boxes, mask);
        BoxLabels = lab.squeeze(-1).MoveToOuterDisposeScope();
        BoxEmbeddings = emb.MoveToOuterDisposeScope();
        BoxMask = m.MoveToOuterDisposeScope();
    }

    /// <summary>Appends points [n,B,2] with labels [n,B] (and optional mask [B,n]), keeping the sequence right-padded.</summary>
    public void AppendPoints(Tensor points, Tensor labels, Tensor? mask = null)
    {
        CheckSeq(points, 2, "points");
        if (points.shape[1] != BatchSize || !labels.shape.SequenceEqual(points.shape.Take(2)))
            throw new Sam3PromptException($"points [{string.Join(",", points.shape)}] / labels [{string.Join(",", labels.shape)}] do not fit batch size {BatchSize}");
        using var scope = NewDisposeScope();
        mask ??= torch.zeros(BatchSize, points.shape[0], dtype: ScalarType.Bool, device: points.device);
        var (lab, _) = ConcatPaddedSequences(PointLabels.unsqueeze(-1), PointMask, labels.unsqueeze(-1), mask);
        var (emb, m) = ConcatPaddedSequences(PointEmbeddings, PointMask, points, mask);
        PointLabels = lab.squeeze(-1).MoveToOuterDisposeScope();
        PointEmbeddings = emb.MoveToOuterDisposeScope();
        PointMask = m.MoveToOuterDisposeScope();
    }

    /// <summary>Disposes the six tensors, for an owner that detached them from their scope (a video session's visual prompts).</summary>
    public void DisposeTensors()
    {
        foreach (var t in new[] { BoxEmbeddings, BoxMask, BoxLabels, PointEmbeddings, PointMask, PointLabels }) t.Dispose();
    }

    /// <summary>Deep copy (new tensors, in the caller's dispose scope).</summary>
    public Prompt Clone() => new(BoxEmbeddings.clone(), BoxMask.clone(), BoxLabels.clone(),
                                 PointEmbeddings.clone(), PointMask.clone(), PointLabels.clone(), true);

    /// <summary>
    /// geometry_encoders.concat_padded_sequences: concatenates two right-padded seq-first sequences ([L1,B,C] with
    /// mask [B,L1], [L2,B,C] with mask [B,L2]) so that the valid elements of each batch entry are contiguous, then
    /// padding. Returns the sequence [L1+L2,B,C] (dtype of <paramref name="seq2"/>, as upstream), its mask and the
    /// positions [L2,B] where the elements of <paramref name="seq2"/> went.
    /// </summary>
    public static (Tensor seq, Tensor mask) ConcatPaddedSequences(Tensor seq1, Tensor mask1, Tensor seq2, Tensor mask2)
    {
        var (s, m, _) = ConcatPaddedSequencesWithIndex(seq1, mask1, seq2, mask2);
        return (s, m);
    }

    /// <inheritdoc cref="ConcatPaddedSequences"/>
    public static (Tensor seq, Tensor mask, Tensor index) ConcatPaddedSequencesWithIndex(Tensor seq1, Tensor mask1, Tensor seq2, Tensor mask2)
    {
        if (seq1.dim() != 3 || seq2.dim() != 3) throw new Sam3PromptException("concat_padded_sequences: sequences must be [L,B,C]");
        long l1 = seq1.shape[0], l2 = seq2.shape[0], bs = seq1.shape[1], c = seq1.shape[2];
        if (seq2.shape[1] != bs || mask1.shape[0] != bs || mask2.shape[0] != bs || seq2.shape[2] != c
            || mask1.shape[1] != l1 || mask2.shape[1] != l2)
            throw new Sam3PromptException($"concat_padded_sequences: shapes do not fit: [{string.Join(",", seq1.shape)}]/[{string.Join(",", mask1.shape)}] and [{string.Join(",", seq2.shape)}]/[{string.Join(",", mask2.shape)}]");
        using var scope = NewDisposeScope();
        if (!IsRightPadded(mask1) || !IsRightPadded(mask2))
            throw new Sam3PromptException("concat_padded_sequences: padding masks must be right-padded (valid entries first)");
        var len1 = mask1.logical_not().sum(-1);   // [B]
        var len2 = mask2.logical_not().sum(-1);
        var finalLen = len1 + len2;
        var device = seq2.device;
        var mask = torch.arange(l1 + l2, device: device).unsqueeze(0).repeat(bs, 1).ge(finalLen.unsqueeze(1));
        var outSeq = torch.zeros(new long[] { l1 + l2, bs, c }, dtype: seq2.dtype, device: device);
        // Empty parts are skipped unless autograd tracks them: upstream always assigns/scatters, which in training gives the
        // projections of an empty prompt part an (all-zero) gradient.
        if (l1 > 0 || seq1.requires_grad) outSeq[TensorIndex.Slice(null, l1)] = seq1.to(seq2.dtype);
        var index = torch.arange(l2, device: device).unsqueeze(1).repeat(1, bs) + len1.unsqueeze(0);   // [L2,B]
        if (l2 > 0 || seq2.requires_grad) outSeq = outSeq.scatter(0, index.unsqueeze(-1).expand(-1, -1, c), seq2);
        return (outSeq.MoveToOuterDisposeScope(), mask.MoveToOuterDisposeScope(), index.MoveToOuterDisposeScope());
    }

    /// <summary>geometry_encoders.is_right_padded: True when every row of the mask [B,L] is False… then True….</summary>
    public static bool IsRightPadded(Tensor mask)
    {
        using var scope = NewDisposeScope();
        if (mask.numel() == 0) return true;
        var m = mask.to(ScalarType.Int64);
        return m.eq(m.sort(-1).Values).all().item<bool>();
    }
}
