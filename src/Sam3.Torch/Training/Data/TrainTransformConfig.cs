namespace Sam3.Torch.Training.Data;

/// <summary>
/// Hyperparameters of the data pipelines, defaults from upstream's fine-tuning config
/// (<c>roboflow_v100_full_ft_100_images.yaml</c>: <c>scratch.resolution</c> 1008, random resize from 480 in steps of 32,
/// square, no consistent transform, box noise 0.1 / 20 px, at most 200 targets per query, normalisation 0.5 / 0.5).
/// </summary>
internal sealed record TrainTransformConfig
{
    /// <summary>Model input side; the pad size (upstream <c>scratch.resolution</c>).</summary>
    public int Resolution { get; init; } = 1008;
    /// <summary>Smallest random resize side (upstream <c>get_random_resize_scales(min_size=480)</c>).</summary>
    public int MinResizeSize { get; init; } = 480;
    /// <summary>Steps of 128 instead of 32 (upstream <c>rounded</c>).</summary>
    public bool RoundedScales { get; init; }
    /// <summary>Explicit resize sizes, overriding <see cref="MinResizeSize"/> / <see cref="RoundedScales"/> (e.g. one size).</summary>
    public IReadOnlyList<int>? ResizeSizes { get; init; }
    /// <summary>Resize to S × S (upstream <c>square: true</c>).</summary>
    public bool Square { get; init; } = true;
    /// <summary>One random draw for all images of a datapoint (upstream <c>scratch.consistent_transform</c>).</summary>
    public bool ConsistentTransform { get; init; }
    public double BoxNoiseStd { get; init; } = 0.1;
    public double? BoxNoiseMax { get; init; } = 20;
    /// <summary>Queries with more targets are dropped (upstream <c>scratch.max_ann_per_img</c>).</summary>
    public int MaxTargetsPerQuery { get; init; } = 200;
    public float[] NormMean { get; init; } = [0.5f, 0.5f, 0.5f];
    public float[] NormStd { get; init; } = [0.5f, 0.5f, 0.5f];

    /// <summary>upstream <c>get_random_resize_max_size(size, 5/3)</c> (only used when not square).</summary>
    public int MaxSize => (int)Math.Round(5.0 / 3.0 * Resolution, MidpointRounding.ToEven);

    /// <summary>The sizes the random resize draws from.</summary>
    public IReadOnlyList<int> Sizes => ResizeSizes ?? RandomResizeScales(Resolution, MinResizeSize, RoundedScales);

    /// <summary>upstream <c>get_random_resize_scales</c>: multiples of 32 (128 when rounded) from ⌈min⌉ to size.</summary>
    public static IReadOnlyList<int> RandomResizeScales(int size, int minSize, bool rounded)
    {
        int stride = rounded ? 128 : 32;
        int min = stride * (int)Math.Ceiling(minSize / (double)stride);
        var scales = new List<int>();
        for (int s = min; s <= size; s += stride) scales.Add(s);
        return scales;
    }
}

/// <summary>The train and eval pipelines of upstream's fine-tuning config, built from a <see cref="TrainTransformConfig"/>.</summary>
internal static class TransformPipelines
{
    /// <summary>
    /// upstream <c>train_transforms</c>: ComposeAPI[FilterCrowds, RandomizeInputBbox, DecodeRle, RandomResizeAPI(square),
    /// PadToSizeAPI, ToTensorAPI, FilterEmptyTargets, NormalizeAPI, FilterEmptyTargets], then
    /// FilterFindQueriesWithTooManyOut.
    /// </summary>
    public static ComposeTransforms Train(TrainTransformConfig c) => new(
    [
        new FlexibleFilterFindGetQueries(new FilterCrowds()),
        new RandomizeInputBbox(c.BoxNoiseStd, c.BoxNoiseMax),
        new DecodeRle(),
        new RandomResize(c.Sizes, c.MaxSize, c.Square, c.ConsistentTransform),
        new PadToSize(c.Resolution, c.ConsistentTransform),
        new ToTensorTransform(),
        new FlexibleFilterFindGetQueries(new FilterEmptyTargets()),
        new NormalizeTransform(c.NormMean, c.NormStd),
        new FlexibleFilterFindGetQueries(new FilterEmptyTargets()),
        new FlexibleFilterFindGetQueries(new FilterFindQueriesWithTooManyOut(c.MaxTargetsPerQuery)),
    ]);

    /// <summary>
    /// upstream <c>val_transforms</c>: RandomResizeAPI(sizes = resolution, square), ToTensorAPI, NormalizeAPI. Masks
    /// stay encoded at the original resolution (COCO evaluation compares there).
    /// </summary>
    public static ComposeTransforms Eval(TrainTransformConfig c) => new(
    [
        new RandomResize([c.Resolution], c.MaxSize, c.Square, consistentTransform: false),
        new ToTensorTransform(),
        new NormalizeTransform(c.NormMean, c.NormStd),
    ]);
}
