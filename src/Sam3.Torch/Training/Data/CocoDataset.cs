using Sam3.Torch.IO;

namespace Sam3.Torch.Training.Data;

/// <summary>Options of <see cref="CocoDataset"/> (upstream <c>COCO_FROM_JSON</c> + <c>Sam3ImageDataset</c> arguments).</summary>
internal sealed record CocoDatasetOptions
{
    /// <summary>A query for every category, also those absent from the image (negatives); upstream <c>include_negatives</c>.</summary>
    public bool IncludeNegatives { get; init; } = true;
    /// <summary>Categories per datapoint (upstream <c>category_chunk_size</c>); null = all categories in one datapoint.</summary>
    public int? CategoryChunkSize { get; init; }
    /// <summary>Keep the masks (upstream <c>load_segmentation</c>).</summary>
    public bool LoadSegmentation { get; init; } = true;
    /// <summary>Training mode (upstream <c>training</c>): metadata image ids are -1.</summary>
    public bool Training { get; init; } = true;
    /// <summary>Optional text per category id replacing the category names (upstream <c>prompts</c>).</summary>
    public IReadOnlyDictionary<long, string>? Prompts { get; init; }
    public CocoReadOptions Read { get; init; } = CocoReadOptions.Default;
}

/// <summary>
/// A COCO-format detection / segmentation data set as upstream trains on it (<c>COCO_FROM_JSON</c> read by
/// <c>Sam3ImageDataset</c>): one datapoint per image (per category chunk), holding one find query per category whose
/// text is the category name and whose targets are that category's annotations in the image; a category without
/// annotations there is a negative query (when <see cref="CocoDatasetOptions.IncludeNegatives"/>).
/// <para>Layouts: a Roboflow export <c>DIR/{train,valid,test}/_annotations.coco.json</c> with the images beside each
/// file (<see cref="Open"/>), or any COCO json with an image folder (<see cref="FromFile"/>).</para>
/// <para>Images are decoded on <see cref="Load"/> (like PIL's <c>Image.open(..).convert("RGB")</c>); all annotations
/// are validated when the set is opened.</para>
/// </summary>
internal sealed class CocoDataset
{
    public const string RoboflowAnnotationFile = "_annotations.coco.json";
    public static IReadOnlyList<string> RoboflowSplits { get; } = ["train", "valid", "test"];

    public CocoAnnotationFile Annotations { get; }
    public CocoDatasetOptions Options { get; }
    private readonly List<long[]> _categoryChunks;
    private readonly List<int> _ids;

    private CocoDataset(CocoAnnotationFile annotations, CocoDatasetOptions options)
    {
        Annotations = annotations;
        Options = options;
        var catIds = annotations.Categories.Select(c => c.Id).ToArray();
        int chunk = options.CategoryChunkSize ?? Math.Max(1, catIds.Length);
        if (chunk <= 0)
            throw new ArgumentOutOfRangeException($"{nameof(options)}.{nameof(CocoDatasetOptions.CategoryChunkSize)}", chunk, $"CategoryChunkSize must be positive, got {chunk}");
        _categoryChunks = [];
        for (int i = 0; i < catIds.Length; i += chunk) _categoryChunks.Add(catIds[i..Math.Min(catIds.Length, i + chunk)]);
        if (options.Prompts != null)
            foreach (var c in catIds)
                if (!options.Prompts.ContainsKey(c)) throw new Sam3DatasetException(annotations.JsonPath, $"no prompt given for category {c}");
        // Datapoints without any query (only possible without negatives) are left out here; upstream's loader would
        // raise on them and retry with the next index.
        _ids = [];
        int total = annotations.Images.Count * _categoryChunks.Count;
        for (int i = 0; i < total; i++)
            if (options.IncludeNegatives || QueryCategories(i).Any(c => c.Annotations.Count > 0)) _ids.Add(i);
    }

    /// <summary>Opens split <paramref name="split"/> of a Roboflow export at <paramref name="root"/>
    /// (<c>root/split/_annotations.coco.json</c>); <paramref name="root"/> may also be the split folder itself or a COCO json file.</summary>
    public static CocoDataset Open(string root, string split = "train", CocoDatasetOptions? options = null)
    {
        options ??= new CocoDatasetOptions();
        if (File.Exists(root)) return FromFile(root, null, options);
        if (!Directory.Exists(root)) throw new Sam3DatasetException(root, "data folder not found");
        string splitJson = Path.Combine(root, split, RoboflowAnnotationFile);
        if (File.Exists(splitJson)) return FromFile(splitJson, null, options);
        string here = Path.Combine(root, RoboflowAnnotationFile);
        if (File.Exists(here)) return FromFile(here, null, options);
        throw new Sam3DatasetException(root, $"no COCO annotations: looked for {splitJson} and {here}");
    }

