import XCTest
@testable import AlignKDCore

/// The same vectors as android_demo/core's JUnit tests: export/golden/ (images, pixel values, prompt ids,
/// expected answers, real manifests of tiny bundles, the host's benchmark question) and the official tokenizer
/// probes of the tiny fixture.
final class GoldenTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let resources = repo.appendingPathComponent("export/golden")

    func json(_ url: URL) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
    }

    func golden() throws -> [String: Any] {
        try json(GoldenTests.repo.appendingPathComponent("export/golden/golden.json"))
    }

    func pairs() throws -> [[String: Any]] {
        try golden()["pairs"] as! [[String: Any]]
    }

    func manifest(_ name: String) throws -> Manifest {
        let url = GoldenTests.resources.appendingPathComponent("manifests/\(name)")
        return try Manifest.parse(Data(contentsOf: url), where: name)
    }

    func tokenizer() throws -> SentencePieceBPE {
        try SentencePieceBPE(modelData: Data(contentsOf: GoldenTests.repo.appendingPathComponent(
            "tests/fixtures/mobilevlm_official_tiny/checkpoint/tokenizer.model")))
    }

    /// A little-endian float32 C-order .npy, flattened, and its shape.
    func npy(_ url: URL) throws -> ([Float], [Int]) {
        let data = try Data(contentsOf: url)
        let bytes = [UInt8](data)
        XCTAssertEqual(Array(bytes[1..<6]), Array("NUMPY".utf8))
        let headerLen = bytes[6] == 1 ? Int(bytes[8]) | Int(bytes[9]) << 8
            : Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
        let start = bytes[6] == 1 ? 10 : 12
        let header = String(decoding: bytes[start..<(start + headerLen)], as: UTF8.self)
        XCTAssertTrue(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), header)
        let shapeText = header.components(separatedBy: "'shape': (")[1].components(separatedBy: ")")[0]
        let shape = shapeText.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        let body = bytes[(start + headerLen)...]
        var values = [Float](repeating: 0, count: shape.reduce(1, *))
        body.withUnsafeBytes { raw in
            for i in 0..<values.count {
                values[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)))
            }
        }
        return (values, shape)
    }

    func testPreprocessingMatchesPythonOnEveryGoldenPixel() throws {
        let spec = try manifest("executorch_8da4w.json").image
        for pair in try pairs() {
            let name = pair["image"] as! String
            let image = try RGBImage(contentsOf: GoldenTests.repo.appendingPathComponent("export/golden/\(name)"))
            let got = try ImagePreprocessor(spec: spec).process(rgb: image.rgb, width: image.width, height: image.height)
            let (want, shape) = try npy(GoldenTests.repo.appendingPathComponent(
                "export/golden/\(pair["pixel_values"] as! String)"))
            XCTAssertEqual(shape, [1, 3, spec.size, spec.size])
            XCTAssertEqual(got.count, want.count)
            let plane = spec.size * spec.size
            var worst = 0.0
            for i in 0..<want.count {
                let level = 1.0 / 255 / spec.std[i / plane]
                worst = max(worst, Double(abs(got[i] - want[i])) / level)
            }
            XCTAssertLessThanOrEqual(worst, 1.0001, "\(name): more than one 8-bit level from Python")
            XCTAssertLessThan(worst, 1e-3, "\(name): Pillow's arithmetic should be reproduced exactly")
        }
    }

    func testResizeTargetTruncatesLikeTransformers() {
        let tall = ImagePreprocessor.resizeTarget(width: 64, height: 96, size: 72)
        XCTAssertEqual([tall.width, tall.height], [72, 108])
        let wide = ImagePreprocessor.resizeTarget(width: 101, height: 67, size: 72)
        XCTAssertEqual([wide.width, wide.height], [108, 72])  // int(108.54)
    }

    func testBicubicKernel() {
        XCTAssertEqual(PilResample.bicubic(0.5), 0.5625, accuracy: 1e-12)
        XCTAssertEqual(PilResample.bicubic(1.5), -0.0625, accuracy: 1e-12)
        XCTAssertEqual(PilResample.bicubic(2.0), 0)
    }

    func testInputIdsEqualTheGoldenIds() throws {
        let m = try manifest("executorch_8da4w.json")
        let tok = try tokenizer()
        for pair in try pairs() {
            XCTAssertEqual(try m.prompt.render(pair["question"] as! String), pair["prompt"] as! String)
            let ids = m.prompt.inputIds(tokenizer: tok, prompt: pair["prompt"] as! String, addBos: m.addBos)
            XCTAssertEqual(ids, pair["input_ids"] as! [Int])
        }
    }

    func testEncodesTheOfficialTokenizerProbes() throws {
        let tok = try tokenizer()
        let expected = try json(GoldenTests.repo.appendingPathComponent("tests/fixtures/mobilevlm_official_tiny/expected.json"))
        for probe in expected["tokenizer_probe"] as! [[String: Any]] {
            XCTAssertEqual([tok.bosId] + tok.encode(probe["text"] as! String), probe["input_ids"] as! [Int],
                           "'\(probe["text"] as! String)'")
        }
    }

    func testDecodesTheGoldenAnswers() throws {
        let tok = try tokenizer()
        for pair in try pairs() {
            XCTAssertEqual(tok.decode(pair["expected_tokens"] as! [Int]).trimmingCharacters(in: .whitespacesAndNewlines),
                           pair["expected_text"] as! String)
        }
    }

    func testBenchmarkQuestionMatchesTheHostProfile() throws {
        let m = try manifest("executorch_8da4w.json")
        let tok = try tokenizer()
        let vectors = try json(GoldenTests.resources.appendingPathComponent("profile_prompt.json"))
        for c in vectors["cases"] as! [[String: Any]] {
            let q = try BenchmarkPrompt.fit(prompt: m.prompt, tokenizer: tok, addBos: m.addBos,
                                            numImageTokens: m.numImageTokens, target: c["target"] as! Int)
            XCTAssertEqual(q, c["question"] as! String)
            XCTAssertEqual(try BenchmarkPrompt.positions(prompt: m.prompt, tokenizer: tok, addBos: m.addBos,
                                                         question: q, numImageTokens: m.numImageTokens),
                           c["positions"] as! Int)
        }
    }

    func testSplitAndQuestionChecks() throws {
        let prompt = try manifest("executorch_8da4w.json").prompt
        let split = try prompt.split("Why?")
        XCTAssertTrue(split.beforeImage.hasSuffix("USER: "))
        XCTAssertEqual(split.afterImage, "\nWhy? ASSISTANT:")
        XCTAssertThrowsError(try prompt.render("  "))
        XCTAssertThrowsError(try prompt.render("see <image>"))
        XCTAssertNotNil(prompt.stopAt("hi</s>"))
        XCTAssertNil(prompt.stopAt("hi"))
    }
}

