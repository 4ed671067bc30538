using System.Text.Json.Nodes;
using Sam3.Torch.IO;
using Sam3.Torch.Processing;
using Sam3.Torch.Training.Data;
using Sam3.Torch.Visualization;

namespace Sam3.Torch.Tests.Training;

/// <summary>
/// A Roboflow-layout COCO folder (<c>DIR/train/_annotations.coco.json</c> + PNGs) of plain-background images with one filled
/// circle or square each; categories "circle" (1) and "square" (2), so every image has one positive and one negative text
/// query. Masks are the drawn pixels exactly (pixel centre inside the shape), stored as RLE; boxes are the masks' extents.
/// </summary>
internal static class SyntheticShapes
{
    public sealed record Shape(int Width, int Height, bool Circle, double Cx, double Cy, double Radius, byte[] Background, byte[] Fill);

    /// <summary>Four images of 96–336 px: two circles, two squares, different colours and positions.</summary>
    public static IReadOnlyList<Shape> Default { get; } =
    [
        new(96, 128, Circle: true, 48, 60, 30, [240, 240, 240], [200, 30, 30]),
        new(160, 160, Circle: false, 70, 90, 40, [20, 40, 120], [250, 220, 40]),
        new(224, 192, Circle: false, 120, 100, 55, [230, 230, 200], [30, 140, 60]),
        new(336, 336, Circle: true, 150, 190, 90, [60, 60, 60], [240, 240, 250]),
    ];

    public static string Write(string root, IReadOnlyList<Shape>? shapes = null)
    {
        shapes ??= Default;
        string train = Path.Combine(root, "train");
        Directory.CreateDirectory(train);
        var images = new JsonArray();
        var annotations = new JsonArray();
        for (int i = 0; i < shapes.Count; i++)
        {
            var s = shapes[i];
            var rgb = new byte[s.Width * s.Height * 3];
            var mask = new byte[s.Width * s.Height];
            int x0 = int.MaxValue, y0 = int.MaxValue, x1 = -1, y1 = -1;
            for (int r = 0; r < s.Height; r++)
                for (int c = 0; c < s.Width; c++)
                {
                    double u = c + 0.5 - s.Cx, v = r + 0.5 - s.Cy;
                    bool inside = s.Circle ? u * u + v * v <= s.Radius * s.Radius : Math.Abs(u) <= s.Radius && Math.Abs(v) <= s.Radius;
                    var colour = inside ? s.Fill : s.Background;
                    Array.Copy(colour, 0, rgb, (r * s.Width + c) * 3, 3);
                    if (!inside) continue;
                    mask[r * s.Width + c] = 1;
                    x0 = Math.Min(x0, c); y0 = Math.Min(y0, r); x1 = Math.Max(x1, c); y1 = Math.Max(y1, r);
                }
            string file = $"shape{i}.png";
            ImageWriter.Save(new RgbImage(s.Width, s.Height, rgb), Path.Combine(train, file));
            images.Add(new JsonObject { ["id"] = i + 1, ["file_name"] = file, ["width"] = s.Width, ["height"] = s.Height });
            double bw = x1 - x0 + 1, bh = y1 - y0 + 1;
            annotations.Add(new JsonObject
            {
                ["id"] = i + 1, ["image_id"] = i + 1, ["category_id"] = s.Circle ? 1 : 2,
                ["bbox"] = new JsonArray(x0, y0, bw, bh), ["area"] = mask.Sum(b => (int)b), ["iscrowd"] = 0,
                ["segmentation"] = new JsonObject
                {
                    ["size"] = new JsonArray(s.Height, s.Width), ["counts"] = CocoRle.Encode(mask, s.Height, s.Width).Counts,
                },
            });
        }
        var coco = new JsonObject
        {
            ["images"] = images,
            ["annotations"] = annotations,
            ["categories"] = new JsonArray(new JsonObject { ["id"] = 1, ["name"] = "circle" }, new JsonObject { ["id"] = 2, ["name"] = "square" }),
        };
        File.WriteAllText(Path.Combine(train, CocoDataset.RoboflowAnnotationFile), coco.ToJsonString());
        return root;
    }
}