    /// <summary>True when <paramref name="root"/> holds split <paramref name="split"/> in the Roboflow layout.</summary>
    public static bool HasSplit(string root, string split) => File.Exists(Path.Combine(root, split, RoboflowAnnotationFile));

    /// <summary>A COCO json whose image file names are relative to <paramref name="imageFolder"/> (default: the json's folder).</summary>
    public static CocoDataset FromFile(string jsonPath, string? imageFolder = null, CocoDatasetOptions? options = null)
    {
        options ??= new CocoDatasetOptions();
        imageFolder ??= Path.GetDirectoryName(Path.GetFullPath(jsonPath))!;
        return new CocoDataset(CocoAnnotationFile.Load(jsonPath, imageFolder, options.Read), options);
    }

    /// <summary>Number of datapoints (images × category chunks).</summary>
    public int Count => _ids.Count;

    public IReadOnlyList<CocoCategory> Categories => Annotations.Categories;

    /// <summary>The image entry behind datapoint <paramref name="index"/>.</summary>
    public CocoImageEntry ImageOf(int index) => Annotations.Images[_ids[CheckIndex(index)] / _categoryChunks.Count];

    private int CheckIndex(int index) =>
        (uint)index < (uint)_ids.Count ? index : throw new ArgumentOutOfRangeException(nameof(index), $"datapoint {index} of {_ids.Count}");

    private IEnumerable<(long CategoryId, IReadOnlyList<CocoAnnotationEntry> Annotations)> QueryCategories(int rawId)
    {
        var image = Annotations.Images[rawId / _categoryChunks.Count];
        var chunk = _categoryChunks[rawId % _categoryChunks.Count];
        var anns = Annotations.AnnotationsOf(image.Id);
        foreach (var cat in chunk)
        {
            var mine = anns.Where(a => a.CategoryId == cat).ToList();
            if (mine.Count == 0 && !Options.IncludeNegatives) continue;
            yield return (cat, mine);
        }
    }

    /// <summary>
    /// Datapoint <paramref name="index"/>, untransformed: the decoded image, its objects (boxes xyxy in pixels, masks
    /// still RLE) and one query per category of the chunk (upstream <c>loadQueriesAndAnnotationsFromDatapoint</c> then
    /// <c>load_queries</c>).
    /// </summary>
    public Datapoint Load(int index)
    {
        int rawId = _ids[CheckIndex(index)];
        var entry = Annotations.Images[rawId / _categoryChunks.Count];
        RgbImage rgb;
        try { rgb = ImageLoader.Load(entry.Path); }
        catch (Sam3ImageException e) { throw new Sam3DatasetException(entry.Path, $"image {entry.Id} cannot be read: {e.Message}", inner: e); }
        if (rgb.Width != entry.Width || rgb.Height != entry.Height)
            throw new Sam3DatasetException(Annotations.JsonPath, $"image {entry.Id} ({entry.FileName}) is {rgb.Width}x{rgb.Height} but the annotation file says {entry.Width}x{entry.Height}");
        int w = rgb.Width, h = rgb.Height;

        var image = new DatapointImage { Rgb = rgb, Size = (h, w) };
        var dp = new Datapoint { Images = [image] };
        foreach (var (catId, anns) in QueryCategories(rawId))
        {
            var objectIds = new List<int>();
            foreach (var ann in anns)
            {
                // loader: bbox [x, y, w, h] → float32, / (W, H), clamp [0, 1]; area = normalised w·h
                var nb = new float[4];
                for (int k = 0; k < 4; k++)
                {
                    float v = (float)ann.Bbox[k] / (k % 2 == 0 ? (float)entry.Width : (float)entry.Height);
                    nb[k] = Math.Clamp(v, 0f, 1f);
                }
                double area = nb[2] * nb[3];
                // load_queries: xywh → xyxy, × (w, h) of the decoded image, clamp to the image
                float[] xyxy = [nb[0], nb[1], nb[0] + nb[2], nb[1] + nb[3]];
                for (int k = 0; k < 4; k++)
                {
                    float scale = k % 2 == 0 ? w : h;
                    xyxy[k] = Math.Clamp(xyxy[k] * scale, 0f, scale);
                }
                int objectIndex = image.Objects.Count;
                image.Objects.Add(new DatapointObject
                {
                    Bbox = xyxy,
                    Area = area,
                    ObjectId = objectIndex,
                    IsCrowd = ann.IsCrowd,
                    SegmentRle = Options.LoadSegmentation ? ann.Segmentation : null,
                });
                objectIds.Add(objectIndex);
            }
            dp.FindQueries.Add(new DatapointQuery
            {
                QueryText = Options.Prompts?[catId] ?? Annotations.CategoryName(catId),
                ImageId = 0,
                ObjectIdsOutput = objectIds,
                IsExhaustive = true,
                QueryProcessingOrder = 0,
                OriginalCategoryId = catId,
                CocoImageId = Options.Training ? -1 : entry.Id,
                OriginalSize = (h, w),
            });
        }
        return dp;
    }
}
