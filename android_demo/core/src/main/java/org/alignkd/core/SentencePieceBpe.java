package org.alignkd.core;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * A SentencePiece BPE tokenizer read from tokenizer.model, for the LLaMA-style models alignkd exports (BPE,
 * identity normaliser, dummy prefix, byte fallback), with alignkd.data.tokenizer's legacy chunking.
 *
 * <p>The model file is a protobuf (sentencepiece_model.proto): pieces with score and type, the trainer spec
 * (model type, byte fallback) and the normaliser spec (dummy prefix). {@link #encode} follows
 * sentencepiece's bpe_model.cc: text -> "▁"-escaped characters, then repeatedly merge the adjacent pair
 * whose joined piece has the highest score (ties: leftmost), then pieces -> ids, unknown ones as UTF-8 byte
 * pieces. The Swift core (ios_demo/AlignKDCore) implements the same steps; this one is tested against the
 * prompt ids in export/golden/.
 */
public final class SentencePieceBpe {
    static final String SPACE = "\u2581";
    static final int NORMAL = 1;
    static final int UNKNOWN = 2;
    static final int CONTROL = 3;
    static final int USER_DEFINED = 4;
    static final int UNUSED = 5;
    static final int BYTE = 6;
    static final int MODEL_BPE = 2;

    private final String[] pieces;
    private final float[] scores;
    private final int[] types;
    private final Map<String, Integer> mergeable = new HashMap<>();
    private final Map<String, Integer> special = new HashMap<>();
    private final int[] byteIds = new int[256];
    private final boolean addDummyPrefix;
    private final boolean byteFallback;
    private final int unkId;
    private final int bosId;
    private final int eosId;

    private SentencePieceBpe(ModelProto proto) throws BundleException {
        if (proto.modelType != MODEL_BPE) {
            throw new BundleException("tokenizer.model is a SentencePiece model of type " + proto.modelType
                    + " but this app reads BPE models (type 2, the LLaMA tokenizer); re-export the bundle");
        }
        if (!proto.normalizerName.isEmpty() && !proto.normalizerName.equals("identity")) {
            throw new BundleException("tokenizer.model uses the '" + proto.normalizerName
                    + "' normaliser but this app implements only 'identity' (the LLaMA tokenizer's)");
        }
        int n = proto.pieces.size();
        pieces = proto.pieces.toArray(new String[0]);
        scores = new float[n];
        types = new int[n];
        java.util.Arrays.fill(byteIds, -1);
        for (int i = 0; i < n; i++) {
            scores[i] = proto.scores.get(i);
            types[i] = proto.types.get(i);
            if (types[i] == NORMAL || types[i] == USER_DEFINED) {
                mergeable.put(pieces[i], i);
            } else if (types[i] == BYTE && pieces[i].length() == 6) {
                byteIds[Integer.parseInt(pieces[i].substring(3, 5), 16)] = i;
            }
        }
        addDummyPrefix = proto.addDummyPrefix;
        byteFallback = proto.byteFallback;
        unkId = proto.unkId;
        bosId = proto.bosId;
        eosId = proto.eosId;
        // alignkd's Tokenizer splits text on these strings and maps them to their ids (legacy LlamaTokenizer).
        for (int id : new int[] {bosId, eosId, unkId}) {
            if (id >= 0 && id < n) {
                special.put(pieces[id], id);
            }
        }
    }

    public static SentencePieceBpe load(byte[] modelFile) throws BundleException {
        return new SentencePieceBpe(ModelProto.parse(modelFile));
    }

    public int bosId() {
        return bosId;
    }

    public int eosId() {
        return eosId;
    }

    public int vocabSize() {
        return pieces.length;
    }

    public String piece(int id) {
        return pieces[id];
    }

    /** Ids of {@code text} without BOS: special strings as their ids, every other run encoded on its own. */
    public List<Integer> encode(String text) {
        List<Integer> ids = new ArrayList<>();
        int start = 0;
        while (start < text.length()) {
            int at = -1;
            String hit = null;
            for (String s : special.keySet()) {
                int i = text.indexOf(s, start);
                if (i >= 0 && (at < 0 || i < at || (i == at && s.length() > hit.length()))) {
                    at = i;
                    hit = s;
                }
            }
            int end = at < 0 ? text.length() : at;
            if (end > start) {
                encodeChunk(text.substring(start, end), ids);
            }
            if (at < 0) {
                break;
            }
            ids.add(special.get(hit));
            start = at + hit.length();
        }
        return ids;
    }

    /**
     * sentencepiece's BPE merge loop on one chunk. Instead of its priority queue, each step scans the cached
     * score of every adjacent pair and merges the best (highest score, leftmost on a tie): the same merge order,
     * fewer moving parts, and the form the Swift core copies line for line. Prompts are short, so O(n^2) is fine.
     */
    private void encodeChunk(String chunk, List<Integer> out) {
        String normalised = (addDummyPrefix ? SPACE : "") + chunk.replace(" ", SPACE);
        List<String> symbols = new ArrayList<>();
        for (int i = 0; i < normalised.length(); ) {
            int cp = normalised.codePointAt(i);
            symbols.add(new String(Character.toChars(cp)));
            i += Character.charCount(cp);
        }
        int n = symbols.size();
        if (n == 0) {
            return;
        }
        int[] next = new int[n];
        int[] prev = new int[n];
        float[] pairScore = new float[n];  // score of merging symbol i with next[i]; NaN when no such piece
        for (int i = 0; i < n; i++) {
            next[i] = i + 1 < n ? i + 1 : -1;
            prev[i] = i - 1;
        }
        for (int i = 0; i < n; i++) {
            pairScore[i] = score(symbols, next, i);
        }
        while (true) {
            int best = -1;
            for (int i = 0; i >= 0; i = next[i]) {
                if (!Float.isNaN(pairScore[i]) && (best < 0 || pairScore[i] > pairScore[best])) {
                    best = i;
                }
            }
            if (best < 0) {
                break;
            }
            int right = next[best];
            symbols.set(best, symbols.get(best) + symbols.get(right));
            next[best] = next[right];
            if (next[right] >= 0) {
                prev[next[right]] = best;
            }
            pairScore[best] = score(symbols, next, best);
            if (prev[best] >= 0) {
                pairScore[prev[best]] = score(symbols, next, prev[best]);
            }
        }
        for (int i = 0; i >= 0; i = next[i]) {
            emit(symbols.get(i), out);
        }
    }

    private float score(List<String> symbols, int[] next, int i) {
        if (next[i] < 0) {
            return Float.NaN;
        }
        Integer id = mergeable.get(symbols.get(i) + symbols.get(next[i]));
        return id == null ? Float.NaN : scores[id];
    }

    private void emit(String piece, List<Integer> out) {
        Integer id = mergeable.get(piece);
        if (id != null) {
            out.add(id);
            return;
        }
        if (!byteFallback) {
            out.add(unkId);
            return;
        }
        for (byte b : piece.getBytes(StandardCharsets.UTF_8)) {
            int byteId = byteIds[b & 0xff];
            out.add(byteId >= 0 ? byteId : unkId);
        }
    }

    /** Text of {@code ids}: specials dropped, byte pieces joined as UTF-8, "▁" as space, leading space dropped. */
    public String decode(List<Integer> ids) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        for (int id : ids) {
            if (id < 0 || id >= pieces.length || types[id] == CONTROL || types[id] == UNKNOWN) {
                continue;
            }
            if (types[id] == BYTE) {
                bytes.write(Integer.parseInt(pieces[id].substring(3, 5), 16));
            } else {
                byte[] b = pieces[id].replace(SPACE, " ").getBytes(StandardCharsets.UTF_8);
                bytes.write(b, 0, b.length);
            }
        }
        String text = new String(bytes.toByteArray(), StandardCharsets.UTF_8);
        return addDummyPrefix && text.startsWith(" ") ? text.substring(1) : text;
    }

    /** The fields of sentencepiece_model.proto this tokenizer needs, read with a minimal protobuf decoder. */
    static final class ModelProto {
        final List<String> pieces = new ArrayList<>();
        final List<Float> scores = new ArrayList<>();
        final List<Integer> types = new ArrayList<>();
        int modelType = 1;  // proto default: UNIGRAM
        boolean byteFallback;
        int unkId = 0;
        int bosId = 1;
        int eosId = 2;
        String normalizerName = "";
        boolean addDummyPrefix = true;

        static ModelProto parse(byte[] data) throws BundleException {
            ModelProto proto = new ModelProto();
            try {
                Protobuf top = new Protobuf(data, 0, data.length);
                while (top.more()) {
                    int tag = top.tag();
                    if (tag == (1 << 3 | 2)) {
                        proto.readPiece(top.message());
                    } else if (tag == (2 << 3 | 2)) {
                        proto.readTrainer(top.message());
                    } else if (tag == (3 << 3 | 2)) {
                        proto.readNormalizer(top.message());
                    } else {
                        top.skip(tag);
                    }
                }
            } catch (IndexOutOfBoundsException | IllegalArgumentException err) {
                throw new BundleException("tokenizer.model is not a SentencePiece model (" + err.getMessage()
                        + "); copy the bundle again or re-export it", err);
            }
            if (proto.pieces.isEmpty()) {
                throw new BundleException("tokenizer.model holds no pieces; copy the bundle again or re-export it");
            }
            return proto;
        }

        private void readPiece(Protobuf m) {
            String piece = "";
            float score = 0f;
            int type = NORMAL;
            while (m.more()) {
                int tag = m.tag();
                switch (tag) {
                    case 1 << 3 | 2: piece = m.string(); break;
                    case 2 << 3 | 5: score = m.float32(); break;
                    case 3 << 3: type = (int) m.varint(); break;
                    default: m.skip(tag);
                }
            }
            pieces.add(piece);
            scores.add(score);
            types.add(type);
        }

        private void readTrainer(Protobuf m) {
            while (m.more()) {
                int tag = m.tag();
                switch (tag) {
                    case 3 << 3: modelType = (int) m.varint(); break;
                    case 35 << 3: byteFallback = m.varint() != 0; break;
                    case 40 << 3: unkId = (int) m.varint(); break;
                    case 41 << 3: bosId = (int) m.varint(); break;
                    case 42 << 3: eosId = (int) m.varint(); break;
                    default: m.skip(tag);
                }
            }
        }

        private void readNormalizer(Protobuf m) {
            while (m.more()) {
                int tag = m.tag();
                switch (tag) {
                    case 1 << 3 | 2: normalizerName = m.string(); break;
                    case 3 << 3: addDummyPrefix = m.varint() != 0; break;
                    default: m.skip(tag);
                }
            }
        }
    }

    /** Just enough of the protobuf wire format: varints, 32/64-bit fields and length-delimited fields. */
    static final class Protobuf {
        private final byte[] data;
        private int pos;
        private final int end;

        Protobuf(byte[] data, int start, int end) {
            this.data = data;
            this.pos = start;
            this.end = end;
        }

        boolean more() {
            return pos < end;
        }

        int tag() {
            return (int) varint();
        }

        long varint() {
            long result = 0;
            for (int shift = 0; shift < 64; shift += 7) {
                if (pos >= end) {
                    throw new IndexOutOfBoundsException("truncated varint");
                }
                byte b = data[pos++];
                result |= (long) (b & 0x7f) << shift;
                if ((b & 0x80) == 0) {
                    return result;
                }
            }
            throw new IllegalArgumentException("malformed varint");
        }

        float float32() {
            int bits = (data[pos] & 0xff) | (data[pos + 1] & 0xff) << 8 | (data[pos + 2] & 0xff) << 16
                    | (data[pos + 3] & 0xff) << 24;
            pos += 4;
            return Float.intBitsToFloat(bits);
        }

        private int length() {
            long n = varint();
            if (n < 0 || pos + n > end) {
                throw new IndexOutOfBoundsException("field length " + n + " past the end");
            }
            return (int) n;
        }

        String string() {
            int n = length();
            String s = new String(data, pos, n, StandardCharsets.UTF_8);
            pos += n;
            return s;
        }

        Protobuf message() {
            int n = length();
            Protobuf sub = new Protobuf(data, pos, pos + n);
            pos += n;
            return sub;
        }

        void skip(int tag) {
            switch (tag & 7) {
                case 0: varint(); break;
                case 1: pos += 8; break;
                case 2: {
                    int n = length();  // not "pos += length()": Java would add to pos as it was before the length
                    pos += n;
                    break;
                }
                case 5: pos += 4; break;
                default: throw new IllegalArgumentException("unsupported wire type " + (tag & 7));
            }
            if (pos > end) {
                throw new IndexOutOfBoundsException("field past the end");
            }
        }
    }
}
