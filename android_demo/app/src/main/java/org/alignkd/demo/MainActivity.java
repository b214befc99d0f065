package org.alignkd.demo;

import android.app.Activity;
import android.app.AlertDialog;
import android.content.ContentValues;
import android.content.Intent;
import android.graphics.Bitmap;
import android.graphics.ImageDecoder;
import android.net.Uri;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.provider.MediaStore;
import android.util.Log;
import android.widget.Button;
import android.widget.EditText;
import android.widget.ImageView;
import android.widget.TextView;
import java.io.File;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.alignkd.core.BundleException;
import org.alignkd.core.Manifest;

/**
 * The screen: pick a bundle, a photo and a question, stream the answer with its timings; a Benchmark button and
 * intent extras for scripted runs. Every decision about the bundle is the core's (org.alignkd.core) or
 * EtSession's; this class only wires them to the views and keeps model work off the UI thread.
 *
 * <pre>
 * adb shell am start -n org.alignkd.demo/.MainActivity --es bundle /data/local/tmp/alignkd/tiny_et \
 *     --ez benchmark true --ei runs 5 --ei warmup 1 --ei max_new_tokens 32
 * adb shell am start -n org.alignkd.demo/.MainActivity --es bundle ... --es golden /data/local/tmp/alignkd/golden
 * </pre>
 */
