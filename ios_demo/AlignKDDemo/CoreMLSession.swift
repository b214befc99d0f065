import AlignKDCore
import CoreML
import Foundation

/// One Core ML bundle (`alignkd export --target coreml`): the three .mlpackage parts, the stateful decoder's KV
/// cache as MLState (iOS 18), and the greedy generation loop of alignkd.runtime.generation: embed the text
/// chunks, put the image tokens where the placeholder stands, prefill once, decode token by token. Tensor names
/// come from the manifest's parts, the prompt and stop strings from its prompt block.
@available(iOS 18.0, macOS 15.0, *)
final class CoreMLSession {
    struct Timings {
        var visionEncodeS = 0.0
        var prefillS = 0.0
        var ttftS = 0.0
        var decodeS = 0.0
        var prefillTokens = 0
        var generatedTokens = 0
        var stopReason = "max_new_tokens"
    }

    let folder: URL
    let manifest: Manifest
    let tokenizer: SentencePieceBPE
    let preprocessor: ImagePreprocessor
    let loadS: Double
    private let vision: MLModel
    private let embedder: MLModel
    private let decoder: MLModel
    private var stopRequested = false

    /// Check the manifest (and with `verify` every file's sha256), compile the parts once (cached), load them.
    init(folder: URL, verify: Bool) async throws {
        self.folder = folder
        manifest = try Manifest.load(folder: folder, expectedTarget: "coreml")
        if verify {
            try manifest.verifyFiles(folder: folder)
        }
        tokenizer = try SentencePieceBPE(modelData: Data(contentsOf: folder.appendingPathComponent(
            manifest.tokenizerFile("sentencepiece"))))
        preprocessor = ImagePreprocessor(spec: manifest.image)
        var compiled = [String: URL]()
        for part in ["vision_encoder", "token_embedding", "text_decoder"] {
            compiled[part] = try await CoreMLSession.compiledModel(folder: folder, manifest: manifest, part: part)
        }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let config = MLModelConfiguration()
        config.computeUnits = .all
        vision = try MLModel(contentsOf: compiled["vision_encoder"]!, configuration: config)
        embedder = try MLModel(contentsOf: compiled["token_embedding"]!, configuration: config)
        decoder = try MLModel(contentsOf: compiled["text_decoder"]!, configuration: config)
        loadS = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    /// .mlpackage -> .mlmodelc, compiled once per model file hash into Caches (compiling is not load time).
    private static func compiledModel(folder: URL, manifest: Manifest, part: String) async throws -> URL {
        let package = manifest.partFile(part)
        let key = manifest.files["\(package)/Data/com.apple.CoreML/model.mlmodel"]?.sha256 ?? manifest.sourceSha256 + part
        let caches = try FileManager.default.url(for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil,
                                                 create: true).appendingPathComponent("compiled", isDirectory: true)
        let target = caches.appendingPathComponent("\(part)-\(key.prefix(16)).mlmodelc")
        if FileManager.default.fileExists(atPath: target.path) {
            return target
        }
        do {
            let temporary = try await MLModel.compileModel(at: folder.appendingPathComponent(package))
            try FileManager.default.createDirectory(at: caches, withIntermediateDirectories: true)
            try FileManager.default.moveItem(at: temporary, to: target)
            return target
        } catch {
            throw BundleError("Core ML could not compile \(package) (\(error.localizedDescription)); re-export the "
                + "bundle with `alignkd export --target coreml`")
        }
    }

    private func name(_ part: String, _ list: String, _ index: Int) -> String {
        ((manifest.part(part)[list] as? [[String: Any]])?[index]["name"] as? String) ?? ""
    }

    func stop() {
        stopRequested = true
    }

    /// Greedy answer; `ignoreStops` decodes exactly maxNewTokens (the benchmark, as alignkd profile does).
    func ask(pixels: [Float], question: String, maxNewTokens: Int, ignoreStops: Bool = false,
             onText: (String) -> Void) throws -> Timings {
        stopRequested = false
        let split = try manifest.prompt.split(question)
        let before = (manifest.addBos ? [tokenizer.bosId] : []) + tokenizer.encode(split.beforeImage)
        let after = tokenizer.encode(split.afterImage)
        var t = Timings()
        let start = DispatchTime.now().uptimeNanoseconds
        let image = try encodeImage(pixels)
        t.visionEncodeS = seconds(since: start)
        let nPrompt = before.count + image.rows + after.count
        guard nPrompt < manifest.maxSeqLen else {
            throw BundleError("the prompt takes \(nPrompt) positions (text plus image tokens) but the model's context "
                + "is \(manifest.maxSeqLen); shorten the question")
        }
        t.prefillTokens = nPrompt
        let prefillStart = DispatchTime.now().uptimeNanoseconds
        let embeds = try Tensor.concatRows([try embed(before), image, try embed(after)])
        let state = decoder.makeState()
        var logits = try decode(embeds, past: 0, state: state)
        t.prefillS = seconds(since: prefillStart)
        var ids = [Int]()
        var firstToken: UInt64 = 0
        while true {
            let token = Tensor.argmax(logits)
            ids.append(token)
            if firstToken == 0 {
                firstToken = DispatchTime.now().uptimeNanoseconds
            }
            var text = tokenizer.decode(ids)
            if !ignoreStops, token == manifest.specialToken("eos") {
                t.stopReason = "eos"
            } else if !ignoreStops, let cut = manifest.prompt.stopAt(text) {
                text = String(text[..<cut])
                t.stopReason = "stop_string"
            }
            onText(text)
            if t.stopReason != "max_new_tokens" || ids.count >= maxNewTokens || stopRequested {
                break
            }
            let position = nPrompt + ids.count - 1
            if position >= manifest.maxSeqLen {
                t.stopReason = "context_full"
                break
            }
            logits = try decode(try embed([token]), past: position, state: state)
        }
        let end = DispatchTime.now().uptimeNanoseconds
        t.generatedTokens = ids.count
        t.ttftS = Double(firstToken - start) / 1e9
        t.decodeS = Double(end - firstToken) / 1e9
        return t
    }

    private func seconds(since start: UInt64) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }

