import SwiftUI

/// The alignkd iOS demo: a Core ML bundle, a photo, a question, a streamed answer with its timings; and a
/// benchmark mode for `alignkd profile --device ios` (Benchmark button, or launch arguments
/// `-bundle NAME -benchmark YES [-runs 5 -warmup 1 -max_new_tokens 32]`).
@main
struct AlignKDDemoApp: App {
    var body: some Scene {
        WindowGroup {
            ContentView()
        }
    }
}
