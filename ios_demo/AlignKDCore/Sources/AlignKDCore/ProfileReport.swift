import Foundation

/// The JSON `alignkd profile --json` writes, filled from the phone's runs, so `alignkd profile --device ios`
/// reads it like a host result: per-metric median and p90 (numpy's linear percentile), peak RSS as the worst
/// run, the raw runs, a `device` block. Mirrors ProfileReport.java (whose output alignkd's formatter is tested on).
public enum ProfileReport {
    /// alignkd.runtime.profile.METRICS, in its order.
    public static let metrics = ["load_s", "preprocess_s", "vision_encode_s", "prefill_s", "ttft_s", "prefill_tok_s",
                                 "decode_s", "decode_tok_s", "peak_rss_mb"]

    public struct Run {
        public var metrics = [String: Double]()
        public var prefillTokens = 0
        public var decodeTokens = 0
        public var peakRssPerRound = false

        public init() {}

        /// The rates as alignkd's generation loop derives them (nil where undefined).
        public mutating func addRates() {
            if let p = metrics["prefill_s"], p > 0 { metrics["prefill_tok_s"] = Double(prefillTokens) / p }
            if let d = metrics["decode_s"], d > 0, decodeTokens > 0 { metrics["decode_tok_s"] = Double(decodeTokens) / d }
        }

        func json() -> [String: Any] {
            var out: [String: Any] = ["prefill_tokens": prefillTokens, "decode_tokens": decodeTokens,
                                      "peak_rss_per_round": peakRssPerRound]
            for m in ProfileReport.metrics {
                out[m] = metrics[m].map { $0 as Any } ?? NSNull()
            }
            return out
        }
    }

    public static func build(model: String, kind: String, device: [String: Any], warmup: Int, dtype: String,
                             maxNewTokens: Int, prompt: String, sizeMb: Double, runs: [Run]) -> [String: Any] {
        precondition(!runs.isEmpty, "a profile needs at least one measured run")
        var out: [String: Any] = [
            "model": model, "kind": kind, "device": device, "runs": runs.count, "warmup": warmup, "dtype": dtype,
            "max_new_tokens": maxNewTokens, "prompt": prompt, "prefill_tokens": runs[0].prefillTokens,
            "decode_tokens": runs[0].decodeTokens, "size_mb": sizeMb,
        ]
        var p90 = [String: Any]()
        for m in metrics {
            let values = runs.compactMap { $0.metrics[m] }.filter { $0.isFinite }
            out[m] = percentile(values, 50).map { $0 as Any } ?? NSNull()
            p90[m] = percentile(values, 90).map { $0 as Any } ?? NSNull()
        }
        // A peak: the worst round, not the median.
        out["peak_rss_mb"] = runs.compactMap { $0.metrics["peak_rss_mb"] }.max().map { $0 as Any } ?? NSNull()
        out["p90"] = p90
        out["raw"] = runs.map { $0.json() }
        return out
    }

    /// numpy.percentile's default (linear) method; nil for no values.
    public static func percentile(_ values: [Double], _ q: Double) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let pos = Double(sorted.count - 1) * q / 100
        let lo = Int(pos.rounded(.down)), hi = Int(pos.rounded(.up))
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - Double(lo))
    }

    public static func data(_ report: [String: Any]) throws -> Data {
        try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
    }
}
