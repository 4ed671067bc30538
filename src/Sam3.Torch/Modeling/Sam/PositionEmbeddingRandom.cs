using TorchSharp;
using static TorchSharp.torch;

namespace Sam3.Torch.Modeling.Sam;

/// <summary>
/// Positional encoding with random spatial frequencies (sam/prompt_encoder.py PositionEmbeddingRandom). Coordinates in
/// [0,1] are mapped to [-1,1], projected by the Gaussian matrix [2, F], times 2π, and encoded as <c>[sin(F), cos(F)]</c>
/// (concatenated, 2F channels). The matrix is a persistent buffer (state-dict key
/// <c>positional_encoding_gaussian_matrix</c>) that must come from the checkpoint.
/// </summary>
internal sealed class PositionEmbeddingRandom : nn.Module
{
    /// <summary>Persistent buffer [2, num_pos_feats] (random at construction, replaced by the checkpoint value).</summary>
    public readonly Tensor positional_encoding_gaussian_matrix;

    public int num_pos_feats { get; }

    public PositionEmbeddingRandom(int numPosFeats, double? scale = null) : base(nameof(PositionEmbeddingRandom))
    {
        if (numPosFeats <= 0) throw new Sam3ConfigException($"PositionEmbeddingRandom: num_pos_feats must be positive, got {numPosFeats}");
        num_pos_feats = numPosFeats;
        // upstream: a missing or non-positive scale means 1
        double s = scale is double v && v > 0.0 ? v : 1.0;
        positional_encoding_gaussian_matrix = torch.randn(2, numPosFeats) * s;
        RegisterComponents();
    }

    /// <summary>Encodes points already normalised to [0,1]: [..., 2] → [..., 2F].</summary>
    public Tensor PeEncoding(Tensor coords)
    {
        using var scope = NewDisposeScope();
        var c = 2 * coords - 1;
        c = c.matmul(positional_encoding_gaussian_matrix);
        c = 2 * Math.PI * c;
        return torch.cat([c.sin(), c.cos()], -1).MoveToOuterDisposeScope();
    }

    /// <summary>Dense encoding of an h×w grid of pixel centres: [2F, h, w].</summary>
    public Tensor forward(long h, long w)
    {
        using var scope = NewDisposeScope();
        var grid = torch.ones(h, w, dtype: ScalarType.Float32, device: positional_encoding_gaussian_matrix.device);
        var yEmbed = (grid.cumsum(0) - 0.5) / h;
        var xEmbed = (grid.cumsum(1) - 0.5) / w;
        var pe = PeEncoding(torch.stack([xEmbed, yEmbed], -1));
        return pe.permute(2, 0, 1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Encodes pixel coordinates [B, N, 2] (x, y) of an image of size (<paramref name="imageH"/>, <paramref name="imageW"/>):
    /// x is divided by the width and y by the height, then <see cref="PeEncoding"/> (float32). Returns [B, N, 2F].
    /// </summary>
    public Tensor ForwardWithCoords(Tensor coordsInput, long imageH, long imageW)
    {
        using var scope = NewDisposeScope();
        var c = coordsInput.to(ScalarType.Float32);
        var x = c[TensorIndex.Ellipsis, TensorIndex.Slice(0, 1)] / imageW;
        var y = c[TensorIndex.Ellipsis, TensorIndex.Slice(1, 2)] / imageH;
        return PeEncoding(torch.cat([x, y], -1)).MoveToOuterDisposeScope();
    }
}
