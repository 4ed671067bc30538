namespace Sam3.Torch.Batched;

/// <summary>
/// Pillow's <c>Image.resize(size, BILINEAR)</c> on an 8-bit RGB image (libImaging/Resample.c): the resize that upstream's
/// <c>RandomResizeAPI</c> applies through torchvision's <c>F.resize</c> on a PIL image. Separable, antialiased (the
/// triangle filter is widened by the scale when shrinking), weights normalised per output pixel and rounded to fixed
/// point with <see cref="PrecisionBits"/> fractional bits; a horizontal pass into a uint8 buffer, then a vertical pass,
/// each output rounded half up and clipped to [0, 255].
/// </summary>
/// <remarks>This is not LibTorch's antialiased uint8 kernel (<see cref="Processing.ImagePreprocessor"/>, the transform
/// of the processor API), whose fixed-point weights differ: the two can differ by one grey level on some pixels.</remarks>
internal static class PilBilinearResize
{
    /// <summary>Pillow: <c>PRECISION_BITS = 32 - 8 - 2</c>.</summary>
    public const int PrecisionBits = 32 - 8 - 2;

    /// <summary>Pillow's bilinear filter support (radius at scale 1).</summary>
    private const double BilinearSupport = 1.0;

    private static double Bilinear(double x)
    {
        if (x < 0.0) x = -x;
        return x < 1.0 ? 1.0 - x : 0.0;
    }

    /// <summary>Resizes interleaved RGB bytes [H,W,3] to [outH,outW,3].</summary>
    public static byte[] Resize(ReadOnlySpan<byte> rgb, int height, int width, int outHeight, int outWidth)
    {
        if (height <= 0 || width <= 0 || outHeight <= 0 || outWidth <= 0)
            throw new ArgumentOutOfRangeException(nameof(height), $"sizes must be positive: {width}x{height} -> {outWidth}x{outHeight}");
        if (rgb.Length != height * width * 3) throw new ArgumentException($"expected {height * width * 3} bytes, got {rgb.Length}", nameof(rgb));
        bool needHorizontal = outWidth != width, needVertical = outHeight != height;
        var (kh, boundsH, ksizeH) = Coefficients(width, outWidth);
        var (kv, boundsV, ksizeV) = Coefficients(height, outHeight);
        // rows of the source used by the vertical pass
        int yFirst = boundsV[0], yLast = boundsV[outHeight * 2 - 2] + boundsV[outHeight * 2 - 1];

        byte[] current = rgb.ToArray();
        int curH = height, curW = width;
        if (needHorizontal)
        {
            for (int i = 0; i < outHeight; i++) boundsV[i * 2] -= yFirst;
            int rows = yLast - yFirst;
            var tmp = new byte[rows * outWidth * 3];
            for (int yy = 0; yy < rows; yy++)
            {
                int src = (yy + yFirst) * curW * 3, dst = yy * outWidth * 3;
                for (int xx = 0; xx < outWidth; xx++)
                {
                    int xmin = boundsH[xx * 2], xmax = boundsH[xx * 2 + 1], k0 = xx * ksizeH;
                    int s0 = 1 << (PrecisionBits - 1), s1 = s0, s2 = s0;
                    for (int x = 0; x < xmax; x++)
                    {
                        int p = src + (x + xmin) * 3, k = kh[k0 + x];
                        s0 += current[p] * k; s1 += current[p + 1] * k; s2 += current[p + 2] * k;
                    }
                    tmp[dst + xx * 3] = Clip8(s0); tmp[dst + xx * 3 + 1] = Clip8(s1); tmp[dst + xx * 3 + 2] = Clip8(s2);
                }
            }
            current = tmp; curH = rows; curW = outWidth;
        }
        if (needVertical)
        {
            var outBuf = new byte[outHeight * curW * 3];
            for (int yy = 0; yy < outHeight; yy++)
            {
                int ymin = boundsV[yy * 2], ymax = boundsV[yy * 2 + 1], k0 = yy * ksizeV, dst = yy * curW * 3;
                for (int xx = 0; xx < curW; xx++)
                {
                    int s0 = 1 << (PrecisionBits - 1), s1 = s0, s2 = s0;
                    for (int y = 0; y < ymax; y++)
                    {
                        int p = ((y + ymin) * curW + xx) * 3, k = kv[k0 + y];
                        s0 += current[p] * k; s1 += current[p + 1] * k; s2 += current[p + 2] * k;
                    }
                    outBuf[dst + xx * 3] = Clip8(s0); outBuf[dst + xx * 3 + 1] = Clip8(s1); outBuf[dst + xx * 3 + 2] = Clip8(s2);
                }
            }
            current = outBuf; curH = outHeight;
        }
        if (!needVertical && needHorizontal && curH != outHeight)
            throw new InvalidOperationException("resize bookkeeping: row count mismatch"); // cannot happen: no vertical pass = same height
        return current;
    }

    private static byte Clip8(int v)
    {
        if (v >= (1 << PrecisionBits << 8)) return 255;
        if (v <= 0) return 0;
        return (byte)(v >> PrecisionBits);
    }

    /// <summary>precompute_coeffs + normalize_coeffs_8bpc for the whole input range (box = full image).</summary>
    private static (int[] Weights, int[] Bounds, int KSize) Coefficients(int inSize, int outSize)
    {
        double scale = (double)inSize / outSize, filterScale = Math.Max(scale, 1.0);
        double support = BilinearSupport * filterScale;
        int ksize = (int)Math.Ceiling(support) * 2 + 1;
        var pre = new double[outSize * ksize];
        var bounds = new int[outSize * 2];
        for (int xx = 0; xx < outSize; xx++)
        {
            double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterScale;
            int xmin = (int)(center - support + 0.5); // C cast: truncation toward zero
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            int k0 = xx * ksize;
            for (int x = 0; x < xmax; x++)
            {
                double w = Bilinear((x + xmin - center + 0.5) * ss);
                pre[k0 + x] = w;
                ww += w;
            }
            for (int x = 0; x < xmax; x++) if (ww != 0.0) pre[k0 + x] /= ww;
            bounds[xx * 2] = xmin;
            bounds[xx * 2 + 1] = xmax;
        }
        var weights = new int[pre.Length];
        for (int i = 0; i < pre.Length; i++)
            weights[i] = pre[i] < 0 ? (int)(-0.5 + pre[i] * (1 << PrecisionBits)) : (int)(0.5 + pre[i] * (1 << PrecisionBits));
        return (weights, bounds, ksize);
    }
}
