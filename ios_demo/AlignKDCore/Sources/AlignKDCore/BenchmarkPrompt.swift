import Foundation

/// The fixed benchmark question of `alignkd profile` (alignkd.runtime.profile.fit_prompt): DEFAULT_QUESTION plus
/// as many FILLER words as keep the prompt within the prefill target. Mirrors BenchmarkPrompt.java.
public enum BenchmarkPrompt {
    public static let prefillTarget = 190
    public static let defaultQuestion = "What is in the picture?"
    public static let filler = "Please also mention everything else that stands out about the shapes, the text, "
        + "the colours and the layout."

    /// Prefill positions: every prompt id but the image placeholder, plus the image tokens.
    public static func positions(prompt: PromptSpec, tokenizer: SentencePieceBPE, addBos: Bool, question: String,
                                 numImageTokens: Int) throws -> Int {
        prompt.inputIds(tokenizer: tokenizer, prompt: try prompt.render(question), addBos: addBos).count - 1
            + numImageTokens
    }

    public static func fit(prompt: PromptSpec, tokenizer: SentencePieceBPE, addBos: Bool, numImageTokens: Int,
                           target: Int = prefillTarget) throws -> String {
        let words = Array(repeating: filler.split(separator: " ").map(String.init), count: 8).flatMap { $0 }
        func question(_ n: Int) -> String { ([defaultQuestion] + words.prefix(n)).joined(separator: " ") }
        var lo = 0, hi = words.count
        // positions() grows with the number of words: binary search for the most that fit, as fit_prompt does.
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if try positions(prompt: prompt, tokenizer: tokenizer, addBos: addBos, question: question(mid),
                             numImageTokens: numImageTokens) <= target {
                lo = mid
            } else {
                hi = mid - 1
            }
        }
        return question(lo)
    }
}