public final class MainActivity extends Activity {
    static final String EXTRA_BUNDLE = "bundle";
    static final String EXTRA_BENCHMARK = "benchmark";
    static final String EXTRA_GOLDEN = "golden";
    static final String LOCAL_TMP = "/data/local/tmp/alignkd";
    private static final int PICK_PHOTO = 1;
    private static final int TAKE_PHOTO = 2;
    private static final int MAX_NEW_TOKENS = 256;

    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private final Handler ui = new Handler(Looper.getMainLooper());
    // Written on the worker thread, read on the UI thread.
    private volatile EtSession session;
    private volatile File bundleFolder;
    private volatile String openError;  // why the last bundle did not open; a scripted benchmark must not run on an older one
    private Bitmap photo;
    private Uri cameraUri;
    private TextView bundleInfo;
    private TextView answer;
    private TextView stats;
    private ImageView photoView;
    private EditText question;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        setContentView(R.layout.activity_main);
        bundleInfo = findViewById(R.id.bundle_info);
        answer = findViewById(R.id.answer);
        stats = findViewById(R.id.stats);
        photoView = findViewById(R.id.photo);
        question = findViewById(R.id.question);
        ((Button) findViewById(R.id.bundle_button)).setOnClickListener(v -> chooseBundle());
        ((Button) findViewById(R.id.gallery_button)).setOnClickListener(v -> pickPhoto());
        ((Button) findViewById(R.id.camera_button)).setOnClickListener(v -> takePhoto());
        ((Button) findViewById(R.id.ask_button)).setOnClickListener(v -> ask());
        ((Button) findViewById(R.id.stop_button)).setOnClickListener(v -> {
            if (session != null) {
                session.stop();
            }
        });
        ((Button) findViewById(R.id.benchmark_button)).setOnClickListener(v -> benchmark(getIntent()));
        bundleInfo.setText(getString(R.string.no_bundle, bundlesDir()));
        handleIntent(getIntent());
    }

    @Override
    protected void onNewIntent(Intent intent) {
        super.onNewIntent(intent);
        setIntent(intent);
        handleIntent(intent);
    }

    private void handleIntent(Intent intent) {
        String path = intent.getStringExtra(EXTRA_BUNDLE);
        if (path == null) {
            return;
        }
        openBundle(new File(path));
        if (intent.getBooleanExtra(EXTRA_BENCHMARK, false)) {
            benchmark(intent);
        } else if (intent.getStringExtra(EXTRA_GOLDEN) != null) {
            goldenCheck(new File(intent.getStringExtra(EXTRA_GOLDEN)));
        }
    }

    File bundlesDir() {
        File dir = new File(getExternalFilesDir(null), "bundles");
        dir.mkdirs();
        return dir;
    }

    File outputDir() {
        File dir = getExternalFilesDir(null);
        return dir != null ? dir : getFilesDir();
    }

    /** Folders holding a manifest.json, in the app's bundles folder and in /data/local/tmp/alignkd. */
    private List<File> bundleFolders() {
        List<File> found = new ArrayList<>();
        for (File root : new File[] {bundlesDir(), new File(LOCAL_TMP)}) {
            File[] children = root.listFiles();
            if (new File(root, Manifest.FILE_NAME).isFile()) {
                found.add(root);
            }
            if (children != null) {
                for (File child : children) {
                    if (new File(child, Manifest.FILE_NAME).isFile()) {
                        found.add(child);
                    }
                }
            }
        }
        return found;
    }

    private void chooseBundle() {
        List<File> folders = bundleFolders();
        if (folders.isEmpty()) {
            bundleInfo.setText(getString(R.string.no_bundle, bundlesDir()));
            return;
        }
        String[] names = new String[folders.size()];
        for (int i = 0; i < names.length; i++) {
            names[i] = folders.get(i).getPath();
        }
        new AlertDialog.Builder(this).setTitle(R.string.choose_bundle)
                .setItems(names, (dialog, which) -> openBundle(folders.get(which))).show();
    }

    private void openBundle(File folder) {
        bundleInfo.setText("checking " + folder + " (sha256 of every file) ...");
        worker.execute(() -> {
            try {
                EtSession opened = EtSession.open(folder, true);
                if (session != null) {
                    session.close();
                }
                session = opened;
                bundleFolder = folder;
                openError = null;
                Manifest m = opened.manifest;
                String exported = m.exporterVersion("executorch");
                String warning = exported.isEmpty() || exported.equals(BuildConfig.EXECUTORCH_VERSION) ? ""
                        : "\nwarning: exported with executorch " + exported + ", app built with "
                        + BuildConfig.EXECUTORCH_VERSION;
                String info = String.format(Locale.ROOT, "%s\n%s · %s · %.1f MB · %d image tokens · context %d\n"
                                + "verified %d files, loaded in %.2f s%s", folder, m.modelName(), m.quantDescription(),
                        m.sizeMb(), m.numImageTokens(), m.maxSeqLen(), m.files().size(), opened.loadS, warning);
                ui.post(() -> bundleInfo.setText(info));
            } catch (BundleException err) {
                openError = err.getMessage();
                ui.post(() -> bundleInfo.setText(err.getMessage()));
            }
        });
    }

    private void pickPhoto() {
        Intent intent = new Intent(Intent.ACTION_GET_CONTENT).setType("image/*");
        startActivityForResult(Intent.createChooser(intent, getString(R.string.gallery)), PICK_PHOTO);
    }

    private void takePhoto() {
        // The camera app writes a full-size photo into a MediaStore entry the app owns (no storage permission).
        ContentValues values = new ContentValues();
        values.put(MediaStore.Images.Media.DISPLAY_NAME, "alignkd_" + System.currentTimeMillis() + ".jpg");
        values.put(MediaStore.Images.Media.MIME_TYPE, "image/jpeg");
        cameraUri = getContentResolver().insert(MediaStore.Images.Media.EXTERNAL_CONTENT_URI, values);
        startActivityForResult(new Intent(MediaStore.ACTION_IMAGE_CAPTURE).putExtra(MediaStore.EXTRA_OUTPUT, cameraUri),
                TAKE_PHOTO);
    }

    @Override
    protected void onActivityResult(int request, int result, Intent data) {
        super.onActivityResult(request, result, data);
        if (result != RESULT_OK) {
            return;
        }
        Uri uri = request == PICK_PHOTO && data != null ? data.getData() : cameraUri;
        if (uri == null) {
            return;
        }
        try {
            photo = decode(uri);
            photoView.setImageBitmap(photo);
        } catch (IOException err) {
            answer.setText("cannot decode the photo (" + err.getMessage() + "); pick a JPEG or PNG image");
        }
    }

    /** A software ARGB bitmap, EXIF rotation applied by ImageDecoder. */
    private Bitmap decode(Uri uri) throws IOException {
        ImageDecoder.Source source = ImageDecoder.createSource(getContentResolver(), uri);
        return ImageDecoder.decodeBitmap(source, (decoder, info, src) -> {
            decoder.setAllocator(ImageDecoder.ALLOCATOR_SOFTWARE);
            decoder.setMutableRequired(false);
        }).copy(Bitmap.Config.ARGB_8888, false);
    }

    private void ask() {
        EtSession current = session;
        Bitmap picture = photo;
        if (current == null || picture == null) {
            answer.setText(current == null ? "choose a bundle first (Bundle button)" : "choose or take a photo first");
            return;
        }
        String q = question.getText().toString();
        answer.setText("");
        stats.setText("");
        worker.execute(() -> {
            try {
                int w = picture.getWidth();
                int h = picture.getHeight();
                int[] argb = new int[w * h];
                picture.getPixels(argb, 0, w, 0, 0, w, h);
                long t0 = System.nanoTime();
                float[] pixels = current.preprocessor.process(argb, w, h);
                double preprocessS = (System.nanoTime() - t0) / 1e9;
                EtSession.Timings t = current.ask(pixels, q, MAX_NEW_TOKENS, text -> ui.post(() -> answer.setText(text)));
                double decodeRate = t.decodeS > 0 ? Math.max(t.generatedTokens - 1, 0) / t.decodeS : 0;
                String line = String.format(Locale.ROOT, "preprocess %.3f s · vision encode %.3f s · TTFT %.3f s\n"
                                + "prefill %d positions · decode %d tokens at %.1f tok/s · stop: %s",
                        preprocessS, t.visionEncodeS, t.ttftS, t.prefillTokens, t.generatedTokens, decodeRate,
                        t.stopReason);
                ui.post(() -> stats.setText(line));
            } catch (BundleException err) {
                ui.post(() -> answer.setText(err.getMessage()));
            }
        });
    }

    private void benchmark(Intent intent) {
        int runs = intent.getIntExtra("runs", 5);
        int warmup = intent.getIntExtra("warmup", 1);
        int maxNewTokens = intent.getIntExtra("max_new_tokens", 32);
        worker.execute(() -> {
            File folder = bundleFolder;
            String why = openError;  // same worker thread as openBundle: its result is known here
            if (why != null) {
                Log.e(Benchmark.TAG, "ALIGNKD_PROFILE_ERROR " + why);
                ui.post(() -> stats.setText(why));
                return;
            }
            if (folder == null) {
                Log.e(Benchmark.TAG, "ALIGNKD_PROFILE_ERROR no bundle is open; pass --es bundle PATH");
                ui.post(() -> stats.setText("choose a bundle first (Bundle button or --es bundle PATH)"));
                return;
            }
            if (session != null) {
                session.close();  // the benchmark loads the bundle afresh each round
                session = null;
            }
            try {
                File out = Benchmark.run(folder, runs, warmup, maxNewTokens, outputDir(),
                        line -> ui.post(() -> stats.append(line + "\n")));
                ui.post(() -> stats.append("wrote " + out + "\n"));
            } catch (BundleException err) {
                // scripted runs (alignkd profile --device android --from-app) wait for this line or the JSON
                Log.e(Benchmark.TAG, "ALIGNKD_PROFILE_ERROR " + err.getMessage());
                ui.post(() -> stats.append(err.getMessage() + "\n"));
            }
        });
    }

    private void goldenCheck(File goldenDir) {
        worker.execute(() -> {
            EtSession current = session;
            if (current == null) {
                return;  // openBundle ran first on this worker; a failure is already on screen
            }
            try {
                File out = GoldenCheck.run(current, goldenDir, outputDir(),
                        line -> ui.post(() -> stats.append(line + "\n")));
                ui.post(() -> stats.append("wrote " + out + "\n"));
            } catch (BundleException err) {
                ui.post(() -> stats.append(err.getMessage() + "\n"));
            }
        });
    }

    @Override
    protected void onDestroy() {
        worker.execute(() -> {
            if (session != null) {
                session.close();
            }
        });
        worker.shutdown();
        super.onDestroy();
    }
}
