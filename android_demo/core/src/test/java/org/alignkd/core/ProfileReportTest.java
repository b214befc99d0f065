package org.alignkd.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.json.JSONObject;
import org.junit.Test;

public class ProfileReportTest {
    static List<ProfileReport.Run> runs(double... decodeSeconds) {
        List<ProfileReport.Run> runs = new ArrayList<>();
        for (double d : decodeSeconds) {
            ProfileReport.Run r = new ProfileReport.Run();
            r.prefillTokens = 188;
            r.decodeTokens = 31;
            r.put("load_s", 1.0).put("preprocess_s", 0.01).put("vision_encode_s", 0.2).put("prefill_s", 0.5)
                    .put("ttft_s", 0.75).put("decode_s", d).put("peak_rss_mb", 100 * d);
            runs.add(r.withRates());
        }
        return runs;
    }

    static Map<String, Object> device() {
        Map<String, Object> device = new LinkedHashMap<>();
        device.put("name", "android");
        device.put("os", "Android 15 (API 35)");
        device.put("cpu", "test SoC");
        device.put("cores", 8);
        device.put("threads", 4);
        return device;
    }

    @Test
    public void medianAndP90AreNumpysLinearPercentiles() {
        List<Double> v = Arrays.asList(4.0, 1.0, 3.0, 2.0);
        assertEquals(2.5, ProfileReport.percentile(v, 50), 1e-12);
        assertEquals(3.7, ProfileReport.percentile(v, 90), 1e-12);  // numpy.percentile([1,2,3,4], 90)
        assertEquals(null, ProfileReport.percentile(new ArrayList<>(), 50));
    }

    @Test
    public void hasTheKeysOfAlignkdProfileJson() throws Exception {
        JSONObject out = ProfileReport.build("bundles/tiny", "executorch", device(), 1, "float32", 32, "What?",
                12.5, runs(1.0, 2.0, 4.0));
        List<String> keys = new ArrayList<>();
        Iterator<String> it = out.keys();
        while (it.hasNext()) {
            keys.add(it.next());
        }
        List<String> want = new ArrayList<>(Arrays.asList("model", "kind", "device", "runs", "warmup", "dtype",
                "max_new_tokens", "prompt", "prefill_tokens", "decode_tokens", "size_mb"));
        want.addAll(ProfileReport.METRICS);
        want.addAll(Arrays.asList("p90", "raw"));
        assertEquals(want, keys);
        assertEquals(2.0, out.getDouble("decode_s"), 1e-12);
        assertEquals(400.0, out.getDouble("peak_rss_mb"), 1e-12);  // the worst run, not the median
        assertEquals(15.5, out.getDouble("decode_tok_s"), 1e-12);  // median of 31/1, 31/2, 31/4
        assertEquals(3, out.getJSONArray("raw").length());
        assertEquals(188, out.getJSONArray("raw").getJSONObject(0).getInt("prefill_tokens"));
        assertTrue(out.getJSONObject("p90").has("ttft_s"));
    }

    @Test
    public void undefinedRatesAreNull() throws Exception {
        List<ProfileReport.Run> runs = runs(0.0);
        JSONObject out = ProfileReport.build("b", "executorch", device(), 0, "float32", 2, "q", 1, runs);
        assertTrue(out.isNull("decode_tok_s"));
    }
}
