namespace Sam3.Torch.Processing;

/// <summary>
/// Pillow's <c>Image.resize(size, filter)</c> for 8-bit RGB images, BICUBIC (a = −0.5, Pillow's default) or BILINEAR, bit-exact:
/// per-axis coefficients computed in double (support 2·max(scale, 1) bicubic, max(scale, 1) bilinear; taps centred at <c>(i + 0.5)·scale</c>,
/// normalised to sum 1), converted to fixed point with 22 fractional bits (rounded half away from zero), accumulated in
/// 32-bit integers from <c>2^21</c>, clipped to [0, 255]; horizontal pass first (8-bit intermediate restricted to
/// the rows the vertical pass reads), then vertical (Pillow 9.4 <c>libImaging/Resample.c</c>). This is what the
/// tracker's frame loader (<c>sam2_utils._load_img_as_tensor</c>, bicubic) does before dividing by 255; the video predictor's
/// frame loader, the batched API's <c>RandomResizeAPI</c> and the training transforms use it with BILINEAR.
/// </summary>
internal static class PilResize
{
    private const int PrecisionBits = 32 - 8 - 2;
    private const double BicubicSupport = 2.0;
    private const double BilinearSupport = 1.0;

    /// <summary>Pillow's resampling filters used by the reference loaders (BICUBIC: tracker, BILINEAR: video predictor).</summary>
    internal enum Filter { Bicubic, Bilinear }

    private static double Bilinear(double x)
    {
        if (x < 0.0) x = -x;
        return x < 1.0 ? 1.0 - x : 0.0;
    }

    private static double Bicubic(double x)
    {
        const double a = -0.5;
        if (x < 0.0) x = -x;
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
    }

    /// <summary>precompute_coeffs + normalize_coeffs_8bpc: per output index its first tap, tap count and integer weights.</summary>
    private static (int ksize, int[] bounds, int[] kk) Coefficients(int inSize, int outSize, Filter filter = Filter.Bicubic)
    {
        double scale = (double)inSize / outSize;
        double filterscale = scale < 1.0 ? 1.0 : scale;
        double support = (filter == Filter.Bilinear ? BilinearSupport : BicubicSupport) * filterscale;
        int ksize = (int)Math.Ceiling(support) * 2 + 1;
        var bounds = new int[outSize * 2];
        var kk = new int[outSize * ksize];
        var k = new double[ksize];
        for (int xx = 0; xx < outSize; xx++)
        {
            double center = (xx + 0.5) * scale;
            double ww = 0.0, ss = 1.0 / filterscale;
            int xmin = (int)(center - support + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            Array.Clear(k);
            for (int x = 0; x < xmax; x++)
            {
                double w = filter == Filter.Bilinear ? Bilinear((x + xmin - center + 0.5) * ss) : Bicubic((x + xmin - center + 0.5) * ss);
                k[x] = w;
                ww += w;
            }
            for (int x = 0; x < xmax; x++)
                if (ww != 0.0) k[x] /= ww;
            for (int x = 0; x < ksize; x++)
            {
                double v = k[x] * (1 << PrecisionBits);
                kk[xx * ksize + x] = k[x] < 0 ? (int)(-0.5 + v) : (int)(0.5 + v);
            }
            bounds[xx * 2] = xmin;
            bounds[xx * 2 + 1] = xmax;
        }
        return (ksize, bounds, kk);
    }

    private static byte Clip8(int v)
    {
        if (v >= (1 << PrecisionBits << 8)) return 255;
        if (v <= 0) return 0;
        return (byte)(v >> PrecisionBits);
    }

    /// <summary>Resizes HWC RGB bytes (<paramref name="width"/> × <paramref name="height"/>) to <paramref name="outWidth"/> × <paramref name="outHeight"/>.</summary>
    /// <param name="destination">Reused as the result when it has the output's length (else a new array is returned).</param>
    public static byte[] ResizeRgb(ReadOnlySpan<byte> src, int width, int height, int outWidth, int outHeight, byte[]? destination = null,
                                   Filter filter = Filter.Bicubic)
    {
        if (width <= 0 || height <= 0 || outWidth <= 0 || outHeight <= 0)
            throw new ArgumentOutOfRangeException(nameof(width), $"resize {width}x{height} -> {outWidth}x{outHeight}: sizes must be positive");
        if (src.Length != 3L * width * height) throw new ArgumentException($"RGB buffer of {src.Length} bytes for a {width}x{height} image", nameof(src));
        if (width == outWidth && height == outHeight) return src.ToArray();
        bool needH = outWidth != width, needV = outHeight != height;
        var (kh, bh, wh) = Coefficients(width, outWidth, filter);
        var (kv, bv, wv) = Coefficients(height, outHeight, filter);

        // horizontal pass over the rows the vertical pass reads
        int yFirst = needV ? bv[0] : 0;
        int yLast = needV ? bv[outHeight * 2 - 2] + bv[outHeight * 2 - 1] : height;
        byte[] tmp;
        int tmpW, tmpH = yLast - yFirst;
        if (needH)
        {
            tmpW = outWidth;
            tmp = new byte[tmpH * tmpW * 3];
            for (int y = 0; y < tmpH; y++)
            {
                int rowIn = (y + yFirst) * width * 3, rowOut = y * tmpW * 3;
                for (int xx = 0; xx < outWidth; xx++)
                {
                    int xmin = bh[xx * 2], xmax = bh[xx * 2 + 1], kOff = xx * kh;
                    int s0 = 1 << (PrecisionBits - 1), s1 = s0, s2 = s0;
                    for (int x = 0; x < xmax; x++)
                    {
                        int w = wh[kOff + x], p = rowIn + (x + xmin) * 3;
                        s0 += src[p] * w;
                        s1 += src[p + 1] * w;
                        s2 += src[p + 2] * w;
                    }
                    int o = rowOut + xx * 3;
                    tmp[o] = Clip8(s0);
                    tmp[o + 1] = Clip8(s1);
                    tmp[o + 2] = Clip8(s2);
                }
            }
        }
        else
        {
            tmpW = width;
            tmp = src.Slice(yFirst * width * 3, tmpH * width * 3).ToArray();
        }
        if (!needV) return tmp;

        var dst = destination is not null && destination.Length == outHeight * tmpW * 3 ? destination : new byte[outHeight * tmpW * 3];
        for (int yy = 0; yy < outHeight; yy++)
        {
            int ymin = bv[yy * 2] - yFirst, ymax = bv[yy * 2 + 1], kOff = yy * kv, rowOut = yy * tmpW * 3;
            for (int xx = 0; xx < tmpW; xx++)
            {
                int s0 = 1 << (PrecisionBits - 1), s1 = s0, s2 = s0;
                for (int y = 0; y < ymax; y++)
                {
                    int w = wv[kOff + y], p = ((y + ymin) * tmpW + xx) * 3;
                    s0 += tmp[p] * w;
                    s1 += tmp[p + 1] * w;
                    s2 += tmp[p + 2] * w;
                }
                int o = rowOut + xx * 3;
                dst[o] = Clip8(s0);
                dst[o + 1] = Clip8(s1);
                dst[o + 2] = Clip8(s2);
            }
        }
        return dst;
    }
}
