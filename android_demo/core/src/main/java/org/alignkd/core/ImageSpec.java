package org.alignkd.core;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The manifest's "image" block (alignkd.data.image.ImageConfig.to_dict()): output side, mean/std, PIL resample
 * filter, rescale factor, aspect-ratio mode and the pad colour.
 */
public final class ImageSpec {
    public static final int PIL_BICUBIC = 3;

    public final int size;
    public final double[] mean;
    public final double[] std;
    public final int resample;
    public final double rescaleFactor;
    public final boolean pad;
    public final int[] padColour;

    public ImageSpec(int size, double[] mean, double[] std, int resample, double rescaleFactor, boolean pad,
                     int[] padColour) {
        this.size = size;
        this.mean = mean;
        this.std = std;
        this.resample = resample;
        this.rescaleFactor = rescaleFactor;
        this.pad = pad;
        this.padColour = padColour;
    }

    static ImageSpec fromJson(JSONObject image) throws JSONException, BundleException {
        String aspect = image.getString("aspect_ratio");
        if (!aspect.equals("pad") && !aspect.equals("square")) {
            throw new BundleException("manifest.json image.aspect_ratio is '" + aspect
                    + "' but this app knows 'pad' and 'square'; re-export the bundle with alignkd");
        }
        int resample = image.getInt("resample");
        if (resample != PIL_BICUBIC) {
            // Only bicubic is implemented: every MobileVLM / CLIP preprocessor uses it.
            throw new BundleException("manifest.json image.resample is " + resample
                    + " but this app implements only bicubic (3); re-export the bundle with the CLIP preprocessor");
        }
        int size = image.getInt("size");
        if (size < 1) {
            throw new BundleException("manifest.json image.size is " + size + "; re-export the bundle");
        }
        return new ImageSpec(size, doubles(image.getJSONArray("mean")), doubles(image.getJSONArray("std")), resample,
                image.getDouble("rescale_factor"), aspect.equals("pad"), ints(image.getJSONArray("pad_colour")));
    }

    private static double[] doubles(JSONArray a) throws JSONException, BundleException {
        if (a.length() != 3) {
            throw new BundleException("manifest.json image mean/std must hold 3 numbers; re-export the bundle");
        }
        return new double[] {a.getDouble(0), a.getDouble(1), a.getDouble(2)};
    }

    private static int[] ints(JSONArray a) throws JSONException, BundleException {
        if (a.length() != 3) {
            throw new BundleException("manifest.json image.pad_colour must hold 3 integers; re-export the bundle");
        }
        return new int[] {a.getInt(0), a.getInt(1), a.getInt(2)};
    }
}
