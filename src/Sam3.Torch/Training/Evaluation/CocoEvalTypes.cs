using Sam3.Torch.Processing;

namespace Sam3.Torch.Training.Evaluation;

/// <summary>What the IoU of a detection and a ground truth is computed on (pycocotools <c>iouType</c>).</summary>
internal enum CocoIouType { Bbox, Segm }

/// <summary>
/// A ground-truth annotation as COCOeval sees it: box [x, y, w, h] in pixels, mask (needed for <see cref="CocoIouType.Segm"/>),
/// the annotation's <c>area</c> (what the area ranges test), crowd flag (crowds are ignored regions).
/// </summary>
internal sealed record CocoGroundTruth(long Id, long ImageId, long CategoryId, double[] Bbox, CocoRle? Mask, double Area, bool IsCrowd);

/// <summary>A detection (a result entry): box [x, y, w, h] in pixels and/or mask, and its score.</summary>
internal sealed record CocoDetection(long ImageId, long CategoryId, double[]? Bbox, CocoRle? Mask, double Score);

/// <summary>COCOeval's parameters (<c>Params.setDetParams</c>); defaults are pycocotools'.</summary>
internal sealed record CocoEvalParams
{
    /// <summary>np.linspace(.5, .95, 10): 0.5 + i·((0.95 − 0.5)/9), last exactly 0.95.</summary>
    public double[] IouThresholds { get; init; } = Linspace(0.5, 0.95, 10);
    /// <summary>np.linspace(0, 1, 101): the 101 recall points.</summary>
    public double[] RecallThresholds { get; init; } = Linspace(0.0, 1.0, 101);
    public int[] MaxDets { get; init; } = [1, 10, 100];
    public (double Min, double Max)[] AreaRanges { get; init; } = [(0, 1e5 * 1e5), (0, 32 * 32), (32 * 32, 96 * 96), (96 * 96, 1e5 * 1e5)];
    public string[] AreaLabels { get; init; } = ["all", "small", "medium", "large"];
    public bool UseCategories { get; init; } = true;

    /// <summary>
    /// pycocotools records a match as the ground truth's id and treats 0 as "unmatched", so a detection matched to a
    /// ground truth whose id is 0 (Roboflow exports start at 0) counts as a false positive while the ground truth
    /// counts as found. True (default) reproduces that; false records matches by position.
    /// </summary>
    public bool ZeroIdMatchQuirk { get; init; } = true;

    /// <summary>numpy's <c>linspace(start, stop, num, endpoint=True)</c>: start + i·step, the last value set to stop.</summary>
    public static double[] Linspace(double start, double stop, int num)
    {
        var y = new double[num];
        double step = (stop - start) / (num - 1);
        for (int i = 0; i < num; i++) y[i] = i * step + start;
        y[num - 1] = stop;
        return y;
    }
}
