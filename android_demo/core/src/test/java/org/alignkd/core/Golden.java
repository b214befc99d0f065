package org.alignkd.core;

import java.awt.image.BufferedImage;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.imageio.ImageIO;
import org.json.JSONArray;
import org.json.JSONObject;

/** The repository's shared vectors (export/golden/, the tiny fixture's tokenizer), read in place. */
final class Golden {
    private Golden() {}

    static File root() {
        String root = System.getProperty("alignkd.root");
        if (root == null) {
            throw new IllegalStateException("run through android_demo/core/test.sh (it sets -Dalignkd.root)");
        }
        return new File(root);
    }

    static File golden(String name) {
        return new File(new File(root(), "export/golden"), name);
    }

    static File tokenizerModel() {
        return new File(root(), "tests/fixtures/mobilevlm_official_tiny/checkpoint/tokenizer.model");
    }

    static String text(File file) throws IOException {
        return new String(Files.readAllBytes(file.toPath()), StandardCharsets.UTF_8);
    }

    static String resource(String name) throws IOException {
        return text(golden(name));
    }

    static JSONObject goldenJson() throws Exception {
        return new JSONObject(text(golden("golden.json")));
    }

    static List<JSONObject> pairs() throws Exception {
        JSONArray a = goldenJson().getJSONArray("pairs");
        List<JSONObject> out = new ArrayList<>();
        for (int i = 0; i < a.length(); i++) {
            out.add(a.getJSONObject(i));
        }
        return out;
    }

    static List<Integer> ints(JSONArray a) throws Exception {
        List<Integer> out = new ArrayList<>();
        for (int i = 0; i < a.length(); i++) {
            out.add(a.getInt(i));
        }
        return out;
    }

    static SentencePieceBpe tokenizer() throws Exception {
        return SentencePieceBpe.load(Files.readAllBytes(tokenizerModel().toPath()));
    }

    static Manifest manifest(String name) throws Exception {
        return Manifest.parse(resource("manifests/" + name), name);
    }

    /** Decoded pixels as ARGB ints, the form Android's Bitmap.getPixels gives the app. */
    static int[] argb(File png, int[] sizeOut) throws IOException {
        BufferedImage img = ImageIO.read(png);
        int w = img.getWidth();
        int h = img.getHeight();
        sizeOut[0] = w;
        sizeOut[1] = h;
        return img.getRGB(0, 0, w, h, null, 0, w);
    }

    /** A little-endian float32 .npy array, flattened (C order); shapeOut gets the shape. */
    static float[] npy(File file, List<Integer> shapeOut) throws IOException {
        ByteBuffer buf = ByteBuffer.wrap(Files.readAllBytes(file.toPath())).order(ByteOrder.LITTLE_ENDIAN);
        byte[] magic = new byte[6];
        buf.get(magic);
        if (!new String(magic, StandardCharsets.ISO_8859_1).equals("\u0093NUMPY")) {
            throw new IOException(file + " is not a .npy file");
        }
        int major = buf.get();
        buf.get();
        int headerLen = major == 1 ? buf.getShort() & 0xffff : buf.getInt();
        byte[] header = new byte[headerLen];
        buf.get(header);
        String h = new String(header, StandardCharsets.ISO_8859_1);
        if (!h.contains("'descr': '<f4'") || !h.contains("'fortran_order': False")) {
            throw new IOException(file + " is not a C-order little-endian float32 array: " + h);
        }
        Matcher m = Pattern.compile("'shape': \\(([^)]*)\\)").matcher(h);
        if (!m.find()) {
            throw new IOException(file + " has no shape: " + h);
        }
        int n = 1;
        for (String d : m.group(1).split(",")) {
            if (!d.trim().isEmpty()) {
                shapeOut.add(Integer.parseInt(d.trim()));
                n *= Integer.parseInt(d.trim());
            }
        }
        float[] out = new float[n];
        buf.asFloatBuffer().get(out);
        return out;
    }
}
