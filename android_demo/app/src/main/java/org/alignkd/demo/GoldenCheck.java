package org.alignkd.demo;

import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.util.Log;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import org.alignkd.core.BundleException;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * On-phone check against export/golden/ (pushed as a folder): each pair's photo and question through the whole
 * app path (decode, preprocessing, prompt split, ExecuTorch) with greedy decoding, the answer compared with
 * golden.json's expected_text (Python's answer for the tiny fixture). Only meaningful for a bundle of the
 * tiny fixture checkpoint (golden.json's checkpoint_sha256 equals the manifest's source sha256).
 */
final class GoldenCheck {
    static final String OUTPUT = "alignkd_golden_check.json";

    private GoldenCheck() {}

    static File run(EtSession session, File goldenDir, File outDir, Benchmark.Progress progress)
            throws BundleException {
        try {
            JSONObject golden = new JSONObject(new String(
                    Files.readAllBytes(new File(goldenDir, "golden.json").toPath()), StandardCharsets.UTF_8));
            JSONArray pairs = golden.getJSONArray("pairs");
            int maxNewTokens = golden.getJSONObject("decoding").getInt("max_new_tokens");
            JSONArray results = new JSONArray();
            int matched = 0;
            for (int i = 0; i < pairs.length(); i++) {
                JSONObject pair = pairs.getJSONObject(i);
                Bitmap bmp = BitmapFactory.decodeFile(new File(goldenDir, pair.getString("image")).getPath());
                if (bmp == null) {
                    throw new BundleException("cannot decode " + pair.getString("image") + " in " + goldenDir
                            + "; push export/golden/ whole");
                }
                int w = bmp.getWidth();
                int h = bmp.getHeight();
                int[] argb = new int[w * h];
                bmp.getPixels(argb, 0, w, 0, 0, w, h);
                float[] pixels = session.preprocessor.process(argb, w, h);
                StringBuilder text = new StringBuilder();
                EtSession.Timings t = session.ask(pixels, pair.getString("question"), maxNewTokens, s -> {
                    text.setLength(0);
                    text.append(s);
                });
                boolean match = text.toString().strip().equals(pair.getString("expected_text").strip());
                matched += match ? 1 : 0;
                results.put(new JSONObject().put("image", pair.getString("image")).put("match", match)
                        .put("text", text.toString()).put("expected_text", pair.getString("expected_text"))
                        .put("prefill_tokens", t.prefillTokens).put("golden_prefill_ids",
                                pair.getJSONArray("input_ids").length()));
                progress.onProgress(pair.getString("image") + ": " + (match ? "same answer as Python" : "DIFFERS"));
            }
            JSONObject out = new JSONObject().put("matched", matched).put("pairs", pairs.length())
                    .put("same_checkpoint", golden.getString("checkpoint_sha256")
                            .equals(session.manifest.sourceSha256()))
                    .put("results", results);
            File file = new File(outDir, OUTPUT);
            Files.write(file.toPath(), out.toString(1).getBytes(StandardCharsets.UTF_8));
            Log.i(Benchmark.TAG, "ALIGNKD_GOLDEN " + file + " matched " + matched + "/" + pairs.length());
            return file;
        } catch (IOException | JSONException err) {
            throw new BundleException("cannot run the golden check from " + goldenDir + " (" + err.getMessage()
                    + "); push export/golden/ whole and pass its folder", err);
        }
    }
}
