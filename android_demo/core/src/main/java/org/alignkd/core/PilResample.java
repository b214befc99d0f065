package org.alignkd.core;

/**
 * Pillow's bicubic resize of an 8-bit RGB image, reproduced step for step so the app's pixels equal Python's.
 *
 * <p>Pillow (libImaging/Resample.c) resamples in two separable passes, horizontal then vertical, each rounding
 * back to uint8; when it downscales, the filter support widens by the scale (antialiasing). Weights are
 * computed in double, normalised to sum 1, then turned into fixed point with 22 fractional bits, and every
 * output sample is the integer sum rounded and clipped to 0..255. The same integer arithmetic here gives the
 * same bytes (checked against export/golden/ by ImagePreprocessorTest).
 */
final class PilResample {
    private static final int PRECISION_BITS = 32 - 8 - 2;
    private static final double BICUBIC_SUPPORT = 2.0;
    private static final double BICUBIC_A = -0.5;

    private PilResample() {}

    /** Interleaved RGB bytes (0..255, length w*h*3) -> the same layout at outW x outH. */
    static int[] resize(int[] rgb, int w, int h, int outW, int outH) {
        int[] out = rgb;
        int curW = w;
        if (outW != w) {
            out = horizontal(out, curW, h, outW);
            curW = outW;
        }
        if (outH != h) {
            out = vertical(out, curW, h, outH);
        }
        return out == rgb ? rgb.clone() : out;
    }

    static double bicubic(double x) {
        if (x < 0.0) {
            x = -x;
        }
        if (x < 1.0) {
            return ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1;
        }
        if (x < 2.0) {
            return (((x - 5) * x + 8) * x - 4) * BICUBIC_A;
        }
        return 0.0;
    }

    /** Fixed-point weights of each output sample: {@code kernel[o * ksize + i]} applies to input bounds[2o] + i. */
    static final class Coefficients {
        final int ksize;
        final int[] bounds;
        final int[] kernel;

        Coefficients(int ksize, int[] bounds, int[] kernel) {
            this.ksize = ksize;
            this.bounds = bounds;
            this.kernel = kernel;
        }
    }

    static Coefficients coefficients(int inSize, int outSize) {
        double scale = (double) inSize / outSize;
        double filterscale = Math.max(scale, 1.0);
        double support = BICUBIC_SUPPORT * filterscale;
        int ksize = (int) Math.ceil(support) * 2 + 1;
        double[] weights = new double[outSize * ksize];
        int[] bounds = new int[outSize * 2];
        for (int xx = 0; xx < outSize; xx++) {
            double center = (xx + 0.5) * scale;
            double ss = 1.0 / filterscale;
            // (int) truncates toward zero as C's cast does; Pillow relies on that here.
            int xmin = Math.max((int) (center - support + 0.5), 0);
            int xmax = Math.min((int) (center + support + 0.5), inSize) - xmin;
            double ww = 0.0;
            for (int x = 0; x < xmax; x++) {
                double wgt = bicubic((x + xmin - center + 0.5) * ss);
                weights[xx * ksize + x] = wgt;
                ww += wgt;
            }
            for (int x = 0; x < xmax; x++) {
                if (ww != 0.0) {
                    weights[xx * ksize + x] /= ww;
                }
            }
            bounds[xx * 2] = xmin;
            bounds[xx * 2 + 1] = xmax;
        }
        int[] kernel = new int[weights.length];
        for (int i = 0; i < weights.length; i++) {
            double scaled = weights[i] * (1 << PRECISION_BITS);
            kernel[i] = (int) (weights[i] < 0 ? -0.5 + scaled : 0.5 + scaled);
        }
        return new Coefficients(ksize, bounds, kernel);
    }

    static int clip8(int in) {
        if (in >= (1 << PRECISION_BITS << 8)) {
            return 255;
        }
        if (in <= 0) {
            return 0;
        }
        return in >> PRECISION_BITS;
    }

    private static int[] horizontal(int[] src, int w, int h, int outW) {
        Coefficients c = coefficients(w, outW);
        int[] out = new int[outW * h * 3];
        for (int y = 0; y < h; y++) {
            for (int xx = 0; xx < outW; xx++) {
                int xmin = c.bounds[xx * 2];
                int xmax = c.bounds[xx * 2 + 1];
                for (int ch = 0; ch < 3; ch++) {
                    int ss = 1 << (PRECISION_BITS - 1);
                    for (int x = 0; x < xmax; x++) {
                        ss += src[(y * w + x + xmin) * 3 + ch] * c.kernel[xx * c.ksize + x];
                    }
                    out[(y * outW + xx) * 3 + ch] = clip8(ss);
                }
            }
        }
        return out;
    }

    private static int[] vertical(int[] src, int w, int h, int outH) {
        Coefficients c = coefficients(h, outH);
        int[] out = new int[w * outH * 3];
        for (int yy = 0; yy < outH; yy++) {
            int ymin = c.bounds[yy * 2];
            int ymax = c.bounds[yy * 2 + 1];
            for (int x = 0; x < w; x++) {
                for (int ch = 0; ch < 3; ch++) {
                    int ss = 1 << (PRECISION_BITS - 1);
                    for (int y = 0; y < ymax; y++) {
                        ss += src[((y + ymin) * w + x) * 3 + ch] * c.kernel[yy * c.ksize + y];
                    }
                    out[(yy * w + x) * 3 + ch] = clip8(ss);
                }
            }
        }
        return out;
    }
}
