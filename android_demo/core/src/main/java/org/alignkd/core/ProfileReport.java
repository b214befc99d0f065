package org.alignkd.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The JSON `alignkd profile --json` writes (alignkd.runtime.profile.profile), filled from a phone's runs, so
 * `alignkd profile --device android|ios` reads a phone's result like a host one: the per-metric median and
 * p90 over the measured runs (numpy's linear percentile), peak RSS as the worst run, the raw runs, and a
 * {@code device} block describing the phone.
 */
public final class ProfileReport {
    /** alignkd.runtime.profile.METRICS, in its order. */
    public static final List<String> METRICS = Arrays.asList("load_s", "preprocess_s", "vision_encode_s",
            "prefill_s", "ttft_s", "prefill_tok_s", "decode_s", "decode_tok_s", "peak_rss_mb");

    /** One measured round, as a raw entry of the profile JSON. */
    public static final class Run {
        public final Map<String, Double> metrics = new LinkedHashMap<>();
        public int prefillTokens;
        public int decodeTokens;
        public boolean peakRssPerRound;

        public Run put(String metric, Double value) {
            metrics.put(metric, value);
            return this;
        }

        /** Derive the rates the way alignkd's generation loop does (tokens over seconds, null if undefined). */
        public Run withRates() {
            Double prefill = metrics.get("prefill_s");
            Double decode = metrics.get("decode_s");
            metrics.put("prefill_tok_s", prefill != null && prefill > 0 ? prefillTokens / prefill : null);
            metrics.put("decode_tok_s", decode != null && decode > 0 && decodeTokens > 0 ? decodeTokens / decode : null);
            return this;
        }

        JSONObject toJson() throws JSONException {
            JSONObject out = new JSONObject();
            for (String m : Arrays.asList("load_s", "preprocess_s", "vision_encode_s", "prefill_s", "ttft_s",
                    "decode_s")) {
                out.put(m, number(metrics.get(m)));
            }
            out.put("prefill_tokens", prefillTokens);
            out.put("decode_tokens", decodeTokens);
            out.put("prefill_tok_s", number(metrics.get("prefill_tok_s")));
            out.put("decode_tok_s", number(metrics.get("decode_tok_s")));
            out.put("peak_rss_mb", number(metrics.get("peak_rss_mb")));
            out.put("peak_rss_per_round", peakRssPerRound);
            return out;
        }
    }

    private ProfileReport() {}

    /**
     * The whole profile JSON. {@code model}: the bundle path; {@code kind}: the manifest's target; {@code prompt}:
     * the question used (see {@link BenchmarkPrompt}); {@code device}: keys name/os/cpu/cores/threads plus the
     * phone's own (model, soc, abi, ...).
     */
    public static JSONObject build(String model, String kind, Map<String, Object> device, int warmup,
                                   String dtype, int maxNewTokens, String prompt, double sizeMb, List<Run> runs)
            throws JSONException {
        if (runs.isEmpty()) {
            throw new IllegalArgumentException("a profile needs at least one measured run");
        }
        JSONObject out = new JSONObject();
        out.put("model", model);
        out.put("kind", kind);
        JSONObject dev = new JSONObject();
        for (Map.Entry<String, Object> e : device.entrySet()) {
            dev.put(e.getKey(), e.getValue() == null ? JSONObject.NULL : e.getValue());
        }
        out.put("device", dev);
        out.put("runs", runs.size());
        out.put("warmup", warmup);
        out.put("dtype", dtype);
        out.put("max_new_tokens", maxNewTokens);
        out.put("prompt", prompt);
        out.put("prefill_tokens", runs.get(0).prefillTokens);
        out.put("decode_tokens", runs.get(0).decodeTokens);
        out.put("size_mb", sizeMb);
        JSONObject p90 = new JSONObject();
        for (String m : METRICS) {
            out.put(m, number(percentile(values(runs, m), 50)));
            p90.put(m, number(percentile(values(runs, m), 90)));
        }
        out.put("peak_rss_mb", number(max(values(runs, "peak_rss_mb"))));  // a peak: the worst round
        out.put("p90", p90);
        JSONArray raw = new JSONArray();
        for (Run r : runs) {
            raw.put(r.toJson());
        }
        out.put("raw", raw);
        return out;
    }

    private static List<Double> values(List<Run> runs, String metric) {
        List<Double> out = new ArrayList<>();
        for (Run r : runs) {
            Double v = r.metrics.get(metric);
            if (v != null && !v.isNaN()) {
                out.add(v);
            }
        }
        return out;
    }

    /** numpy.percentile's default (linear) method; null for no values. */
    static Double percentile(List<Double> values, double q) {
        if (values.isEmpty()) {
            return null;
        }
        double[] sorted = values.stream().mapToDouble(Double::doubleValue).sorted().toArray();
        double pos = (sorted.length - 1) * q / 100.0;
        int lo = (int) Math.floor(pos);
        int hi = (int) Math.ceil(pos);
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
    }

    private static Double max(List<Double> values) {
        return values.isEmpty() ? null : values.stream().mapToDouble(Double::doubleValue).max().getAsDouble();
    }

    private static Object number(Double v) {
        return v == null || v.isNaN() || v.isInfinite() ? JSONObject.NULL : v;
    }
}
