package org.alignkd.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.Test;

public class PromptAndTokenizerTest {
    @Test
    public void rendersTheGoldenPromptFromTheManifestTemplate() throws Exception {
        PromptSpec prompt = Golden.manifest("executorch_8da4w.json").prompt();
        for (JSONObject pair : Golden.pairs()) {
            assertEquals(pair.getString("prompt"), prompt.render(pair.getString("question")));
        }
    }

    /** The Java tokenizer + placeholder splice gives export/golden's input_ids, -200 included, id for id. */
    @Test
    public void inputIdsEqualTheGoldenIds() throws Exception {
        Manifest m = Golden.manifest("executorch_8da4w.json");
        SentencePieceBpe tok = Golden.tokenizer();
        for (JSONObject pair : Golden.pairs()) {
            List<Integer> ids = m.prompt().inputIds(tok, pair.getString("prompt"), m.addBos());
            assertEquals(pair.getString("question"), Golden.ints(pair.getJSONArray("input_ids")), ids);
        }
    }

    /** The official tokenizer's outputs on edge cases (spaces, newlines, specials) from the tiny fixture. */
    @Test
    public void encodesTheOfficialTokenizerProbes() throws Exception {
        SentencePieceBpe tok = Golden.tokenizer();
        JSONArray probes = new JSONObject(Golden.text(new java.io.File(Golden.root(),
                "tests/fixtures/mobilevlm_official_tiny/expected.json"))).getJSONArray("tokenizer_probe");
        assertTrue(probes.length() > 3);
        for (int i = 0; i < probes.length(); i++) {
            JSONObject probe = probes.getJSONObject(i);
            List<Integer> ids = new java.util.ArrayList<>();
            ids.add(tok.bosId());
            ids.addAll(tok.encode(probe.getString("text")));
            assertEquals("'" + probe.getString("text") + "'", Golden.ints(probe.getJSONArray("input_ids")), ids);
        }
    }

    @Test
    public void splitCutsAtThePlaceholder() throws Exception {
        PromptSpec prompt = Golden.manifest("executorch_8da4w.json").prompt();
        PromptSpec.Split split = prompt.split("Why?");
        assertTrue(split.beforeImage.endsWith("USER: "));
        assertEquals("\nWhy? ASSISTANT:", split.afterImage);
        assertEquals(prompt.placeholderOffset, split.beforeImage.length());
    }

    @Test
    public void questionsWithRegexCharactersStayLiteral() throws Exception {
        PromptSpec prompt = Golden.manifest("executorch_8da4w.json").prompt();
        assertTrue(prompt.render("cost in $1 \\o/?").contains("<image>\ncost in $1 \\o/? ASSISTANT:"));
    }

    @Test
    public void refusesAnEmptyQuestionOrOneWithThePlaceholder() throws Exception {
        PromptSpec prompt = Golden.manifest("executorch_8da4w.json").prompt();
        for (String q : new String[] {"  ", "look <image> here"}) {
            try {
                prompt.render(q);
                fail("accepted " + q);
            } catch (BundleException err) {
                assertTrue(err.getMessage(), err.getMessage().startsWith("the question"));
            }
        }
    }

    @Test
    public void stopStringsCutTheAnswer() throws Exception {
        PromptSpec prompt = Golden.manifest("executorch_8da4w.json").prompt();
        assertEquals(5, prompt.stopAt("hello</s> more"));
        assertEquals(-1, prompt.stopAt("hello"));
    }

    /** Decoding the golden tokens gives the text Python's tokenizer gave (byte pieces, spaces, specials). */
    @Test
    public void decodesTheGoldenAnswers() throws Exception {
        SentencePieceBpe tok = Golden.tokenizer();
        for (JSONObject pair : Golden.pairs()) {
            assertEquals(pair.getString("expected_text"),
                    tok.decode(Golden.ints(pair.getJSONArray("expected_tokens"))).strip());
        }
    }

    @Test
    public void specialStringsInTextBecomeTheirIds() throws Exception {
        SentencePieceBpe tok = Golden.tokenizer();
        // Each run around the special string is encoded on its own (own dummy prefix), as the legacy tokenizer.
        List<Integer> want = new java.util.ArrayList<>(tok.encode("a"));
        want.add(tok.eosId());
        want.addAll(tok.encode("b"));
        assertEquals(want, tok.encode("a</s>b"));
    }

    @Test
    public void unknownCharactersFallBackToUtf8Bytes() throws Exception {
        SentencePieceBpe tok = Golden.tokenizer();
        List<Integer> ids = tok.encode("\u00e9");  // not a piece of the tiny vocabulary
        assertEquals("<0xC3>", tok.piece(ids.get(ids.size() - 2)));
        assertEquals("<0xA9>", tok.piece(ids.get(ids.size() - 1)));
        assertEquals("\u00e9", tok.decode(ids));
    }

    @Test
    public void refusesAFileThatIsNotAModel() {
        try {
            SentencePieceBpe.load(new byte[] {(byte) 0x0a, (byte) 0x7f, 1});
            fail("accepted garbage");
        } catch (BundleException err) {
            assertTrue(err.getMessage(), err.getMessage().startsWith("tokenizer.model is not a SentencePiece model"));
        }
    }

    /** The benchmark question equals alignkd profile's fit_prompt for the same tokenizer (profile_prompt.json). */
    @Test
    public void benchmarkQuestionMatchesTheHostProfile() throws Exception {
        Manifest m = Golden.manifest("executorch_8da4w.json");
        SentencePieceBpe tok = Golden.tokenizer();
        JSONObject vectors = new JSONObject(Golden.resource("profile_prompt.json"));
        assertEquals(vectors.getInt("num_image_tokens"), m.numImageTokens());
        JSONArray cases = vectors.getJSONArray("cases");
        for (int i = 0; i < cases.length(); i++) {
            JSONObject c = cases.getJSONObject(i);
            String q = BenchmarkPrompt.fit(m.prompt(), tok, m.addBos(), m.numImageTokens(), c.getInt("target"));
            assertEquals("target " + c.getInt("target"), c.getString("question"), q);
            assertEquals(c.getInt("positions"),
                    BenchmarkPrompt.positions(m.prompt(), tok, m.addBos(), q, m.numImageTokens()));
        }
    }
}