final class ManifestTests: XCTestCase {
    func manifestJSON(_ name: String = "coreml_fp16.json") throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: GoldenTests.resources.appendingPathComponent(
            "manifests/\(name)"))) as! [String: Any]
    }

    func message(_ object: [String: Any]) -> String {
        do {
            _ = try Manifest.parse(try JSONSerialization.data(withJSONObject: object), where: "manifest.json")
            XCTFail("accepted")
        } catch let error as BundleError {
            return error.message
        } catch {
            XCTFail("\(error)")
        }
        return ""
    }

    func testReadsTheCoreMLManifest() throws {
        let m = try Manifest.parse(try JSONSerialization.data(withJSONObject: try manifestJSON()), where: "m")
        XCTAssertEqual(m.target, "coreml")
        XCTAssertEqual(m.partFile("text_decoder"), "text_decoder.mlpackage")
        XCTAssertEqual(m.modelName, "checkpoint")
        XCTAssertEqual(m.image.size, 72)
        XCTAssertEqual(m.specialToken("eos"), 2)
        XCTAssertThrowsError(try m.requireTarget("executorch", where: "b"))
    }

    func testReadsTheGGUFManifestAndRefusesItForCoreML() throws {
        let json = try manifestJSON("gguf_q4_k_s.json")
        let m = try Manifest.parse(try JSONSerialization.data(withJSONObject: json), where: "m")
        XCTAssertEqual(m.target, "gguf")
        XCTAssertEqual(m.partFile("vision_encoder"), "mmproj.gguf")
        XCTAssertThrowsError(try m.requireTarget("coreml", where: "b"))
    }

    func testNamesMissingFieldsAndVersion() throws {
        var j = try manifestJSON()
        j.removeValue(forKey: "num_image_tokens")
        XCTAssertTrue(message(j).contains("at num_image_tokens"))
        j = try manifestJSON()
        j["format_version"] = 2
        XCTAssertTrue(message(j).contains("format_version 2"))
        j = try manifestJSON()
        var files = j["files"] as! [String: Any]
        files["../x"] = ["sha256": String(repeating: "0", count: 64), "bytes": 1]
        j["files"] = files
        XCTAssertTrue(message(j).contains("outside the bundle folder"))
    }

    func testVerifiesFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var j = try manifestJSON("executorch_8da4w.json")
        var table = [String: Any]()
        for rel in (j["files"] as! [String: Any]).keys {
            let url = dir.appendingPathComponent(rel)
            try Data("contents of \(rel)".utf8).write(to: url)
            table[rel] = ["sha256": try Manifest.sha256(of: url), "bytes": "contents of \(rel)".utf8.count]
        }
        j["files"] = table
        try JSONSerialization.data(withJSONObject: j).write(to: dir.appendingPathComponent("manifest.json"))
        let m = try Manifest.load(folder: dir, expectedTarget: "executorch")
        try m.verifyFiles(folder: dir)
        try Data("X".utf8).write(to: dir.appendingPathComponent("model.pte"))
        XCTAssertThrowsError(try m.verifyFiles(folder: dir)) { error in
            XCTAssertTrue((error as! BundleError).message.contains("model.pte has 1 bytes"))
        }
    }

    func testSha256OfAKnownString() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try Data("abc".utf8).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertEqual(try Manifest.sha256(of: url), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    func testProfileReportKeysAndPercentiles() throws {
        XCTAssertEqual(ProfileReport.percentile([4, 1, 3, 2], 90)!, 3.7, accuracy: 1e-12)
        var runs = [ProfileReport.Run]()
        for d in [1.0, 2.0, 4.0] {
            var r = ProfileReport.Run()
            r.prefillTokens = 188
            r.decodeTokens = 31
            r.metrics = ["load_s": 1, "preprocess_s": 0.01, "vision_encode_s": 0.2, "prefill_s": 0.5, "ttft_s": 0.75,
                         "decode_s": d, "peak_rss_mb": 100 * d]
            r.addRates()
            runs.append(r)
        }
        let out = ProfileReport.build(model: "b", kind: "coreml", device: ["name": "ios"], warmup: 1, dtype: "float16",
                                      maxNewTokens: 32, prompt: "q", sizeMb: 1, runs: runs)
        for m in ProfileReport.metrics {
            XCTAssertNotNil(out[m], m)
        }
        XCTAssertEqual(out["peak_rss_mb"] as! Double, 400)
        XCTAssertEqual(out["decode_tok_s"] as! Double, 15.5, accuracy: 1e-12)
        XCTAssertNoThrow(try ProfileReport.data(out))
    }
}
