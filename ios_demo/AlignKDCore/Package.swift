// swift-tools-version:5.9
// AlignKDCore: everything of the iOS demo that needs no UI or Core ML (manifest checks, preprocessing, prompt,
// SentencePiece tokenizer, profile JSON). Its logic mirrors android_demo/core (Java), which is tested on this
// repository's CI; these XCTest cases run the same vectors on a Mac (.github/workflows/ios.yml).
import PackageDescription

let package = Package(
    name: "AlignKDCore",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [.library(name: "AlignKDCore", targets: ["AlignKDCore"])],
    targets: [
        .target(name: "AlignKDCore"),
        // The tests read the repository's export/golden/ in place (the vectors every reader shares).
        .testTarget(name: "AlignKDCoreTests", dependencies: ["AlignKDCore"]),
    ]
)
