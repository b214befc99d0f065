package org.alignkd.core;

/**
 * Decoded RGB pixels -> the float CHW tensor the bundle's vision encoder takes, per the manifest's image block.
 *
 * <p>The steps of alignkd.data.image.ImageProcessor (MobileVLM's process_images with CLIP's PIL processor): pad
 * to a square canvas of the pad colour (aspect ratio "pad"), bicubic resize of the short side to {@code size}
 * (Pillow's arithmetic, see {@link PilResample}), centre crop to size x size, then in float32 as numpy does
 * it: {@code x = float32(u8 * rescale_factor)}, {@code (x - mean) / std}.
 */
public final class ImagePreprocessor {
    private final ImageSpec spec;

    public ImagePreprocessor(ImageSpec spec) {
        this.spec = spec;
    }

    public int size() {
        return spec.size;
    }

    /**
     * {@code argb}: row-major pixels as Android's Bitmap.getPixels and javax.imageio's getRGB return them (alpha
     * is dropped, as PIL's convert("RGB") does). Returns 3 * size * size floats, channel planes R, G, B.
     */
    public float[] process(int[] argb, int width, int height) throws BundleException {
        if (width < 1 || height < 1 || argb.length != width * height) {
            throw new BundleException("the image is " + width + "x" + height + " with " + argb.length
                    + " pixels; pick another photo (it could not be decoded whole)");
        }
        int[] rgb = unpack(argb);
        int w = width;
        int h = height;
        if (spec.pad && w != h) {
            int side = Math.max(w, h);
            rgb = padToSquare(rgb, w, h, side);
            w = side;
            h = side;
        }
        int[] target = resizeTarget(w, h, spec.size);
        rgb = PilResample.resize(rgb, w, h, target[0], target[1]);
        return normalise(crop(rgb, target[0], target[1], spec.size), spec.size);
    }

    /** transformers' get_resize_output_image_size(default_to_square=False): {width, height}. */
    static int[] resizeTarget(int w, int h, int size) {
        int shortSide = Math.min(w, h);
        int longSide = Math.max(w, h);
        int newLong = (int) ((double) (size * longSide) / shortSide);
        return w <= h ? new int[] {size, newLong} : new int[] {newLong, size};
    }

    private static int[] unpack(int[] argb) {
        int[] rgb = new int[argb.length * 3];
        for (int i = 0; i < argb.length; i++) {
            rgb[i * 3] = (argb[i] >> 16) & 0xff;
            rgb[i * 3 + 1] = (argb[i] >> 8) & 0xff;
            rgb[i * 3 + 2] = argb[i] & 0xff;
        }
        return rgb;
    }

    /** expand2square: the image centred on a side x side canvas (offset floored, as PIL's paste gets it). */
    private int[] padToSquare(int[] rgb, int w, int h, int side) {
        int[] out = new int[side * side * 3];
        for (int i = 0; i < side * side; i++) {
            System.arraycopy(spec.padColour, 0, out, i * 3, 3);
        }
        int left = (side - w) / 2;
        int top = (side - h) / 2;
        for (int y = 0; y < h; y++) {
            System.arraycopy(rgb, y * w * 3, out, ((y + top) * side + left) * 3, w * 3);
        }
        return out;
    }

    private static int[] crop(int[] rgb, int w, int h, int size) {
        int top = (h - size) / 2;
        int left = (w - size) / 2;
        int[] out = new int[size * size * 3];
        for (int y = 0; y < size; y++) {
            System.arraycopy(rgb, ((y + top) * w + left) * 3, out, y * size * 3, size * 3);
        }
        return out;
    }

    private float[] normalise(int[] rgb, int size) {
        int plane = size * size;
        float[] out = new float[3 * plane];
        for (int ch = 0; ch < 3; ch++) {
            float mean = (float) spec.mean[ch];
            float std = (float) spec.std[ch];
            for (int i = 0; i < plane; i++) {
                // numpy: rescale in float64 then cast; normalise in float32.
                float x = (float) (rgb[i * 3 + ch] * spec.rescaleFactor);
                out[ch * plane + i] = (x - mean) / std;
            }
        }
        return out;
    }
}
