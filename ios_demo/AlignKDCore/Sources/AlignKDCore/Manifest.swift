import CryptoKit
import Foundation

/// A bundle's manifest.json (alignkd/contract/manifest.schema.json), read and checked as alignkd.contract.manifest does:
/// required fields, format version, the target this app runs, the sha256 and size of every file.
/// Mirrors Manifest.java (android_demo/core), whose tests cover the same checks.
public struct Manifest {
    public static let formatVersion = 1
    public static let fileName = "manifest.json"
    static let required = ["format_version", "model", "target", "quant", "max_seq_len", "parts", "tokenizer",
                           "special_tokens", "image", "num_image_tokens", "prompt", "files", "source", "parity",
                           "export"]
    static let parts = ["vision_encoder", "token_embedding", "text_decoder"]

    public struct FileEntry: Equatable {
        public let sha256: String
        public let bytes: Int64
    }

    public let root: [String: Any]
    public let image: ImageSpec
    public let prompt: PromptSpec
    public let files: [String: FileEntry]

    /// Parse and check the text of a manifest.json; `path` names it in errors.
    public static func parse(_ data: Data, where path: String) throws -> Manifest {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw BundleError("cannot read \(path) (\(error.localizedDescription)); pick a bundle folder written "
                + "by `alignkd export`")
        }
        guard let root = object as? [String: Any] else {
            throw BundleError("cannot read \(path) (not a JSON object); pick a bundle folder written by `alignkd export`")
        }
        for key in required {
            try require(root, key, path, key)
        }
        let version = (root["format_version"] as? NSNumber)?.intValue ?? -1
        guard version == formatVersion else {
            throw BundleError("\(path) has format_version \(version) but this app reads version \(formatVersion); "
                + "re-export the bundle with the alignkd this app was built with")
        }
        try checkNested(root, path)
        let manifest = Manifest(root: root,
                                image: try ImageSpec.fromJSON(root["image"] as! [String: Any], where: path),
                                prompt: try PromptSpec.fromJSON(root["prompt"] as! [String: Any], where: path),
                                files: try readFiles(root, path))
        try manifest.checkPartFilesListed(path)
        return manifest
    }

    /// Read `folder/manifest.json`, check it and refuse a bundle of another target.
    public static func load(folder: URL, expectedTarget: String) throws -> Manifest {
        let url = folder.appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw BundleError("bundle folder \(folder.path) has no \(fileName); copy the whole folder written by "
                + "`alignkd export`")
        }
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw BundleError("cannot read \(url.path) (\(error.localizedDescription)); check the app may read the folder")
        }
        let manifest = try parse(data, where: url.path)
        try manifest.requireTarget(expectedTarget, where: folder.path)
        return manifest
    }

    public func requireTarget(_ expected: String, where path: String) throws {
        guard target == expected else {
            throw BundleError("bundle \(path) is a \(target) bundle but this app runs \(expected) bundles; export one "
                + "with `alignkd export --target \(expected)`")
        }
    }

    private static func require(_ object: [String: Any], _ key: String, _ path: String, _ field: String) throws {
        guard let value = object[key], !(value is NSNull) else {
            throw BundleError("\(path) does not follow the bundle schema at \(field): the field is missing; "
                + "re-export the bundle")
        }
    }

    private static func object(_ parent: [String: Any], _ key: String, _ path: String, _ field: String) throws
        -> [String: Any] {
        try require(parent, key, path, field)
        guard let child = parent[key] as? [String: Any] else {
            throw BundleError("\(path) does not follow the bundle schema at \(field): not an object; re-export the bundle")
        }
        return child
    }

    private static func checkNested(_ root: [String: Any], _ path: String) throws {
        let partTable = try object(root, "parts", path, "parts")
        for part in parts {
            let p = try object(partTable, part, path, "parts/\(part)")
            for key in ["file", "inputs", "outputs", "quant"] {
                try require(p, key, path, "parts/\(part)/\(key)")
            }
        }
        let tokenizer = try object(root, "tokenizer", path, "tokenizer")
        for key in ["files", "vocab_size", "add_bos"] {
            try require(tokenizer, key, path, "tokenizer/\(key)")
        }
        let tokenizerFiles = try object(tokenizer, "files", path, "tokenizer/files")
        for key in ["sentencepiece", "hf_json"] {
            try require(tokenizerFiles, key, path, "tokenizer/files/\(key)")
        }
        let blocks: [(String, [String])] = [
            ("special_tokens", ["bos", "eos", "unk", "pad"]),
            ("image", ["size", "mean", "std", "resample", "rescale_factor", "aspect_ratio", "pad_colour"]),
            ("prompt", ["template", "text", "image_placeholder", "image_placeholder_offset", "image_token_index",
                        "stop_strings"]),
            ("quant", ["scheme"]), ("source", ["checkpoint", "sha256"]), ("parity", ["measured", "passed"]),
        ]
        for (block, keys) in blocks {
            let b = try object(root, block, path, block)
            for key in keys {
                try require(b, key, path, "\(block)/\(key)")
            }
        }
        let target = root["target"] as? String ?? ""
        guard ["executorch", "onnx", "coreml", "gguf"].contains(target) else {
            throw BundleError("\(path) has target '\(target)'; valid targets: executorch, onnx, coreml, gguf; re-export the bundle")
        }
    }

    private static func readFiles(_ root: [String: Any], _ path: String) throws -> [String: FileEntry] {
        let table = try object(root, "files", path, "files")
        var files = [String: FileEntry]()
        for (rel, value) in table {
            if rel.hasPrefix("/") || rel == ".." || rel.hasPrefix("../") || rel.contains("/../") {
                // A path leaving the bundle folder would let a manifest point the app at any file.
                throw BundleError("\(path) lists file '\(rel)' outside the bundle folder; re-export the bundle")
            }
            guard let entry = value as? [String: Any], let sha = entry["sha256"] as? String,
                  let bytes = (entry["bytes"] as? NSNumber)?.int64Value else {
                throw BundleError("\(path) does not follow the bundle schema at files/\(rel): the field is missing; "
                    + "re-export the bundle")
            }
            guard sha.count == 64, sha.allSatisfy({ "0123456789abcdef".contains($0) }) else {
                throw BundleError("\(path) has a malformed sha256 for file '\(rel)'; re-export the bundle")
            }
            files[rel] = FileEntry(sha256: sha, bytes: bytes)
        }
        guard !files.isEmpty else {
            throw BundleError("\(path) lists no files; re-export the bundle")
        }
        return files
    }

    /// Every part's and tokenizer's file must be in the files table (.mlpackage parts are folders: a prefix).
    private func checkPartFilesListed(_ path: String) throws {
        let needed = Manifest.parts.map { partFile($0) } + [tokenizerFile("sentencepiece"), tokenizerFile("hf_json")]
        for rel in needed {
            let listed = files[rel] != nil || files.keys.contains { $0.hasPrefix(rel + "/") }
            guard listed else {
                throw BundleError("\(path) names '\(rel)' but its files table does not list it; re-export the bundle")
            }
        }
    }

    /// Refuse a missing, truncated or modified file, naming it (alignkd.contract.manifest.verify_files).
    public func verifyFiles(folder: URL) throws {
        for rel in files.keys.sorted() {
            let entry = files[rel]!
            let url = folder.appendingPathComponent(rel)
            guard let attrs = try? FileManager.default.attributesOfItem(atPath: url.path),
                  (attrs[.type] as? FileAttributeType) == .typeRegular else {
                throw BundleError("bundle file \(url.path) is missing; copy the whole bundle folder again or re-export it")
            }
            let size = (attrs[.size] as? NSNumber)?.int64Value ?? -1
            guard size == entry.bytes else {
                throw BundleError("bundle file \(url.path) has \(size) bytes but the manifest says \(entry.bytes) "
                    + "(truncated or replaced); copy it again or re-export the bundle")
            }
            guard try Manifest.sha256(of: url) == entry.sha256 else {
                throw BundleError("bundle file \(url.path) does not match its sha256 in the manifest (modified or "
                    + "corrupt); copy it again or re-export the bundle")
            }
        }
    }

    public static func sha256(of url: URL) throws -> String {
        guard let handle = try? FileHandle(forReadingFrom: url) else {
            throw BundleError("cannot read bundle file \(url.path); copy it again")
        }
        defer { try? handle.close() }
        var hasher = SHA256()
        while true {
            let chunk = handle.readData(ofLength: 1 << 20)
            if chunk.isEmpty {
                break
            }
            hasher.update(data: chunk)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    public var target: String { root["target"] as? String ?? "" }
    public var maxSeqLen: Int { (root["max_seq_len"] as? NSNumber)?.intValue ?? 0 }
    public var numImageTokens: Int { (root["num_image_tokens"] as? NSNumber)?.intValue ?? 0 }

    public func partFile(_ part: String) -> String {
        ((root["parts"] as? [String: Any])?[part] as? [String: Any])?["file"] as? String ?? ""
    }

    /// `kind`: "sentencepiece" (tokenizer.model) or "hf_json" (tokenizer.json).
    public func tokenizerFile(_ kind: String) -> String {
        (((root["tokenizer"] as? [String: Any])?["files"]) as? [String: Any])?[kind] as? String ?? ""
    }

    public var addBos: Bool { ((root["tokenizer"] as? [String: Any])?["add_bos"] as? Bool) ?? true }

    public func specialToken(_ name: String) -> Int {
        ((root["special_tokens"] as? [String: Any])?[name] as? NSNumber)?.intValue ?? -1
    }

    public var quantScheme: String { (root["quant"] as? [String: Any])?["scheme"] as? String ?? "" }

    /// "fp16, group 32, vision fp16" style description of the quant block (same wording as the Android app).
    public var quantDescription: String {
        let quant = root["quant"] as? [String: Any] ?? [:]
        var out = quant["scheme"] as? String ?? ""
        if let group = quant["group_size"] as? NSNumber {
            out += ", group \(group.intValue)"
        }
        if let bits = quant["embedding_bits"] as? NSNumber {
            out += ", \(bits.intValue)-bit embedding"
        }
        if let vision = quant["vision"] as? String {
            out += ", vision \(vision)"
        }
        return out
    }

    /// The checkpoint folder's name, which is what a user called the model.
    public var modelName: String {
        var path = ((root["source"] as? [String: Any])?["checkpoint"] as? String ?? "")
            .replacingOccurrences(of: "\\", with: "/")
        while path.hasSuffix("/") {
            path.removeLast()
        }
        let name = path.split(separator: "/").last.map(String.init) ?? ""
        return name.isEmpty ? ((root["model"] as? [String: Any])?["family"] as? String ?? "") : name
    }

    public var sourceSha256: String { (root["source"] as? [String: Any])?["sha256"] as? String ?? "" }

    public func exporterVersion(_ package: String) -> String {
        (((root["export"] as? [String: Any])?["versions"]) as? [String: Any])?[package] as? String ?? ""
    }

    public var totalBytes: Int64 { files.values.reduce(0) { $0 + $1.bytes } }

    /// Bundle size in MiB, as alignkd profile's size_mb.
    public var sizeMb: Double { Double(totalBytes) / Double(1 << 20) }

    public func part(_ name: String) -> [String: Any] {
        (root["parts"] as? [String: Any])?[name] as? [String: Any] ?? [:]
    }
}
