import Foundation

/// A SentencePiece BPE tokenizer read from tokenizer.model, for the LLaMA-style models alignkd exports (BPE,
/// identity normaliser, dummy prefix, byte fallback), with alignkd.data.tokenizer's legacy chunking on the
/// special strings. The merge loop, protobuf reader and decode are SentencePieceBpe.java line for line; the
/// Java one is tested against export/golden/'s prompt ids and the official tokenizer's probes.
public final class SentencePieceBPE {
    static let space = "\u{2581}"
    enum PieceType: Int {
        case normal = 1, unknown, control, userDefined, unused, byte
    }

    let pieces: [String]
    let scores: [Float]
    let types: [Int]
    private var mergeable = [String: Int]()
    private var special = [String: Int]()
    private var byteIds = [Int](repeating: -1, count: 256)
    let addDummyPrefix: Bool
    let byteFallback: Bool
    public let unkId: Int
    public let bosId: Int
    public let eosId: Int

    public init(modelData: Data) throws {
        let proto = try ModelProto(bytes: [UInt8](modelData))
        guard proto.modelType == 2 else {
            throw BundleError("tokenizer.model is a SentencePiece model of type \(proto.modelType) but this app reads "
                + "BPE models (type 2, the LLaMA tokenizer); re-export the bundle")
        }
        guard proto.normalizerName.isEmpty || proto.normalizerName == "identity" else {
            throw BundleError("tokenizer.model uses the '\(proto.normalizerName)' normaliser but this app implements "
                + "only 'identity' (the LLaMA tokenizer's)")
        }
        pieces = proto.pieces
        scores = proto.scores
        types = proto.types
        addDummyPrefix = proto.addDummyPrefix
        byteFallback = proto.byteFallback
        unkId = proto.unkId
        bosId = proto.bosId
        eosId = proto.eosId
        for (i, piece) in pieces.enumerated() {
            if types[i] == PieceType.normal.rawValue || types[i] == PieceType.userDefined.rawValue {
                mergeable[piece] = i
            } else if types[i] == PieceType.byte.rawValue, piece.count == 6,
                      let value = Int(piece.dropFirst(3).prefix(2), radix: 16) {
                byteIds[value] = i
            }
        }
        // alignkd's Tokenizer splits text on these strings and maps them to their ids (legacy LlamaTokenizer).
        for id in [bosId, eosId, unkId] where id >= 0 && id < pieces.count {
            special[pieces[id]] = id
        }
    }

    public var vocabSize: Int { pieces.count }

    /// Ids of `text` without BOS: special strings as their ids, every other run encoded on its own.
    public func encode(_ text: String) -> [Int] {
        var ids = [Int]()
        var rest = Substring(text)
        while !rest.isEmpty {
            var hit: (range: Range<Substring.Index>, piece: String)?
            for piece in special.keys {
                if let r = rest.range(of: piece) {
                    if hit == nil || r.lowerBound < hit!.range.lowerBound
                        || (r.lowerBound == hit!.range.lowerBound && piece.count > hit!.piece.count) {
                        hit = (r, piece)
                    }
                }
            }
            guard let found = hit else {
                encodeChunk(String(rest), into: &ids)
                break
            }
            if found.range.lowerBound > rest.startIndex {
                encodeChunk(String(rest[..<found.range.lowerBound]), into: &ids)
            }
            ids.append(special[found.piece]!)
            rest = rest[found.range.upperBound...]
        }
        return ids
    }

    /// sentencepiece's BPE merges as a scan over cached pair scores: merge the best pair (highest score,
    /// leftmost on a tie) until none is a piece. Same order as its priority queue; see the Java twin.
    private func encodeChunk(_ chunk: String, into out: inout [Int]) {
        let normalised = (addDummyPrefix ? SentencePieceBPE.space : "")
            + chunk.replacingOccurrences(of: " ", with: SentencePieceBPE.space)
        // Symbols are unicode scalars (Java's code points), not grapheme clusters.
        var symbols = normalised.unicodeScalars.map { String($0) }
        let n = symbols.count
        guard n > 0 else { return }
        var next = (0..<n).map { $0 + 1 < n ? $0 + 1 : -1 }
        var prev = (0..<n).map { $0 - 1 }
        func score(_ i: Int) -> Float? {
            guard next[i] >= 0, let id = mergeable[symbols[i] + symbols[next[i]]] else { return nil }
            return scores[id]
        }
        var pairScore = (0..<n).map { score($0) }
        while true {
            var best = -1
            var i = 0
            while i >= 0 {
                if let s = pairScore[i], best < 0 || s > pairScore[best]! {
                    best = i
                }
                i = next[i]
            }
            if best < 0 {
                break
            }
            let right = next[best]
            symbols[best] += symbols[right]
            next[best] = next[right]
            if next[right] >= 0 {
                prev[next[right]] = best
            }
            pairScore[best] = score(best)
            if prev[best] >= 0 {
                pairScore[prev[best]] = score(prev[best])
            }
        }
        var i = 0
        while i >= 0 {
            emit(symbols[i], into: &out)
            i = next[i]
        }
    }

    private func emit(_ piece: String, into out: inout [Int]) {
        if let id = mergeable[piece] {
            out.append(id)
        } else if !byteFallback {
            out.append(unkId)
        } else {
            for byte in Array(piece.utf8) {
                out.append(byteIds[Int(byte)] >= 0 ? byteIds[Int(byte)] : unkId)
            }
        }
    }

