package org.alignkd.demo;

import android.os.SystemClock;
import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import org.alignkd.core.BenchmarkPrompt;
import org.alignkd.core.BundleException;
import org.alignkd.core.ImagePreprocessor;
import org.alignkd.core.Manifest;
import org.alignkd.core.PromptSpec;
import org.alignkd.core.SentencePieceBpe;
import org.pytorch.executorch.extension.llm.LlmCallback;
import org.pytorch.executorch.extension.llm.LlmModule;

/**
 * One loaded bundle on ExecuTorch's LlmModule in multimodal mode: the only class that touches ExecuTorch, so an
 * API change of executorch-android is one file to adapt.
 *
 * <p>A question runs as the manifest says: the text before the placeholder is prefilled, then the image as float
 * CHW pixels preprocessed per manifest.image (our vision encoder takes float pixels, so the float image call),
 * then generate() prefills the text after the placeholder and streams new tokens; generation stops at eos, at a
 * manifest stop string, or after maxNewTokens.
 */
final class EtSession implements AutoCloseable {
    /** Wall-clock timings of one answer, in the profile JSON's terms. */
    static final class Timings {
        double visionEncodeS;  // the image call: vision encoder plus the decoder's prefill of the image tokens
        double prefillS;       // text prefill before and after the image, up to the first new token
        double ttftS;          // first prefill call to first token
        double decodeS;        // first token to the last
        int prefillTokens;     // text ids (the core's tokenizer, the bundle's tokenizer.model) plus image tokens
        int generatedTokens;
        String stopReason = "max_new_tokens";
    }

    interface Listener {
        void onText(String textSoFar);
    }

    final File folder;
    final Manifest manifest;
    final ImagePreprocessor preprocessor;
    final SentencePieceBpe tokenizer;
    private final LlmModule module;
    final double loadS;

    private EtSession(File folder, Manifest manifest, SentencePieceBpe tokenizer, LlmModule module, double loadS) {
        this.folder = folder;
        this.manifest = manifest;
        this.preprocessor = new ImagePreprocessor(manifest.image());
        this.tokenizer = tokenizer;
        this.module = module;
        this.loadS = loadS;
    }

    /**
     * Read the manifest (checked: fields, format version, target), with {@code verify} also every file's size and
     * sha256, and load the bundle; the load itself is timed (the hashing is not).
     */
    static EtSession open(File folder, boolean verify) throws BundleException {
        Manifest manifest = Manifest.load(folder, "executorch");
        if (verify) {
            manifest.verifyFiles(folder);
        }
        File pte = new File(folder, manifest.partFile("text_decoder"));
        // ExecuTorch's runners read the HF tokenizer.json the exporter writes for them (legacy LLaMA layout).
        File tokenizer = new File(folder, manifest.tokenizerFile("hf_json"));
        long t0 = SystemClock.elapsedRealtimeNanos();
        SentencePieceBpe spm = readTokenizer(new File(folder, manifest.tokenizerFile("sentencepiece")));
        LlmModule module;
        try {
            module = new LlmModule(LlmModule.MODEL_TYPE_MULTIMODAL, pte.getPath(), tokenizer.getPath(), 0.0f);
            module.load();
        } catch (RuntimeException err) {
            throw new BundleException("ExecuTorch could not load " + pte + " (" + err.getMessage()
                    + "); check the bundle was exported with executorch " + BuildConfig.EXECUTORCH_VERSION, err);
        }
        double loadS = (SystemClock.elapsedRealtimeNanos() - t0) / 1e9;
        return new EtSession(folder, manifest, spm, module, loadS);
    }

    /** The core's own tokenizer: counts prompt positions and fits the benchmark question as the host does. */
    private static SentencePieceBpe readTokenizer(File file) throws BundleException {
        try {
            return SentencePieceBpe.load(Files.readAllBytes(file.toPath()));
        } catch (IOException err) {
            throw new BundleException("cannot read " + file + " (" + err.getMessage() + "); copy the bundle again",
                    err);
        }
    }

    /** Prefill positions of the full prompt for {@code question}: text ids plus the image tokens. */
    int positions(String question) throws BundleException {
        return BenchmarkPrompt.positions(manifest.prompt(), tokenizer, manifest.addBos(), question,
                manifest.numImageTokens());
    }

    /** Greedy answer to {@code question} about preprocessed {@code pixels}; streams text to {@code listener}. */
    Timings ask(float[] pixels, String question, int maxNewTokens, Listener listener) throws BundleException {
        PromptSpec prompt = manifest.prompt();
        int promptTokens = positions(question);
        if (promptTokens >= manifest.maxSeqLen()) {
            throw new BundleException("the prompt takes " + promptTokens + " positions (text plus image tokens) but"
                    + " the model's context is " + manifest.maxSeqLen() + "; shorten the question");
        }
        PromptSpec.Split split = prompt.split(question);
        int size = preprocessor.size();
        Timings t = new Timings();
        t.prefillTokens = promptTokens;
        StringBuilder text = new StringBuilder();
        long[] firstToken = {0};
        long start;
        long imageEnd;
        try {
            module.resetContext();
            start = SystemClock.elapsedRealtimeNanos();
            module.prefillPrompt(split.beforeImage);
            long imageStart = SystemClock.elapsedRealtimeNanos();
            module.prefillImages(pixels, size, size, 3);
            imageEnd = SystemClock.elapsedRealtimeNanos();
            t.visionEncodeS = (imageEnd - imageStart) / 1e9;
            int seqLen = Math.min(manifest.maxSeqLen(), promptTokens + maxNewTokens);
            module.generate(split.afterImage, seqLen, new LlmCallback() {
                @Override
                public void onResult(String piece) {
                    if (firstToken[0] == 0) {
                        firstToken[0] = SystemClock.elapsedRealtimeNanos();
                    }
                    t.generatedTokens++;
                    text.append(piece);
                    int stop = prompt.stopAt(text.toString());
                    if (stop >= 0) {
                        text.setLength(stop);
                        t.stopReason = "stop_string";
                        module.stop();
                    } else if (t.generatedTokens >= maxNewTokens) {
                        module.stop();
                    }
                    listener.onText(text.toString());
                }
            }, false);
        } catch (RuntimeException err) {
            throw new BundleException("ExecuTorch failed while answering (" + err.getMessage()
                    + "); re-export the bundle with executorch " + BuildConfig.EXECUTORCH_VERSION, err);
        }
        long end = SystemClock.elapsedRealtimeNanos();
        long first = firstToken[0] == 0 ? end : firstToken[0];
        t.ttftS = (first - start) / 1e9;
        t.prefillS = t.ttftS - t.visionEncodeS;
        t.decodeS = (end - first) / 1e9;
        if (t.generatedTokens < maxNewTokens && !t.stopReason.equals("stop_string")) {
            t.stopReason = "eos";
        }
        return t;
    }

    void stop() {
        module.stop();
    }

    @Override
    public void close() {
        module.resetNative();  // close() in newer releases; resetNative() frees the runner in all of them
    }
}
