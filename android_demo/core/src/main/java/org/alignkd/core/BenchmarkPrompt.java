package org.alignkd.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * The fixed benchmark question of `alignkd profile` (alignkd.runtime.profile.fit_prompt): DEFAULT_QUESTION plus
 * as many FILLER words as keep the prompt within PREFILL_TARGET prefill positions (text ids without BOS's
 * double count, plus the image tokens). With the same tokenizer this gives the same question as the host.
 */
public final class BenchmarkPrompt {
    public static final int PREFILL_TARGET = 190;
    public static final String DEFAULT_QUESTION = "What is in the picture?";
    public static final String FILLER = "Please also mention everything else that stands out about the shapes,"
            + " the text, the colours and the layout.";

    private BenchmarkPrompt() {}

    /** Prefill positions of a question: every prompt id but the image placeholder, plus the image tokens. */
    public static int positions(PromptSpec prompt, SentencePieceBpe tokenizer, boolean addBos, String question,
                                int numImageTokens) throws BundleException {
        return prompt.inputIds(tokenizer, prompt.render(question), addBos).size() - 1 + numImageTokens;
    }

    public static String fit(PromptSpec prompt, SentencePieceBpe tokenizer, boolean addBos, int numImageTokens)
            throws BundleException {
        return fit(prompt, tokenizer, addBos, numImageTokens, PREFILL_TARGET);
    }

    public static String fit(PromptSpec prompt, SentencePieceBpe tokenizer, boolean addBos, int numImageTokens,
                             int target) throws BundleException {
        List<String> words = new ArrayList<>();
        for (int i = 0; i < 8; i++) {
            words.addAll(Arrays.asList(FILLER.split(" ")));
        }
        int lo = 0;
        int hi = words.size();
        // positions() grows with the number of words: binary search for the most that fit, as fit_prompt does.
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (positions(prompt, tokenizer, addBos, question(words, mid), numImageTokens) <= target) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        return question(words, lo);
    }

    private static String question(List<String> words, int n) {
        StringBuilder q = new StringBuilder(DEFAULT_QUESTION);
        for (int i = 0; i < n; i++) {
            q.append(' ').append(words.get(i));
        }
        return q.toString();
    }
}
