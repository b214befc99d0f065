package org.alignkd.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import org.json.JSONObject;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class ManifestTest {
    @Rule
    public TemporaryFolder tmp = new TemporaryFolder();

    private static JSONObject etJson() throws Exception {
        return new JSONObject(Golden.resource("manifests/executorch_8da4w.json"));
    }

    private static String messageOf(String json) {
        try {
            Manifest.parse(json, "manifest.json");
        } catch (BundleException err) {
            return err.getMessage();
        }
        fail("the manifest was accepted");
        return null;
    }

    @Test
    public void readsTheExportersManifest() throws Exception {
        Manifest m = Golden.manifest("executorch_8da4w.json");
        assertEquals("executorch", m.target());
        assertEquals("8da4w", m.quantScheme());
        assertEquals("8da4w, group 32, 8-bit embedding, vision fp32", m.quantDescription());
        assertEquals("checkpoint", m.modelName());
        assertEquals("model.pte", m.partFile("text_decoder"));
        assertEquals("tokenizer.json", m.tokenizerFile("hf_json"));
        assertEquals(144, m.numImageTokens());
        assertEquals(1, m.specialToken("bos"));
        assertEquals(2, m.specialToken("eos"));
        assertTrue(m.addBos());
        assertEquals(72, m.image().size);
        assertEquals(122, m.image().padColour[0]);
        assertTrue(m.totalBytes() > 0);
        assertEquals("1.5.1", m.exporterVersion("executorch"));
        assertEquals(Golden.goldenJson().getString("checkpoint_sha256"), m.sourceSha256());
    }

    @Test
    public void readsACoreMlManifest() throws Exception {
        Manifest m = Golden.manifest("coreml_fp16.json");
        assertEquals("coreml", m.target());
        assertTrue(m.partFile("text_decoder").endsWith(".mlpackage"));
        try {
            m.requireTarget("executorch", "bundles/tiny");
            fail("a Core ML bundle must be refused by the ExecuTorch app");
        } catch (BundleException err) {
            assertTrue(err.getMessage(), err.getMessage().contains("--target executorch"));
        }
    }

    @Test
    public void readsAGgufManifestAndRefusesItCleanly() throws Exception {
        Manifest m = Golden.manifest("gguf_q4_k_s.json");
        assertEquals("gguf", m.target());
        assertEquals("mmproj.gguf", m.partFile("vision_encoder"));
        try {
            m.requireTarget("executorch", "bundles/tiny");
            fail("a llama.cpp bundle must be refused by the ExecuTorch app");
        } catch (BundleException err) {
            assertTrue(err.getMessage(), err.getMessage().contains("--target executorch"));
        }
    }

    @Test
    public void namesAMissingRequiredField() throws Exception {
        JSONObject j = etJson();
        j.remove("num_image_tokens");
        assertTrue(messageOf(j.toString()).contains("at num_image_tokens"));
        j = etJson();
        j.getJSONObject("prompt").remove("stop_strings");
        assertTrue(messageOf(j.toString()).contains("at prompt/stop_strings"));
        j = etJson();
        j.getJSONObject("parts").getJSONObject("vision_encoder").remove("file");
        assertTrue(messageOf(j.toString()).contains("at parts/vision_encoder/file"));
    }

    @Test
    public void refusesAnotherFormatVersion() throws Exception {
        JSONObject j = etJson();
        j.put("format_version", 2);
        assertTrue(messageOf(j.toString()).contains("format_version 2"));
    }

    @Test
    public void refusesNonJson() {
        assertTrue(messageOf("{not json").startsWith("cannot read manifest.json"));
    }

    @Test
    public void refusesAFileOutsideTheBundle() throws Exception {
        JSONObject j = etJson();
        j.getJSONObject("files").put("../../etc/passwd", new JSONObject().put("sha256", "0".repeat(64)).put("bytes", 1));
        assertTrue(messageOf(j.toString()).contains("outside the bundle folder"));
    }

    @Test
    public void refusesAPartFileMissingFromTheTable() throws Exception {
        JSONObject j = etJson();
        j.getJSONObject("files").remove("model.pte");
        assertTrue(messageOf(j.toString()).contains("'model.pte'"));
    }

    @Test
    public void refusesAPromptWithoutItsPlaceholderAtTheOffset() throws Exception {
        JSONObject j = etJson();
        j.getJSONObject("prompt").put("image_placeholder_offset", 3);
        assertTrue(messageOf(j.toString()).contains("exactly once, at offset 3"));
    }

    /** Python's offset counts code points: a character outside the BMP before the placeholder counts once. */
    @Test
    public void placeholderOffsetCountsCodePoints() throws Exception {
        JSONObject j = etJson();
        JSONObject prompt = j.getJSONObject("prompt");
        prompt.put("text", "\uD83D\uDE00 " + prompt.getString("text"));
        prompt.put("image_placeholder_offset", prompt.getInt("image_placeholder_offset") + 2);
        Manifest.parse(j.toString(), "manifest.json");
    }

    @Test
    public void refusesAnUnknownResampleFilter() throws Exception {
        JSONObject j = etJson();
        j.getJSONObject("image").put("resample", 2);
        assertTrue(messageOf(j.toString()).contains("only bicubic"));
    }

    /** A bundle folder holding the manifest's file names with made-up contents, and a table that matches them. */
    private File bundle() throws Exception {
        File dir = tmp.newFolder("bundle");
        JSONObject j = etJson();
        JSONObject files = j.getJSONObject("files");
        JSONObject table = new JSONObject();
        java.util.Iterator<String> keys = files.keys();
        while (keys.hasNext()) {
            String rel = keys.next();
            File f = new File(dir, rel);
            Files.write(f.toPath(), ("contents of " + rel).getBytes(StandardCharsets.UTF_8));
            table.put(rel, new JSONObject().put("sha256", Manifest.sha256(f)).put("bytes", f.length()));
        }
        j.put("files", table);
        Files.write(new File(dir, "manifest.json").toPath(), j.toString(2).getBytes(StandardCharsets.UTF_8));
        return dir;
    }

    @Test
    public void verifiesIntactFiles() throws Exception {
        File dir = bundle();
        Manifest.load(dir, "executorch").verifyFiles(dir);
    }

    @Test
    public void sha256OfAKnownString() throws Exception {
        File f = tmp.newFile("abc");
        Files.write(f.toPath(), "abc".getBytes(StandardCharsets.US_ASCII));
        assertEquals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", Manifest.sha256(f));
    }

    private static String verifyMessage(File dir) throws Exception {
        try {
            Manifest.load(dir, "executorch").verifyFiles(dir);
        } catch (BundleException err) {
            return err.getMessage();
        }
        fail("the bundle was accepted");
        return null;
    }

    @Test
    public void refusesAMissingFile() throws Exception {
        File dir = bundle();
        assertTrue(new File(dir, "tokenizer.model").delete());
        String msg = verifyMessage(dir);
        assertTrue(msg, msg.contains("tokenizer.model is missing"));
    }

    @Test
    public void refusesATruncatedFile() throws Exception {
        File dir = bundle();
        try (RandomAccessFile f = new RandomAccessFile(new File(dir, "model.pte"), "rw")) {
            f.setLength(f.length() - 1);
        }
        String msg = verifyMessage(dir);
        assertTrue(msg, msg.contains("model.pte has") && msg.contains("truncated or replaced"));
    }

    @Test
    public void refusesAModifiedFile() throws Exception {
        File dir = bundle();
        try (RandomAccessFile f = new RandomAccessFile(new File(dir, "model.pte"), "rw")) {
            f.seek(0);
            f.write('X');
        }
        String msg = verifyMessage(dir);
        assertTrue(msg, msg.contains("model.pte does not match its sha256"));
    }

    @Test
    public void refusesAFolderWithoutManifest() throws Exception {
        File dir = tmp.newFolder("empty");
        String msg = verifyMessage(dir);
        assertTrue(msg, msg.contains("has no manifest.json"));
    }
}
