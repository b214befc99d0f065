package org.alignkd.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.ArrayList;
import java.util.List;
import org.json.JSONObject;
import org.junit.Test;

public class ImagePreprocessorTest {
    private static ImageSpec spec() throws Exception {
        return Golden.manifest("executorch_8da4w.json").image();
    }

    /** Every golden pair: the app's float CHW pixels against Python's, within one 8-bit level on every value. */
    @Test
    public void matchesPythonOnEveryGoldenPixel() throws Exception {
        ImageSpec spec = spec();
        List<JSONObject> pairs = Golden.pairs();
        assertTrue("export/golden/ has no pairs", pairs.size() >= 1);
        for (JSONObject pair : pairs) {
            int[] size = new int[2];
            int[] argb = Golden.argb(Golden.golden(pair.getString("image")), size);
            float[] got = new ImagePreprocessor(spec).process(argb, size[0], size[1]);
            List<Integer> shape = new ArrayList<>();
            float[] want = Golden.npy(Golden.golden(pair.getString("pixel_values")), shape);
            assertEquals(List.of(1, 3, spec.size, spec.size), shape);
            assertEquals(want.length, got.length);
            int plane = spec.size * spec.size;
            int offLevel = 0;
            double worst = 0;
            for (int i = 0; i < want.length; i++) {
                double level = 1.0 / 255 / spec.std[i / plane];
                double diff = Math.abs(got[i] - want[i]);
                worst = Math.max(worst, diff / level);
                if (diff > level * 1.0001) {
                    offLevel++;
                }
            }
            assertEquals(pair.getString("image") + ": values more than one 8-bit level from Python (worst "
                    + worst + " levels)", 0, offLevel);
            // Pillow's integer arithmetic is reproduced exactly, so the bytes agree, not just the levels.
            assertTrue(pair.getString("image") + ": worst difference " + worst + " levels", worst < 1e-3);
        }
    }

    @Test
    public void resizeTargetTruncatesTheLongSideLikeTransformers() {
        assertArrayEquals(new int[] {72, 108}, ImagePreprocessor.resizeTarget(64, 96, 72));
        assertArrayEquals(new int[] {108, 72}, ImagePreprocessor.resizeTarget(101, 67, 72));  // int(108.54)
    }

    @Test
    public void squareModeCropsTheCentreOfAWideImage() throws Exception {
        ImageSpec base = spec();
        ImageSpec square = new ImageSpec(4, base.mean, base.std, 3, base.rescaleFactor, false, base.padColour);
        // 8x4: left half black, right half white; a centre crop of the 8x4 -> 4x... resize keeps both halves.
        int[] argb = new int[8 * 4];
        for (int y = 0; y < 4; y++) {
            for (int x = 0; x < 8; x++) {
                argb[y * 8 + x] = x < 4 ? 0xff000000 : 0xffffffff;
            }
        }
        float[] out = new ImagePreprocessor(square).process(argb, 8, 4);
        assertEquals(3 * 16, out.length);
        assertTrue("left of the crop is dark", out[0] < 0);
        assertTrue("right of the crop is light", out[3] > 0);
    }

    @Test
    public void padUsesThePadColourOutsideTheImage() throws Exception {
        ImageSpec base = spec();
        ImageSpec small = new ImageSpec(6, base.mean, base.std, 3, base.rescaleFactor, true, base.padColour);
        int[] argb = new int[6 * 2];  // 6 wide, 2 high, black: rows 0-1 and 4-5 of the square are pad colour
        java.util.Arrays.fill(argb, 0xff000000);
        float[] out = new ImagePreprocessor(small).process(argb, 6, 2);
        float red = (float) ((122 * base.rescaleFactor - base.mean[0]) / base.std[0]);
        assertEquals(red, out[0], 1e-5);
        assertTrue(out[3 * 6] < red - 0.5);  // row 3 is image (black)
    }

    @Test
    public void refusesPixelsThatDoNotMatchTheSize() {
        try {
            new ImagePreprocessor(new ImageSpec(4, new double[] {0, 0, 0}, new double[] {1, 1, 1}, 3, 1.0, true,
                    new int[] {0, 0, 0})).process(new int[5], 2, 2);
            fail("a 2x2 image with 5 pixels must be refused");
        } catch (BundleException err) {
            assertTrue(err.getMessage(), err.getMessage().contains("2x2"));
        }
    }

    /** Pillow's bicubic kernel at hand-checkable points (a = -0.5). */
    @Test
    public void bicubicKernelValues() {
        assertEquals(1.0, PilResample.bicubic(0.0), 0);
        assertEquals(0.5625, PilResample.bicubic(0.5), 1e-12);
        assertEquals(-0.0625, PilResample.bicubic(1.5), 1e-12);
        assertEquals(0.0, PilResample.bicubic(2.0), 0);
    }

    @Test
    public void sameSizeResizeIsACopy() {
        int[] rgb = {1, 2, 3, 4, 5, 6};
        int[] out = PilResample.resize(rgb, 2, 1, 2, 1);
        assertArrayEquals(rgb, out);
    }
}