    private func encodeImage(_ pixels: [Float]) throws -> Tensor {
        let size = preprocessor.spec.size
        let input = try Tensor.multiArray(pixels, shape: [1, 3, size, size])
        let out = try vision.prediction(from: MLDictionaryFeatureProvider(dictionary: [
            name("vision_encoder", "inputs", 0): MLFeatureValue(multiArray: input)]))
        return try Tensor(out, name("vision_encoder", "outputs", 0))
    }

    private func embed(_ ids: [Int]) throws -> Tensor {
        if ids.isEmpty {
            return Tensor(values: [], rows: 0, cols: 0)  // a template may put the placeholder first or last
        }
        let input = try MLMultiArray(shape: [1, NSNumber(value: ids.count)], dataType: .int32)
        for (i, id) in ids.enumerated() {
            input[i] = NSNumber(value: Int32(id))
        }
        let out = try embedder.prediction(from: MLDictionaryFeatureProvider(dictionary: [
            name("token_embedding", "inputs", 0): MLFeatureValue(multiArray: input)]))
        return try Tensor(out, name("token_embedding", "outputs", 0))
    }

    /// One decoder call on `embeds` after `past` cached positions; the logits of its last position.
    private func decode(_ embeds: Tensor, past: Int, state: MLState) throws -> [Float] {
        let seq = embeds.rows
        // alignkd.export.parts.causal_mask: row i sees positions <= past + i (additive, -inf elsewhere).
        var mask = [Float](repeating: 0, count: seq * (past + seq))
        for i in 0..<seq {
            for j in (past + i + 1)..<(past + seq) {
                mask[i * (past + seq) + j] = -.infinity
            }
        }
        let out = try decoder.prediction(from: MLDictionaryFeatureProvider(dictionary: [
            name("text_decoder", "inputs", 0): MLFeatureValue(multiArray: try embeds.multiArray()),
            name("text_decoder", "inputs", 1): MLFeatureValue(multiArray: try Tensor.multiArray(mask, shape: [1, 1, seq, past + seq])),
        ]), using: state)
        return try Tensor(out, name("text_decoder", "outputs", 0), lastRowOnly: true).values
    }
}

/// A [1, rows, cols] float tensor copied out of Core ML (whose outputs may be strided or float16).
struct Tensor {
    var values: [Float]
    let rows: Int
    let cols: Int

    init(values: [Float], rows: Int, cols: Int) {
        self.values = values
        self.rows = rows
        self.cols = cols
    }

    /// The output `name` as [rows, cols] (its last two dimensions); `lastRowOnly` copies just the final row
    /// (the logits a decoder step needs: a full prefill's logits are large).
    init(_ features: MLFeatureProvider, _ name: String, lastRowOnly: Bool = false) throws {
        guard let array = features.featureValue(for: name)?.multiArrayValue, array.shape.count >= 2 else {
            throw BundleError("the model has no output '\(name)' as the manifest says; re-export the bundle")
        }
        let shape = array.shape.map { $0.intValue }, strides = array.strides.map { $0.intValue }
        let allRows = shape[shape.count - 2], cols = shape[shape.count - 1]
        let rs = strides[strides.count - 2], cs = strides[strides.count - 1]
        let first = lastRowOnly ? allRows - 1 : 0
        let rows = allRows - first
        var values = [Float](repeating: 0, count: rows * cols)
        // Strides are in elements; Core ML may pad rows, so never assume a contiguous layout.
        func copy<T: MLShapedArrayScalar>(_ type: T.Type, _ convert: (T) -> Float) {
            array.withUnsafeBufferPointer(ofType: type) { buffer in
                for r in 0..<rows {
                    for c in 0..<cols {
                        values[r * cols + c] = convert(buffer[(first + r) * rs + c * cs])
                    }
                }
            }
        }
        switch array.dataType {
        case .float32: copy(Float.self) { $0 }
        case .double: copy(Double.self) { Float($0) }
        #if arch(arm64)
        case .float16: copy(Float16.self) { Float($0) }
        #endif
        default:
            for r in 0..<rows {
                for c in 0..<cols {
                    let index = Array(repeating: 0, count: shape.count - 2) + [first + r, c]
                    values[r * cols + c] = array[index.map { NSNumber(value: $0) }].floatValue
                }
            }
        }
        self.init(values: values, rows: rows, cols: cols)
    }

    func multiArray() throws -> MLMultiArray {
        try Tensor.multiArray(values, shape: [1, rows, cols])
    }

    static func multiArray(_ values: [Float], shape: [Int]) throws -> MLMultiArray {
        let array = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .float32)
        array.withUnsafeMutableBufferPointer(ofType: Float.self) { buffer, _ in
            for i in 0..<values.count {
                buffer[i] = values[i]
            }
        }
        return array
    }

    static func concatRows(_ parts: [Tensor]) -> Tensor {
        let nonEmpty = parts.filter { $0.rows > 0 }
        return Tensor(values: nonEmpty.flatMap { $0.values }, rows: nonEmpty.reduce(0) { $0 + $1.rows },
                      cols: nonEmpty.first?.cols ?? 0)
    }

    static func argmax(_ values: [Float]) -> Int {
        var best = 0
        for i in 1..<values.count where values[i] > values[best] {
            best = i
        }
        return best
    }
}
