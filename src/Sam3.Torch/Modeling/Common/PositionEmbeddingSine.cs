using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Common;

/// <summary>
/// Sine position encoding of DETR, generalised to images (sam3.model.position_encoding.PositionEmbeddingSine).
/// Channels are <c>[y (C/2), x (C/2)]</c>; within each half sin and cos interleave (even = sin, odd = cos).
/// Positions are 1..H divided by (H + 1e-6), times 2π. Always computed in float32. Has no weights.
/// </summary>
internal sealed class PositionEmbeddingSine : nn.Module<Tensor, Tensor>
{
    /// <summary>Half the channel count (the Python attribute holds num_pos_feats // 2).</summary>
    public int num_pos_feats { get; }
    public double temperature { get; }
    public bool normalize { get; }
    public double scale { get; }
    /// <summary>Normalisation eps of the image encoding (upstream constant).</summary>
    public const double NormalizeEps = 1e-6;

    private readonly Dictionary<(long, long, DeviceType), Tensor> _cache = new();

    public PositionEmbeddingSine(int numPosFeats, double temperature = 10000, bool normalize = true, double? scale = null)
        : base(nameof(PositionEmbeddingSine))
    {
        if (numPosFeats % 2 != 0) throw new ArgumentException("Expecting even model width", nameof(numPosFeats));
        if (scale is not null && !normalize) throw new ArgumentException("normalize should be True if scale is passed");
        num_pos_feats = numPosFeats / 2;
        this.temperature = temperature;
        this.normalize = normalize;
        this.scale = scale ?? 2 * Math.PI;
    }

    public PositionEmbeddingSine(Config.PositionEncodingConfig c) : this(c.NumPosFeats, c.Temperature, c.Normalize, c.Scale) { }

    private Tensor DimT(Device device)
    {
        var dimT = torch.arange(num_pos_feats, dtype: ScalarType.Float32, device: device);
        return torch.pow(temperature, 2 * torch.floor_divide(dimT, 2) / num_pos_feats);
    }

    private static Tensor Interleave(Tensor pos)
    {
        // stack(sin(even), cos(odd)) along a new last dim, then flatten the last two dims
        var even = pos[TensorIndex.Ellipsis, TensorIndex.Slice(0, null, 2)].sin();
        var odd = pos[TensorIndex.Ellipsis, TensorIndex.Slice(1, null, 2)].cos();
        return torch.stack([even, odd], dim: -1).flatten(-2);
    }

    /// <summary>Encodes normalised coordinates x, y ([N] each); returns (pos_x, pos_y) each [N, num_pos_feats].</summary>
    public (Tensor posX, Tensor posY) EncodeXy(Tensor x, Tensor y)
    {
        using var scope = NewDisposeScope();
        var dimT = DimT(x.device);
        var px = Interleave((x * scale)[.., TensorIndex.None] / dimT);
        var py = Interleave((y * scale)[.., TensorIndex.None] / dimT);
        return (px.MoveToOuterDisposeScope(), py.MoveToOuterDisposeScope());
    }

    /// <summary>Box encoding <c>[pos_y, pos_x, h, w]</c> (h before w), [N, 2·num_pos_feats + 2].</summary>
    public Tensor EncodeBoxes(Tensor x, Tensor y, Tensor w, Tensor h)
    {
        using var scope = NewDisposeScope();
        var (px, py) = EncodeXy(x, y);
        return torch.cat([py, px, h[.., TensorIndex.None], w[.., TensorIndex.None]], 1).MoveToOuterDisposeScope();
    }

    /// <summary>Point encoding <c>[pos_y, pos_x, label]</c> for x, y, labels of shape [B, N].</summary>
    public Tensor EncodePoints(Tensor x, Tensor y, Tensor labels)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], n = x.shape[1];
        var (px, py) = EncodeXy(x.flatten(), y.flatten());
        var pos = torch.cat([py.reshape(b, n, -1), px.reshape(b, n, -1), labels[.., .., TensorIndex.None].to(px.dtype)], 2);
        return pos.MoveToOuterDisposeScope();
    }

    /// <summary>Image encoding for a feature map <paramref name="x"/> [B, *, H, W] → [B, 2·num_pos_feats, H, W] (float32).</summary>
    public override Tensor forward(Tensor x)
    {
        long h = x.shape[^2], w = x.shape[^1], b = x.shape[0];
        var key = (h, w, x.device.type);
        if (!_cache.TryGetValue(key, out var cached))
        {
            cached = Table(h, w, x.device);
            cached.DetachFromDisposeScope();
            _cache[key] = cached;
        }
        return cached.unsqueeze(0).expand(b, -1, -1, -1).contiguous();
    }

    /// <summary>
    /// The image encoding [2·num_pos_feats, H, W] of an H×W map. Upstream builds it densely: the row and column
    /// embeddings expanded to H×W, divided by dim_t into [H, W, num_pos_feats] and passed through sin/cos — H·W·C
    /// transcendental calls and several full-size copies: 1.1–1.3 s of CPU for the full-size neck's four levels on the
    /// first call per size (0.3 s this way; benchmarks <c>firstcall --sine-only</c>). Every y channel depends only on the row and every x channel only on the column, and
    /// each element is the same float operations on the same operands either way, so this computes the [H, C/2] and
    /// [W, C/2] encodings once and broadcasts them into the channel-first table in one write: bit-identical values
    /// (checked against the dense formula in the tests) for O((H + W)·C) transcendental calls.
    /// </summary>
    internal Tensor Table(long h, long w, Device device)
    {
        using var scope = NewDisposeScope();
        var yEmbed = torch.arange(1, h + 1, dtype: ScalarType.Float32, device: device).view(-1, 1); // [H, 1]
        var xEmbed = torch.arange(1, w + 1, dtype: ScalarType.Float32, device: device).view(-1, 1); // [W, 1]
        if (normalize)
        {
            yEmbed = yEmbed / ((float)h + NormalizeEps) * scale;
            xEmbed = xEmbed / ((float)w + NormalizeEps) * scale;
        }
        var dimT = DimT(device);
        var py = Interleave(yEmbed / dimT).t(); // [C/2, H]
        var px = Interleave(xEmbed / dimT).t(); // [C/2, W]
        long half = py.shape[0];
        var table = torch.cat([py[.., .., TensorIndex.None].expand(half, h, w), px[.., TensorIndex.None, ..].expand(half, h, w)], 0);
        return table.MoveToOuterDisposeScope();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            foreach (var t in _cache.Values) t.Dispose();
            _cache.Clear();
        }
        base.Dispose(disposing);
    }
}
