package org.alignkd.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * A bundle's manifest.json (alignkd/contract/manifest.schema.json), read and checked the way alignkd.contract.manifest does:
 * the required fields, the format version, the target this app runs, and the sha256 and size of every file.
 *
 * <p>Only the fields an app needs are checked in depth; a full JSON Schema validator is not worth its weight
 * on a phone, and a bundle written by {@code alignkd export} has already passed the schema on the host.
 */
public final class Manifest {
    public static final int FORMAT_VERSION = 1;
    public static final String FILE_NAME = "manifest.json";
    static final String[] REQUIRED = {"format_version", "model", "target", "quant", "max_seq_len", "parts",
        "tokenizer", "special_tokens", "image", "num_image_tokens", "prompt", "files", "source", "parity", "export"};
    static final String[] PARTS = {"vision_encoder", "token_embedding", "text_decoder"};

    private final JSONObject root;
    private final ImageSpec image;
    private final PromptSpec prompt;
    private final Map<String, FileEntry> files;

    /** One row of the manifest's files table. */
    public static final class FileEntry {
        public final String sha256;
        public final long bytes;

        FileEntry(String sha256, long bytes) {
            this.sha256 = sha256;
            this.bytes = bytes;
        }
    }

    private Manifest(JSONObject root, ImageSpec image, PromptSpec prompt, Map<String, FileEntry> files) {
        this.root = root;
        this.image = image;
        this.prompt = prompt;
        this.files = files;
    }

    /** Parse and check the text of a manifest.json; {@code where} names it in errors. */
    public static Manifest parse(String json, String where) throws BundleException {
        JSONObject root;
        try {
            root = new JSONObject(json);
        } catch (JSONException err) {
            throw new BundleException("cannot read " + where + " (" + err.getMessage()
                    + "); pick a bundle folder written by `alignkd export`", err);
        }
        try {
            for (String key : REQUIRED) {
                require(root, key, where, key);
            }
            int version = root.getInt("format_version");
            if (version != FORMAT_VERSION) {
                throw new BundleException(where + " has format_version " + version + " but this app reads version "
                        + FORMAT_VERSION + "; re-export the bundle with the alignkd this app was built with");
            }
            checkNested(root, where);
            Manifest manifest = new Manifest(root, ImageSpec.fromJson(root.getJSONObject("image")),
                    PromptSpec.fromJson(root.getJSONObject("prompt"), where), readFiles(root, where));
            manifest.checkPartFilesListed(where);
            return manifest;
        } catch (JSONException err) {
            throw new BundleException(where + " does not follow the bundle schema (" + err.getMessage()
                    + "); re-export the bundle", err);
        }
    }

    /** Read {@code folder/manifest.json}, check it, and refuse a bundle of another target. */
    public static Manifest load(File folder, String expectedTarget) throws BundleException {
        File file = new File(folder, FILE_NAME);
        if (!file.isFile()) {
            throw new BundleException("bundle folder " + folder + " has no " + FILE_NAME
                    + "; copy the whole folder written by `alignkd export`");
        }
        String text;
        try {
            text = new String(Files.readAllBytes(file.toPath()), StandardCharsets.UTF_8);
        } catch (IOException err) {
            throw new BundleException("cannot read " + file + " (" + err.getMessage()
                    + "); check the app may read the folder", err);
        }
        Manifest manifest = parse(text, file.toString());
        manifest.requireTarget(expectedTarget, folder.toString());
        return manifest;
    }

    public void requireTarget(String expected, String where) throws BundleException {
        if (!target().equals(expected)) {
            throw new BundleException("bundle " + where + " is a " + target() + " bundle but this app runs "
                    + expected + " bundles; export one with `alignkd export --target " + expected + "`");
        }
    }

    private static void require(JSONObject obj, String key, String where, String path) throws BundleException {
        if (!obj.has(key) || obj.isNull(key)) {
            throw new BundleException(where + " does not follow the bundle schema at " + path
                    + ": the field is missing; re-export the bundle");
        }
    }

    private static void requireAll(JSONObject obj, String where, String path, String... keys)
            throws BundleException {
        for (String key : keys) {
            require(obj, key, where, path + "/" + key);
        }
    }

