import Foundation

/// The manifest's prompt block: full prompt text with `{question}`, the image placeholder and where it stands,
/// the stop strings. The two text chunks around the placeholder are tokenized separately (dummy prefix on each),
/// BOS only before the first, the image tokens between them (tokenize_with_image). Mirrors PromptSpec.java.
public struct PromptSpec: Equatable {
    public static let question = "{question}"

    public let template: String
    public let text: String
    public let placeholder: String
    public let placeholderOffset: Int
    public let imageTokenIndex: Int
    public let stopStrings: [String]

    static func fromJSON(_ prompt: [String: Any], where path: String) throws -> PromptSpec {
        let text = prompt["text"] as? String ?? ""
        let placeholder = prompt["image_placeholder"] as? String ?? ""
        let offset = (prompt["image_placeholder_offset"] as? NSNumber)?.intValue ?? -1
        let occurrences = placeholder.isEmpty ? 0 : text.components(separatedBy: placeholder).count - 1
        // Offsets count Python characters (code points): compare in unicode scalars, not grapheme clusters.
        let first = text.range(of: placeholder).map { text.unicodeScalars.distance(from: text.startIndex, to: $0.lowerBound) }
        guard occurrences == 1, first == offset else {
            throw BundleError("\(path) prompt.text must hold the placeholder '\(placeholder)' exactly once, at offset "
                + "\(offset); re-export the bundle")
        }
        guard text.contains(question) else {
            throw BundleError("\(path) prompt.text has no \(question) for the user's question; re-export the bundle")
        }
        return PromptSpec(template: prompt["template"] as? String ?? "", text: text, placeholder: placeholder,
                          placeholderOffset: offset,
                          imageTokenIndex: (prompt["image_token_index"] as? NSNumber)?.intValue ?? -200,
                          stopStrings: prompt["stop_strings"] as? [String] ?? [])
    }

    /// The full prompt for a question (the app puts the image's place itself).
    public func render(_ question: String) throws -> String {
        let q = question.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !q.isEmpty else {
            throw BundleError("the question is empty; type a question about the photo")
        }
        guard !q.contains(placeholder) else {
            throw BundleError("the question contains \(placeholder); remove it, the app puts the photo in its place")
        }
        return text.replacingOccurrences(of: PromptSpec.question, with: q)
    }

    /// The prompt cut at the placeholder: text before the image, text after it.
    public func split(_ question: String) throws -> (beforeImage: String, afterImage: String) {
        let prompt = try render(question)
        let range = prompt.range(of: placeholder)!
        return (String(prompt[..<range.lowerBound]), String(prompt[range.upperBound...]))
    }

    /// tokenize_with_image: each chunk's ids, BOS once (when addBos), the image index between chunks.
    public func inputIds(tokenizer: SentencePieceBPE, prompt: String, addBos: Bool) -> [Int] {
        var ids = addBos ? [tokenizer.bosId] : []
        for (i, chunk) in prompt.components(separatedBy: placeholder).enumerated() {
            if i > 0 {
                ids.append(imageTokenIndex)
            }
            ids += tokenizer.encode(chunk)
        }
        return ids
    }

    /// Where a stop string starts in the generated text, or nil (generation stops there; the stop string is dropped).
    public func stopAt(_ generated: String) -> String.Index? {
        stopStrings.filter { !$0.isEmpty }.compactMap { generated.range(of: $0)?.lowerBound }.min()
    }
}