    /// Text of `ids`: specials dropped, byte pieces joined as UTF-8, "▁" as space, the leading space dropped.
    public func decode(_ ids: [Int]) -> String {
        var bytes = [UInt8]()
        for id in ids where id >= 0 && id < pieces.count {
            let type = types[id]
            if type == PieceType.control.rawValue || type == PieceType.unknown.rawValue {
                continue
            }
            if type == PieceType.byte.rawValue, let value = UInt8(pieces[id].dropFirst(3).prefix(2), radix: 16) {
                bytes.append(value)
            } else {
                bytes += Array(pieces[id].replacingOccurrences(of: SentencePieceBPE.space, with: " ").utf8)
            }
        }
        let text = String(decoding: bytes, as: UTF8.self)
        return addDummyPrefix && text.hasPrefix(" ") ? String(text.dropFirst()) : text
    }

    public func piece(_ id: Int) -> String { pieces[id] }
}

/// The fields of sentencepiece_model.proto the tokenizer needs, read with a minimal protobuf decoder.
struct ModelProto {
    var pieces = [String]()
    var scores = [Float]()
    var types = [Int]()
    var modelType = 1  // proto default: UNIGRAM
    var byteFallback = false
    var unkId = 0
    var bosId = 1
    var eosId = 2
    var normalizerName = ""
    var addDummyPrefix = true

    init(bytes: [UInt8]) throws {
        var top = Protobuf(bytes: bytes, start: 0, end: bytes.count)
        do {
            while top.more {
                let tag = try top.tag()
                switch tag {
                case 1 << 3 | 2: try readPiece(try top.message())
                case 2 << 3 | 2: try readTrainer(try top.message())
                case 3 << 3 | 2: try readNormalizer(try top.message())
                default: try top.skip(tag)
                }
            }
        } catch let error as ProtobufError {
            throw BundleError("tokenizer.model is not a SentencePiece model (\(error.reason)); copy the bundle "
                + "again or re-export it")
        }
        guard !pieces.isEmpty else {
            throw BundleError("tokenizer.model holds no pieces; copy the bundle again or re-export it")
        }
    }

    private mutating func readPiece(_ message: Protobuf) throws {
        var m = message
        var piece = "", score: Float = 0, type = 1
        while m.more {
            let tag = try m.tag()
            switch tag {
            case 1 << 3 | 2: piece = try m.string()
            case 2 << 3 | 5: score = try m.float32()
            case 3 << 3: type = Int(try m.varint())
            default: try m.skip(tag)
            }
        }
        pieces.append(piece)
        scores.append(score)
        types.append(type)
    }

    private mutating func readTrainer(_ message: Protobuf) throws {
        var m = message
        while m.more {
            let tag = try m.tag()
            switch tag {
            case 3 << 3: modelType = Int(try m.varint())
            case 35 << 3: byteFallback = try m.varint() != 0
            case 40 << 3: unkId = Int(Int32(truncatingIfNeeded: try m.varint()))
            case 41 << 3: bosId = Int(Int32(truncatingIfNeeded: try m.varint()))
            case 42 << 3: eosId = Int(Int32(truncatingIfNeeded: try m.varint()))
            default: try m.skip(tag)
            }
        }
    }

    private mutating func readNormalizer(_ message: Protobuf) throws {
        var m = message
        while m.more {
            let tag = try m.tag()
            switch tag {
            case 1 << 3 | 2: normalizerName = try m.string()
            case 3 << 3: addDummyPrefix = try m.varint() != 0
            default: try m.skip(tag)
            }
        }
    }
}

struct ProtobufError: Error {
    let reason: String
}

/// Just enough of the protobuf wire format: varints, 32/64-bit fields, length-delimited fields.
struct Protobuf {
    let bytes: [UInt8]
    var pos: Int
    let end: Int

    init(bytes: [UInt8], start: Int, end: Int) {
        self.bytes = bytes
        self.pos = start
        self.end = end
    }

    var more: Bool { pos < end }

    mutating func tag() throws -> Int { Int(truncatingIfNeeded: try varint()) }

    mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while shift < 64 {
            guard pos < end else { throw ProtobufError(reason: "truncated varint") }
            let b = bytes[pos]
            pos += 1
            result |= UInt64(b & 0x7f) << shift
            if b & 0x80 == 0 {
                return result
            }
            shift += 7
        }
        throw ProtobufError(reason: "malformed varint")
    }

    mutating func float32() throws -> Float {
        guard pos + 4 <= end else { throw ProtobufError(reason: "truncated float") }
        let bits = UInt32(bytes[pos]) | UInt32(bytes[pos + 1]) << 8 | UInt32(bytes[pos + 2]) << 16
            | UInt32(bytes[pos + 3]) << 24
        pos += 4
        return Float(bitPattern: bits)
    }

    private mutating func length() throws -> Int {
        let n = try varint()
        guard n <= UInt64(end - pos) else { throw ProtobufError(reason: "field length \(n) past the end") }
        return Int(n)
    }

    mutating func string() throws -> String {
        let n = try length()
        let s = String(decoding: bytes[pos..<(pos + n)], as: UTF8.self)
        pos += n
        return s
    }

    mutating func message() throws -> Protobuf {
        let n = try length()
        let sub = Protobuf(bytes: bytes, start: pos, end: pos + n)
        pos += n
        return sub
    }

    mutating func skip(_ tag: Int) throws {
        switch tag & 7 {
        case 0: _ = try varint()
        case 1: pos += 8
        case 2: let n = try length(); pos += n
        case 5: pos += 4
        default: throw ProtobufError(reason: "unsupported wire type \(tag & 7)")
        }
        guard pos <= end else { throw ProtobufError(reason: "field past the end") }
    }
}
