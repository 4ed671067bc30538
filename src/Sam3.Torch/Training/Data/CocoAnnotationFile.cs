using System.Text.Json;
using Sam3.Torch.Processing;

namespace Sam3.Torch.Training.Data;

/// <summary>A category of a COCO file; its name is the text query.</summary>
internal sealed record CocoCategory(long Id, string Name);

/// <summary>An image entry of a COCO file; <see cref="Path"/> is the resolved file path.</summary>
internal sealed record CocoImageEntry(long Id, string FileName, string Path, int Width, int Height);

/// <summary>
/// One annotation of a COCO file, validated. <see cref="Bbox"/> is [x, y, w, h] in pixels (from the file, or derived
/// from the mask for a mask-only annotation); <see cref="Segmentation"/> is the mask as RLE (polygons rasterised and
/// merged, uncompressed RLE compressed) or null for a box-only annotation.
/// </summary>
internal sealed record CocoAnnotationEntry(long Id, long ImageId, long CategoryId, double[] Bbox, bool IsCrowd,
    CocoRle? Segmentation, double? Area, bool BboxFromMask);

/// <summary>Options of <see cref="CocoAnnotationFile.Load"/>.</summary>
internal sealed record CocoReadOptions
{
    /// <summary>A box may stick out of its image by this many pixels (Roboflow exports round outwards); it is then clamped as upstream does. Further out is an error.</summary>
    public double BoxTolerancePixels { get; init; } = 1.0;
    /// <summary>Check at load time that every image file exists.</summary>
    public bool CheckImageFiles { get; init; } = true;
    public static CocoReadOptions Default { get; } = new();
}

/// <summary>
/// A parsed and validated COCO annotation file (<c>images</c>, <c>annotations</c>, <c>categories</c>), read the way
/// upstream's <c>load_coco_and_group_by_image</c> + <c>ann_to_rle</c> read it: images sorted by id, annotations grouped
/// by image in file order, categories by id. Every problem raises <see cref="Sam3DatasetException"/> naming the file
/// and the annotation. Beyond upstream: a missing <c>iscrowd</c> means 0, and an annotation without a box but with a
/// segmentation gets the mask's bounding box (pycocotools <c>toBbox</c>).
/// </summary>
internal sealed class CocoAnnotationFile
{
    public required string JsonPath { get; init; }
    public required string ImageFolder { get; init; }
    /// <summary>Images sorted by id.</summary>
    public required IReadOnlyList<CocoImageEntry> Images { get; init; }
    /// <summary>Categories sorted by id.</summary>
    public required IReadOnlyList<CocoCategory> Categories { get; init; }
    /// <summary>Annotations of each image id, in file order.</summary>
    public required IReadOnlyDictionary<long, IReadOnlyList<CocoAnnotationEntry>> AnnotationsByImage { get; init; }

    public IReadOnlyList<CocoAnnotationEntry> AnnotationsOf(long imageId) =>
        AnnotationsByImage.TryGetValue(imageId, out var list) ? list : [];

    public string CategoryName(long id) => Categories.First(c => c.Id == id).Name;

