import Foundation

/// A problem with a bundle or an input the user chose, as one sentence naming the input and the fix (alignkd's
/// AlignKDError rule); the app shows `message` as it is. Mirrors android_demo/core's BundleException.
public struct BundleError: Error, LocalizedError, Equatable {
    public let message: String

    public init(_ message: String) {
        self.message = message
    }

    public var errorDescription: String? { message }
}