    private static void checkNested(JSONObject root, String where) throws JSONException, BundleException {
        JSONObject parts = root.getJSONObject("parts");
        for (String part : PARTS) {
            require(parts, part, where, "parts/" + part);
            requireAll(parts.getJSONObject(part), where, "parts/" + part, "file", "inputs", "outputs", "quant");
        }
        JSONObject tokenizer = root.getJSONObject("tokenizer");
        requireAll(tokenizer, where, "tokenizer", "files", "vocab_size", "add_bos");
        requireAll(tokenizer.getJSONObject("files"), where, "tokenizer/files", "sentencepiece", "hf_json");
        requireAll(root.getJSONObject("special_tokens"), where, "special_tokens", "bos", "eos", "unk", "pad");
        requireAll(root.getJSONObject("image"), where, "image", "size", "mean", "std", "resample",
                "rescale_factor", "aspect_ratio", "pad_colour");
        requireAll(root.getJSONObject("prompt"), where, "prompt", "template", "text", "image_placeholder",
                "image_placeholder_offset", "image_token_index", "stop_strings");
        requireAll(root.getJSONObject("quant"), where, "quant", "scheme");
        requireAll(root.getJSONObject("source"), where, "source", "checkpoint", "sha256");
        requireAll(root.getJSONObject("parity"), where, "parity", "measured", "passed");
        String target = root.getString("target");
        if (!target.equals("executorch") && !target.equals("onnx") && !target.equals("coreml")
                && !target.equals("gguf")) {
            throw new BundleException(where + " has target '" + target
                    + "'; valid targets: executorch, onnx, coreml, gguf; re-export the bundle");
        }
    }

    private static Map<String, FileEntry> readFiles(JSONObject root, String where)
            throws JSONException, BundleException {
        JSONObject table = root.getJSONObject("files");
        Map<String, FileEntry> files = new LinkedHashMap<>();
        Iterator<String> keys = table.keys();
        while (keys.hasNext()) {
            String rel = keys.next();
            if (rel.startsWith("/") || rel.equals("..") || rel.startsWith("../") || rel.contains("/../")) {
                // A path leaving the bundle folder would let a manifest point the app at any file.
                throw new BundleException(where + " lists file '" + rel
                        + "' outside the bundle folder; re-export the bundle");
            }
            JSONObject entry = table.getJSONObject(rel);
            requireAll(entry, where, "files/" + rel, "sha256", "bytes");
            String sha = entry.getString("sha256");
            if (!sha.matches("[0-9a-f]{64}")) {
                throw new BundleException(where + " has a malformed sha256 for file '" + rel
                        + "'; re-export the bundle");
            }
            files.put(rel, new FileEntry(sha, entry.getLong("bytes")));
        }
        if (files.isEmpty()) {
            throw new BundleException(where + " lists no files; re-export the bundle");
        }
        return files;
    }

    /** Every part's and tokenizer's file must be in the files table (Core ML parts are folders: a prefix). */
    private void checkPartFilesListed(String where) throws BundleException {
        List<String> needed = new ArrayList<>();
        for (String part : PARTS) {
            needed.add(partFile(part));
        }
        needed.add(tokenizerFile("sentencepiece"));
        needed.add(tokenizerFile("hf_json"));
        for (String rel : needed) {
            boolean listed = files.containsKey(rel);
            for (String key : files.keySet()) {
                listed |= key.startsWith(rel + "/");
            }
            if (!listed) {
                throw new BundleException(where + " names '" + rel
                        + "' but its files table does not list it; re-export the bundle");
            }
        }
    }

    /** Refuse a missing, truncated or modified file, naming it (alignkd.contract.manifest.verify_files). */
    public void verifyFiles(File folder) throws BundleException {
        for (Map.Entry<String, FileEntry> e : files.entrySet()) {
            File file = new File(folder, e.getKey());
            if (!file.isFile()) {
                throw new BundleException("bundle file " + file
                        + " is missing; copy the whole bundle folder again or re-export it");
            }
            if (file.length() != e.getValue().bytes) {
                throw new BundleException("bundle file " + file + " has " + file.length()
                        + " bytes but the manifest says " + e.getValue().bytes
                        + " (truncated or replaced); copy it again or re-export the bundle");
            }
            if (!sha256(file).equals(e.getValue().sha256)) {
                throw new BundleException("bundle file " + file
                        + " does not match its sha256 in the manifest (modified or corrupt); copy it again or"
                        + " re-export the bundle");
            }
        }
    }

