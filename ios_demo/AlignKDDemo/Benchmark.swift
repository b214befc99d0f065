import AlignKDCore
import CoreGraphics
import Foundation

/// Benchmark mode, as `alignkd profile` on the host: warmup + runs rounds, each loading the bundle afresh
/// (timed; the compiled models are cached), preprocessing a synthetic picture (timed) and answering the fixed
/// benchmark question (~190 prefill positions, the host's question for the same tokenizer) with exactly
/// maxNewTokens tokens. The JSON goes to Documents/alignkd_profile.json, where `alignkd profile --device ios`
/// reads it (or pass it with --from-json).
@available(iOS 18.0, macOS 15.0, *)
enum Benchmark {
    static let output = "alignkd_profile.json"

    static func run(bundle: URL, runs: Int, warmup: Int, maxNewTokens: Int, outDir: URL,
                    progress: (String) -> Void) async throws -> URL {
        guard runs >= 1, warmup >= 0, maxNewTokens >= 2 else {
            throw BundleError("runs=\(runs), warmup=\(warmup), max_new_tokens=\(maxNewTokens): need runs >= 1, "
                + "warmup >= 0 and max_new_tokens >= 2 (decode speed needs a second token)")
        }
        progress("verifying \(bundle.lastPathComponent)")
        try Manifest.load(folder: bundle, expectedTarget: "coreml").verifyFiles(folder: bundle)
        var measured = [ProfileReport.Run]()
        var question: String?
        var manifest: Manifest?
        let image = try RGBImage(cgImage: syntheticImage(size: 336))
        for i in 0..<(warmup + runs) {
            let session = try await CoreMLSession(folder: bundle, verify: false)
            manifest = session.manifest
            if question == nil {
                question = try BenchmarkPrompt.fit(prompt: session.manifest.prompt, tokenizer: session.tokenizer,
                                                   addBos: session.manifest.addBos,
                                                   numImageTokens: session.manifest.numImageTokens)
            }
            let t0 = DispatchTime.now().uptimeNanoseconds
            let pixels = try session.preprocessor.process(rgb: image.rgb, width: image.width, height: image.height)
            let preprocessS = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            let t = try session.ask(pixels: pixels, question: question!, maxNewTokens: maxNewTokens, ignoreStops: true,
                                    onText: { _ in })
            var run = ProfileReport.Run()
            run.prefillTokens = t.prefillTokens
            run.decodeTokens = max(t.generatedTokens - 1, 0)
            run.metrics = ["load_s": session.loadS, "preprocess_s": preprocessS, "vision_encode_s": t.visionEncodeS,
                           "prefill_s": t.prefillS, "ttft_s": t.ttftS, "decode_s": t.decodeS]
            if let peak = peakRssMb() {
                run.metrics["peak_rss_mb"] = peak
            }
            run.addRates()
            progress(String(format: "%@ %ld: ttft %.3f s, decode %.1f tok/s", i < warmup ? "warm-up" : "run", i + 1,
                            t.ttftS, run.metrics["decode_tok_s"] ?? 0))
            if i >= warmup {
                measured.append(run)
            }
        }
        let report = ProfileReport.build(model: bundle.path, kind: manifest!.target, device: device(), warmup: warmup,
                                         dtype: manifest!.quantScheme == "fp32" ? "float32" : "float16",
                                         maxNewTokens: maxNewTokens, prompt: question!, sizeMb: manifest!.sizeMb,
                                         runs: measured)
        let url = outDir.appendingPathComponent(output)
        try ProfileReport.data(report).write(to: url)
        print("ALIGNKD_PROFILE \(url.path)")  // scripted runs look for this line in the device console
        return url
    }

    /// The device block: alignkd profile's keys (name, os, cpu, cores, threads) plus the phone's own.
    static func device() -> [String: Any] {
        let machine = sysctl("hw.machine")
        let os = ProcessInfo.processInfo.operatingSystemVersion
        let version = "\(os.majorVersion).\(os.minorVersion).\(os.patchVersion)"
        return ["name": "ios", "os": "iOS \(version)", "cpu": machine, "cores": ProcessInfo.processInfo.activeProcessorCount,
                "threads": "auto", "model": machine, "ios_version": version, "runtime": "Core ML (MLModel + MLState)",
                "compute_units": "all"]
    }

    static func sysctl(_ name: String) -> String {
        var size = 0
        sysctlbyname(name, nil, &size, nil, 0)
        var value = [CChar](repeating: 0, count: max(size, 1))
        sysctlbyname(name, &value, &size, nil, 0)
        return String(cString: value)
    }

    /// The process's peak resident size (MiB). iOS cannot reset it, so peaks are cumulative over the rounds.
    static func peakRssMb() -> Double? {
        var info = mach_task_basic_info()
        var count = mach_msg_type_number_t(MemoryLayout<mach_task_basic_info>.size / MemoryLayout<natural_t>.size)
        let status = withUnsafeMutablePointer(to: &info) { pointer in
            pointer.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
                task_info(mach_task_self_, task_flavor_t(MACH_TASK_BASIC_INFO), $0, &count)
            }
        }
        return status == KERN_SUCCESS ? Double(info.resident_size_max) / Double(1 << 20) : nil
    }

    /// A fixed picture (gradient, a red disc, a blue square) like alignkd profile's synthetic image.
    static func syntheticImage(size: Int) -> CGImage {
        let space = CGColorSpace(name: CGColorSpace.sRGB)!
        let context = CGContext(data: nil, width: size, height: size, bitsPerComponent: 8, bytesPerRow: size * 4,
                                space: space, bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)!
        let pixels = context.data!.bindMemory(to: UInt8.self, capacity: size * size * 4)
        for y in 0..<size {
            for x in 0..<size {
                // CGContext rows start at the top in memory for a bitmap context.
                let i = (y * size + x) * 4
                pixels[i] = UInt8(x * 255 / size)
                pixels[i + 1] = UInt8(y * 255 / size)
                pixels[i + 2] = 128
            }
        }
        let s = CGFloat(size)
        context.setFillColor(red: 220 / 255, green: 30 / 255, blue: 30 / 255, alpha: 1)
        context.fillEllipse(in: CGRect(x: s / 8, y: s / 2, width: s * 3 / 8, height: s * 3 / 8))
        context.setFillColor(red: 30 / 255, green: 30 / 255, blue: 220 / 255, alpha: 1)
        context.fill(CGRect(x: s / 2, y: s / 8, width: s * 3 / 8, height: s * 3 / 8))
        return context.makeImage()!
    }
}
