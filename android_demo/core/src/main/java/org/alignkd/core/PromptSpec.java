package org.alignkd.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The manifest's prompt block: the full prompt text with {@code {question}}, the image placeholder and where it
 * stands, and the stop strings (alignkd.data.templates, as build_manifest writes it).
 *
 * <p>The runtime tokenizes the two text chunks around the placeholder separately (SentencePiece, dummy prefix
 * on each) with BOS only before the first, and the image's tokens go between them: {@link #split} gives the
 * chunks, {@link #inputIds} the ids with {@link #imageTokenIndex} in the image's place, as tokenize_with_image.
 */
public final class PromptSpec {
    public static final String QUESTION = "{question}";

    public final String template;
    public final String text;
    public final String placeholder;
    public final int placeholderOffset;
    public final int imageTokenIndex;
    public final List<String> stopStrings;

    /** The prompt cut at the placeholder: text before the image and text after it. */
    public static final class Split {
        public final String beforeImage;
        public final String afterImage;

        Split(String beforeImage, String afterImage) {
            this.beforeImage = beforeImage;
            this.afterImage = afterImage;
        }
    }

    PromptSpec(String template, String text, String placeholder, int placeholderOffset, int imageTokenIndex,
               List<String> stopStrings) {
        this.template = template;
        this.text = text;
        this.placeholder = placeholder;
        this.placeholderOffset = placeholderOffset;
        this.imageTokenIndex = imageTokenIndex;
        this.stopStrings = stopStrings;
    }

    static PromptSpec fromJson(JSONObject prompt, String where) throws JSONException, BundleException {
        String text = prompt.getString("text");
        String placeholder = prompt.getString("image_placeholder");
        int offset = prompt.getInt("image_placeholder_offset");
        int first = text.indexOf(placeholder);
        // The offset counts Python characters (code points), not Java's UTF-16 units.
        if (placeholder.isEmpty() || first < 0 || first != text.lastIndexOf(placeholder)
                || text.codePointCount(0, first) != offset) {
            throw new BundleException(where + " prompt.text must hold the placeholder '" + placeholder
                    + "' exactly once, at offset " + offset + "; re-export the bundle");
        }
        if (!text.contains(QUESTION)) {
            throw new BundleException(where + " prompt.text has no " + QUESTION
                    + " for the user's question; re-export the bundle");
        }
        JSONArray stops = prompt.getJSONArray("stop_strings");
        List<String> stopStrings = new ArrayList<>();
        for (int i = 0; i < stops.length(); i++) {
            stopStrings.add(stops.getString(i));
        }
        return new PromptSpec(prompt.getString("template"), text, placeholder, offset,
                prompt.getInt("image_token_index"), Collections.unmodifiableList(stopStrings));
    }

    /** The full prompt for a question (the app supplies the image's place itself). */
    public String render(String question) throws BundleException {
        String q = question.trim();
        if (q.isEmpty()) {
            throw new BundleException("the question is empty; type a question about the photo");
        }
        if (q.contains(placeholder)) {
            throw new BundleException("the question contains " + placeholder
                    + "; remove it, the app puts the photo in its place");
        }
        // Literal replacement: a question holding "$" or "\" must not be read as a regex replacement.
        return text.replace(QUESTION, q);
    }

    public Split split(String question) throws BundleException {
        String prompt = render(question);
        int at = prompt.indexOf(placeholder);
        return new Split(prompt.substring(0, at), prompt.substring(at + placeholder.length()));
    }

    /** tokenize_with_image: chunk ids (each with BOS when addBos), BOS kept once, the image index between. */
    public List<Integer> inputIds(SentencePieceBpe tokenizer, String prompt, boolean addBos) {
        List<Integer> ids = new ArrayList<>();
        String[] chunks = prompt.split(java.util.regex.Pattern.quote(placeholder), -1);
        if (addBos) {
            ids.add(tokenizer.bosId());
        }
        for (int i = 0; i < chunks.length; i++) {
            if (i > 0) {
                ids.add(imageTokenIndex);
            }
            for (int id : tokenizer.encode(chunks[i])) {
                ids.add(id);
            }
        }
        return ids;
    }

    /** Where the text cut by a stop string ends, or -1 (generation stops there; the stop string is dropped). */
    public int stopAt(String generated) {
        int best = -1;
        for (String stop : stopStrings) {
            int at = stop.isEmpty() ? -1 : generated.indexOf(stop);
            if (at >= 0 && (best < 0 || at < best)) {
                best = at;
            }
        }
        return best;
    }
}
