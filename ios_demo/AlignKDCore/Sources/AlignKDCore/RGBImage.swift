#if canImport(CoreGraphics)
import CoreGraphics
import Foundation
import ImageIO

/// Decoded pixels as interleaved 8-bit RGB, the input of ImagePreprocessor. Drawn in the image's own RGB colour
/// space when it has one, so a PNG's bytes come through unchanged (what PIL reads); otherwise in sRGB.
public struct RGBImage {
    public let rgb: [UInt8]
    public let width: Int
    public let height: Int

    public init(cgImage image: CGImage) throws {
        let w = image.width, h = image.height
        let space = image.colorSpace.flatMap { $0.model == .rgb ? $0 : nil }
            ?? CGColorSpace(name: CGColorSpace.sRGB)!
        var rgba = [UInt8](repeating: 0, count: w * h * 4)
        let drawn: Bool = rgba.withUnsafeMutableBytes { buffer in
            guard let context = CGContext(data: buffer.baseAddress, width: w, height: h, bitsPerComponent: 8,
                                          bytesPerRow: w * 4, space: space,
                                          bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }
            context.draw(image, in: CGRect(x: 0, y: 0, width: w, height: h))
            return true
        }
        guard drawn, w > 0, h > 0 else {
            throw BundleError("the photo could not be decoded (\(w)x\(h)); pick a JPEG or PNG image")
        }
        var rgb = [UInt8](repeating: 0, count: w * h * 3)
        for i in 0..<(w * h) {
            rgb[i * 3] = rgba[i * 4]
            rgb[i * 3 + 1] = rgba[i * 4 + 1]
            rgb[i * 3 + 2] = rgba[i * 4 + 2]
        }
        self.rgb = rgb
        self.width = w
        self.height = h
    }

    public init(contentsOf url: URL) throws {
        guard let source = CGImageSourceCreateWithURL(url as CFURL, nil),
              let image = CGImageSourceCreateImageAtIndex(source, 0, nil) else {
            throw BundleError("cannot decode image \(url.path); re-save it as PNG or JPEG")
        }
        try self.init(cgImage: image)
    }
}
#endif
