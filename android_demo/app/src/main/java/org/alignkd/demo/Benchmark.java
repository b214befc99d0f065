package org.alignkd.demo;

import android.graphics.Bitmap;
import android.graphics.Canvas;
import android.graphics.Color;
import android.graphics.Paint;
import android.os.Build;
import android.util.Log;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.alignkd.core.BenchmarkPrompt;
import org.alignkd.core.BundleException;
import org.alignkd.core.Manifest;
import org.alignkd.core.ProfileReport;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * Benchmark mode: what `alignkd profile` does on the host, on the phone. Each of warmup + runs rounds loads the
 * bundle afresh (timed), preprocesses a synthetic picture (timed) and answers the fixed benchmark question
 * (BenchmarkPrompt: ~190 prefill positions, the host's question for the same tokenizer) with up to
 * maxNewTokens tokens; the JSON goes to {@code <external files>/alignkd_profile.json}, where
 * `alignkd profile --device android` pulls it.
 */
final class Benchmark {
    static final String TAG = "alignkd";
    static final String OUTPUT = "alignkd_profile.json";

    interface Progress {
        void onProgress(String line);
    }

    private Benchmark() {}

    static File run(File bundle, int runs, int warmup, int maxNewTokens, File outDir, Progress progress)
            throws BundleException {
        if (runs < 1 || warmup < 0 || maxNewTokens < 2) {
            throw new BundleException("runs=" + runs + ", warmup=" + warmup + ", max_new_tokens=" + maxNewTokens
                    + ": need runs >= 1, warmup >= 0 and max_new_tokens >= 2 (decode speed needs a second token)");
        }
        progress.onProgress("verifying " + bundle);
        Manifest.load(bundle, "executorch").verifyFiles(bundle);  // once: hashing a large .pte is not load time
        List<ProfileReport.Run> measured = new ArrayList<>();
        String question = null;
        Manifest manifest = null;
        for (int i = 0; i < warmup + runs; i++) {
            boolean reset = resetPeakRss();
            try (EtSession session = EtSession.open(bundle, false)) {
                manifest = session.manifest;
                if (question == null) {
                    question = BenchmarkPrompt.fit(manifest.prompt(), session.tokenizer, manifest.addBos(),
                            manifest.numImageTokens());
                }
                long t0 = System.nanoTime();
                int size = 336;
                int[] argb = syntheticImage(size);
                float[] pixels = session.preprocessor.process(argb, size, size);
                double preprocessS = (System.nanoTime() - t0) / 1e9;
                EtSession.Timings t = session.ask(pixels, question, maxNewTokens, text -> { });
                ProfileReport.Run run = new ProfileReport.Run();
                run.prefillTokens = t.prefillTokens;
                run.decodeTokens = Math.max(t.generatedTokens - 1, 0);
                run.peakRssPerRound = reset;
                run.put("load_s", session.loadS).put("preprocess_s", preprocessS)
                        .put("vision_encode_s", t.visionEncodeS).put("prefill_s", t.prefillS)
                        .put("ttft_s", t.ttftS).put("decode_s", t.decodeS).put("peak_rss_mb", peakRssMb());
                run.withRates();
                progress.onProgress((i < warmup ? "warm-up " : "run ") + (i + 1) + ": ttft "
                        + String.format(java.util.Locale.ROOT, "%.3f s, decode %.1f tok/s", t.ttftS,
                        run.metrics.get("decode_tok_s") == null ? 0.0 : run.metrics.get("decode_tok_s")));
                if (i >= warmup) {
                    measured.add(run);
                }
            }
        }
        try {
            JSONObject json = ProfileReport.build(bundle.getPath(), manifest.target(), device(), warmup, "float32",
                    maxNewTokens, question, manifest.sizeMb(), measured);
            File out = new File(outDir, OUTPUT);
            Files.write(out.toPath(), json.toString(1).getBytes(StandardCharsets.UTF_8));
            Log.i(TAG, "ALIGNKD_PROFILE " + out);  // scripted runs wait for this line in logcat
            return out;
        } catch (JSONException | IOException err) {
            throw new BundleException("cannot write " + OUTPUT + " to " + outDir + " (" + err.getMessage()
                    + "); free some space on the phone", err);
        }
    }

    /** The device block: alignkd profile's keys (name, os, cpu, cores, threads) plus the phone's own. */
    static Map<String, Object> device() {
        Map<String, Object> d = new LinkedHashMap<>();
        String soc = Build.VERSION.SDK_INT >= 31 ? Build.SOC_MANUFACTURER + " " + Build.SOC_MODEL : Build.HARDWARE;
        d.put("name", "android");
        d.put("os", "Android " + Build.VERSION.RELEASE + " (API " + Build.VERSION.SDK_INT + ")");
        d.put("cpu", soc);
        d.put("cores", Runtime.getRuntime().availableProcessors());
        d.put("threads", "auto");  // ExecuTorch's runner sizes its thread pool to the performant cores
        d.put("model", Build.MODEL);
        d.put("manufacturer", Build.MANUFACTURER);
        d.put("soc", soc);
        d.put("android_version", Build.VERSION.RELEASE);
        d.put("sdk", Build.VERSION.SDK_INT);
        d.put("abi", Build.SUPPORTED_ABIS.length > 0 ? Build.SUPPORTED_ABIS[0] : "");
        d.put("runtime", "executorch-android " + BuildConfig.EXECUTORCH_VERSION);
        return d;
    }

    /** A fixed picture (gradient, a red disc, a blue square) like alignkd profile's synthetic image. */
    static int[] syntheticImage(int size) {
        Bitmap bmp = Bitmap.createBitmap(size, size, Bitmap.Config.ARGB_8888);
        for (int y = 0; y < size; y++) {
            for (int x = 0; x < size; x++) {
                bmp.setPixel(x, y, Color.rgb(x * 255 / size, y * 255 / size, 128));
            }
        }
        Canvas canvas = new Canvas(bmp);
        Paint paint = new Paint();
        paint.setColor(Color.rgb(220, 30, 30));
        canvas.drawOval(size / 8f, size / 8f, size / 2f, size / 2f, paint);
        paint.setColor(Color.rgb(30, 30, 220));
        canvas.drawRect(size / 2f, size / 2f, size - size / 8f, size - size / 8f, paint);
        int[] argb = new int[size * size];
        bmp.getPixels(argb, 0, size, 0, 0, size, size);
        bmp.recycle();
        return argb;
    }

    /** Linux lets a process reset its RSS high-water mark; false where the kernel refuses (peaks accumulate). */
    static boolean resetPeakRss() {
        try {
            Files.write(new File("/proc/self/clear_refs").toPath(), "5".getBytes(StandardCharsets.US_ASCII));
            return true;
        } catch (IOException | SecurityException err) {
            return false;
        }
    }

    static Double peakRssMb() {
        try {
            for (String line : Files.readAllLines(new File("/proc/self/status").toPath())) {
                if (line.startsWith("VmHWM:")) {
                    return Long.parseLong(line.replaceAll("[^0-9]", "")) / 1024.0;
                }
            }
        } catch (IOException | NumberFormatException err) {
            Log.w(TAG, "no VmHWM in /proc/self/status: " + err);
        }
        return null;
    }
}