    public static String sha256(File file) throws BundleException {
        MessageDigest digest;
        try {
            digest = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException err) {
            throw new IllegalStateException("SHA-256 is part of every Java platform", err);
        }
        byte[] buffer = new byte[1 << 20];
        try (InputStream in = new FileInputStream(file)) {
            int n;
            while ((n = in.read(buffer)) > 0) {
                digest.update(buffer, 0, n);
            }
        } catch (IOException err) {
            throw new BundleException("cannot read bundle file " + file + " (" + err.getMessage()
                    + "); copy it again", err);
        }
        StringBuilder hex = new StringBuilder();
        for (byte b : digest.digest()) {
            hex.append(String.format(Locale.ROOT, "%02x", b & 0xff));
        }
        return hex.toString();
    }

    public String target() {
        return root.optString("target");
    }

    public ImageSpec image() {
        return image;
    }

    public PromptSpec prompt() {
        return prompt;
    }

    public Map<String, FileEntry> files() {
        return files;
    }

    public int maxSeqLen() {
        return root.optInt("max_seq_len");
    }

    public int numImageTokens() {
        return root.optInt("num_image_tokens");
    }

    public String partFile(String part) {
        return root.optJSONObject("parts").optJSONObject(part).optString("file");
    }

    /** {@code kind}: "sentencepiece" (tokenizer.model) or "hf_json" (tokenizer.json). */
    public String tokenizerFile(String kind) {
        return root.optJSONObject("tokenizer").optJSONObject("files").optString(kind);
    }

    public boolean addBos() {
        return root.optJSONObject("tokenizer").optBoolean("add_bos", true);
    }

    public int specialToken(String name) {
        return root.optJSONObject("special_tokens").optInt(name);
    }

    public String quantScheme() {
        return root.optJSONObject("quant").optString("scheme");
    }

    /** "8da4w, group 32, 8-bit embedding" style description of the quant block. */
    public String quantDescription() {
        JSONObject quant = root.optJSONObject("quant");
        StringBuilder out = new StringBuilder(quant.optString("scheme"));
        if (quant.has("group_size")) {
            out.append(", group ").append(quant.optInt("group_size"));
        }
        if (quant.has("embedding_bits") && !quant.isNull("embedding_bits")) {
            out.append(", ").append(quant.optInt("embedding_bits")).append("-bit embedding");
        }
        if (quant.has("vision")) {
            out.append(", vision ").append(quant.optString("vision"));
        }
        return out.toString();
    }

    /** The checkpoint folder's name, which is what a user called the model. */
    public String modelName() {
        String path = root.optJSONObject("source").optString("checkpoint").replace('\\', '/');
        while (path.endsWith("/")) {
            path = path.substring(0, path.length() - 1);
        }
        String name = path.substring(path.lastIndexOf('/') + 1);
        return name.isEmpty() ? root.optJSONObject("model").optString("family") : name;
    }

    /** The sha256 of the checkpoint the bundle was exported from (alignkd.export.manifest.checkpoint_hash). */
    public String sourceSha256() {
        return root.optJSONObject("source").optString("sha256");
    }

    public long totalBytes() {
        long total = 0;
        for (FileEntry e : files.values()) {
            total += e.bytes;
        }
        return total;
    }

    /** Bundle size in MiB, as alignkd profile's size_mb. */
    public double sizeMb() {
        return totalBytes() / (double) (1 << 20);
    }

    /** The version of a package the bundle was exported with (export.versions), or "" when not recorded. */
    public String exporterVersion(String pkg) {
        JSONObject export = root.optJSONObject("export");
        JSONObject versions = export == null ? null : export.optJSONObject("versions");
        return versions == null ? "" : versions.optString(pkg, "");
    }

    public boolean parityPassed() {
        return root.optJSONObject("parity").optBoolean("passed");
    }

    JSONArray partInputs(String part) {
        return root.optJSONObject("parts").optJSONObject(part).optJSONArray("inputs");
    }
}