    /// <summary>Reads <paramref name="jsonPath"/>; image file names are relative to <paramref name="imageFolder"/>.</summary>
    public static CocoAnnotationFile Load(string jsonPath, string imageFolder, CocoReadOptions? options = null)
    {
        options ??= CocoReadOptions.Default;
        string file = jsonPath;
        if (!File.Exists(jsonPath)) throw new Sam3DatasetException(file, "annotation file not found");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(jsonPath)); }
        catch (JsonException e) { throw new Sam3DatasetException(file, $"not valid JSON: {e.Message}", inner: e); }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new Sam3DatasetException(file, "the top level must be a JSON object");

            // categories
            var cats = new Dictionary<long, CocoCategory>();
            foreach (var c in RequireArray(root, "categories", file))
            {
                long id = RequireLong(c, "id", file, "a category");
                string name = c.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String ? n.GetString()! : throw new Sam3DatasetException(file, $"category {id} has no 'name' string");
                if (!cats.TryAdd(id, new CocoCategory(id, name))) throw new Sam3DatasetException(file, $"category id {id} appears twice");
            }

            // images
            var images = new Dictionary<long, CocoImageEntry>();
            foreach (var im in RequireArray(root, "images", file))
            {
                long id = RequireLong(im, "id", file, "an image");
                string fileName = im.TryGetProperty("file_name", out var fn) && fn.ValueKind == JsonValueKind.String ? fn.GetString()! : throw new Sam3DatasetException(file, $"image {id} has no 'file_name'");
                long w = RequireLong(im, "width", file, $"image {id}"), h = RequireLong(im, "height", file, $"image {id}");
                if (w <= 0 || h <= 0 || w > int.MaxValue || h > int.MaxValue) throw new Sam3DatasetException(file, $"image {id} ({fileName}) has size {w}x{h}");
                string path = Path.Combine(imageFolder, fileName);
                if (options.CheckImageFiles && !File.Exists(path)) throw new Sam3DatasetException(file, $"image {id}: file not found: {path}");
                if (!images.TryAdd(id, new CocoImageEntry(id, fileName, path, (int)w, (int)h))) throw new Sam3DatasetException(file, $"image id {id} appears twice");
            }

            // annotations
            var byImage = new Dictionary<long, List<CocoAnnotationEntry>>();
            if (root.TryGetProperty("annotations", out var anns))
            {
                if (anns.ValueKind != JsonValueKind.Array) throw new Sam3DatasetException(file, "'annotations' must be an array");
                int index = 0;
                foreach (var a in anns.EnumerateArray())
                {
                    var entry = ReadAnnotation(a, index++, images, cats, file, options);
                    if (!byImage.TryGetValue(entry.ImageId, out var list)) byImage[entry.ImageId] = list = [];
                    list.Add(entry);
                }
            }

            return new CocoAnnotationFile
            {
                JsonPath = jsonPath,
                ImageFolder = imageFolder,
                Images = images.Values.OrderBy(i => i.Id).ToList(),
                Categories = cats.Values.OrderBy(c => c.Id).ToList(),
                AnnotationsByImage = byImage.ToDictionary(kv => kv.Key, kv => (IReadOnlyList<CocoAnnotationEntry>)kv.Value),
            };
        }
    }

    private static CocoAnnotationEntry ReadAnnotation(JsonElement a, int index, Dictionary<long, CocoImageEntry> images,
        Dictionary<long, CocoCategory> cats, string file, CocoReadOptions options)
    {
        if (a.ValueKind != JsonValueKind.Object) throw new Sam3DatasetException(file, $"annotation #{index} is not an object");
        long id = RequireLong(a, "id", file, $"annotation #{index}");
        long imageId = RequireLong(a, "image_id", file, $"annotation {id}");
        long catId = RequireLong(a, "category_id", file, $"annotation {id}");
        if (!images.TryGetValue(imageId, out var img)) throw new Sam3DatasetException(file, $"unknown image_id {imageId}", id);
        if (!cats.ContainsKey(catId)) throw new Sam3DatasetException(file, $"unknown category_id {catId}", id);
        bool crowd = false;
        if (a.TryGetProperty("iscrowd", out var ic))
        {
            if (ic.ValueKind == JsonValueKind.Number) crowd = ic.GetDouble() != 0;
            else if (ic.ValueKind is JsonValueKind.True or JsonValueKind.False) crowd = ic.GetBoolean();
            else if (ic.ValueKind != JsonValueKind.Null) throw new Sam3DatasetException(file, "'iscrowd' must be 0 or 1", id);
        }
        double? area = a.TryGetProperty("area", out var ar) && ar.ValueKind == JsonValueKind.Number ? ar.GetDouble() : null;

        CocoRle? seg = null;
        if (a.TryGetProperty("segmentation", out var s)) seg = ReadSegmentation(s, img, file, id);

        double[]? bbox = null;
        if (a.TryGetProperty("bbox", out var b) && b.ValueKind != JsonValueKind.Null && !(b.ValueKind == JsonValueKind.Array && b.GetArrayLength() == 0))
        {
            if (b.ValueKind != JsonValueKind.Array || b.GetArrayLength() != 4 || b.EnumerateArray().Any(v => v.ValueKind != JsonValueKind.Number))
                throw new Sam3DatasetException(file, $"'bbox' must be [x, y, w, h] numbers, got {b.GetRawText()}", id);
            bbox = b.EnumerateArray().Select(v => v.GetDouble()).ToArray();
            if (bbox.Any(v => !double.IsFinite(v))) throw new Sam3DatasetException(file, $"'bbox' has a non-finite value: {b.GetRawText()}", id);
            if (bbox[2] < 0 || bbox[3] < 0) throw new Sam3DatasetException(file, $"'bbox' has a negative size: {b.GetRawText()}", id);
            double tol = options.BoxTolerancePixels;
            if (bbox[0] < -tol || bbox[1] < -tol || bbox[0] + bbox[2] > img.Width + tol || bbox[1] + bbox[3] > img.Height + tol)
                throw new Sam3DatasetException(file, $"'bbox' {b.GetRawText()} lies outside image {imageId} ({img.Width}x{img.Height})", id);
        }
        bool fromMask = false;
        if (bbox == null)
        {
            if (seg == null) throw new Sam3DatasetException(file, "has neither a 'bbox' nor a 'segmentation'", id);
            bbox = seg.ToBbox();
            fromMask = true;
        }
        return new CocoAnnotationEntry(id, imageId, catId, bbox, crowd, seg, area, fromMask);
    }

    /// <summary>Polygons (merged), compressed RLE or uncompressed RLE → compressed RLE of the image's size (upstream <c>ann_to_rle</c>).</summary>
    private static CocoRle? ReadSegmentation(JsonElement s, CocoImageEntry img, string file, long id)
    {
        int h = img.Height, w = img.Width;
        switch (s.ValueKind)
        {
            case JsonValueKind.Null:
                return null;
            case JsonValueKind.Array:
            {
                if (s.GetArrayLength() == 0) return null;
                var polys = new List<double[]>();
                foreach (var p in s.EnumerateArray())
                {
                    if (p.ValueKind != JsonValueKind.Array || p.EnumerateArray().Any(v => v.ValueKind != JsonValueKind.Number))
                        throw new Sam3DatasetException(file, "'segmentation' must be a list of polygons [x0, y0, x1, y1, ...] or an RLE object", id);
                    var xy = p.EnumerateArray().Select(v => v.GetDouble()).ToArray();
                    if (xy.Any(v => !double.IsFinite(v))) throw new Sam3DatasetException(file, "a polygon has a non-finite coordinate", id);
                    polys.Add(xy);
                }
                // pycocotools frPyObjects: a list whose first entry has 4 numbers is read as boxes [x, y, w, h], more than 4 as polygons.
                bool boxes = polys[0].Length == 4;
                var rles = new List<CocoRle>();
                foreach (var xy in polys)
                {
                    if (boxes)
                    {
                        if (xy.Length != 4) throw new Sam3DatasetException(file, $"'segmentation' mixes 4-number boxes and polygons ({xy.Length} numbers)", id);
                        rles.Add(CocoPolygon.FromBox(xy[0], xy[1], xy[2], xy[3], h, w));
                    }
                    else
                    {
                        if (xy.Length < 6 || xy.Length % 2 != 0)
                            throw new Sam3DatasetException(file, $"a polygon needs an even number (at least 6) of coordinates, got {xy.Length}", id);
                        rles.Add(CocoPolygon.FromPolygon(xy, h, w));
                    }
                }
                return CocoPolygon.Union(rles);
            }
            case JsonValueKind.Object:
            {
                if (!s.TryGetProperty("counts", out var counts)) throw new Sam3DatasetException(file, "RLE 'segmentation' has no 'counts'", id);
                int[] size;
                if (s.TryGetProperty("size", out var sz) && sz.ValueKind == JsonValueKind.Array && sz.GetArrayLength() == 2 && sz.EnumerateArray().All(v => v.ValueKind == JsonValueKind.Number))
                    size = sz.EnumerateArray().Select(v => v.GetInt32()).ToArray();
                else throw new Sam3DatasetException(file, "RLE 'segmentation' needs 'size': [height, width]", id);
                if (size[0] != h || size[1] != w)
                    throw new Sam3DatasetException(file, $"RLE size [{size[0]}, {size[1]}] differs from image {img.Id}'s size [{h}, {w}]", id);
                try
                {
                    if (counts.ValueKind == JsonValueKind.String) return new CocoRle(size, counts.GetString()!);
                    if (counts.ValueKind == JsonValueKind.Array)
                    {
                        var runs = counts.EnumerateArray().Select(v => v.ValueKind == JsonValueKind.Number ? v.GetInt32() : throw new Sam3DatasetException(file, "uncompressed RLE 'counts' must hold integers", id)).ToArray();
                        return CocoRle.FromCounts(runs, size[0], size[1]);
                    }
                }
                catch (Sam3DatasetException) { throw; }
                catch (Exception e) when (e is Sam3Exception or FormatException or InvalidOperationException or ArgumentException)
                {
                    throw new Sam3DatasetException(file, $"bad RLE 'segmentation': {e.Message}", id, e);
                }
                throw new Sam3DatasetException(file, "RLE 'counts' must be a string or a list of integers", id);
            }
            default:
                throw new Sam3DatasetException(file, $"'segmentation' must be polygons or RLE, got {s.ValueKind}", id);
        }
    }

    private static JsonElement.ArrayEnumerator RequireArray(JsonElement root, string name, string file)
    {
        if (!root.TryGetProperty(name, out var a) || a.ValueKind != JsonValueKind.Array) throw new Sam3DatasetException(file, $"'{name}' array is missing");
        return a.EnumerateArray();
    }

    private static long RequireLong(JsonElement e, string name, string file, string what)
    {
        if (e.ValueKind != JsonValueKind.Object) throw new Sam3DatasetException(file, $"{what} is not an object");
        if (!e.TryGetProperty(name, out var v) || v.ValueKind != JsonValueKind.Number) throw new Sam3DatasetException(file, $"{what} has no numeric '{name}'");
        if (v.TryGetInt64(out long l)) return l;
        double d = v.GetDouble();
        if (d == Math.Floor(d) && Math.Abs(d) < 9e15) return (long)d;
        throw new Sam3DatasetException(file, $"{what}: '{name}' must be an integer, got {v.GetRawText()}");
    }
}
