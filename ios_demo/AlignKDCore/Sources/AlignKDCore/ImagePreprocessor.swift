import Foundation

/// Decoded RGB pixels -> the float CHW tensor the vision encoder takes, per the manifest's image block: pad to a
/// square of the pad colour ("pad"), Pillow's bicubic resize of the short side to `size`, centre crop, then in
/// Float32 as numpy: `x = Float(u8 * rescale)`, `(x - mean) / std`. Mirrors ImagePreprocessor.java.
public struct ImagePreprocessor {
    public let spec: ImageSpec

    public init(spec: ImageSpec) {
        self.spec = spec
    }

    /// `rgb`: interleaved R, G, B bytes, row-major (count width*height*3). Returns 3*size*size floats (R, G, B planes).
    public func process(rgb: [UInt8], width: Int, height: Int) throws -> [Float] {
        guard width >= 1, height >= 1, rgb.count == width * height * 3 else {
            throw BundleError("the image is \(width)x\(height) with \(rgb.count) bytes; pick another photo "
                + "(it could not be decoded whole)")
        }
        var pixels = rgb.map { Int($0) }
        var w = width, h = height
        if spec.pad && w != h {
            let side = max(w, h)
            pixels = padToSquare(pixels, width: w, height: h, side: side)
            w = side
            h = side
        }
        let target = ImagePreprocessor.resizeTarget(width: w, height: h, size: spec.size)
        pixels = PilResample.resize(pixels, width: w, height: h, outWidth: target.width, outHeight: target.height)
        return normalise(crop(pixels, width: target.width, height: target.height))
    }

    /// transformers' get_resize_output_image_size(default_to_square=False).
    static func resizeTarget(width w: Int, height h: Int, size: Int) -> (width: Int, height: Int) {
        let short = min(w, h), long = max(w, h)
        let newLong = Int(Double(size * long) / Double(short))
        return w <= h ? (size, newLong) : (newLong, size)
    }

    private func padToSquare(_ rgb: [Int], width w: Int, height h: Int, side: Int) -> [Int] {
        var out = [Int](repeating: 0, count: side * side * 3)
        for i in 0..<(side * side) {
            out[i * 3] = spec.padColour[0]
            out[i * 3 + 1] = spec.padColour[1]
            out[i * 3 + 2] = spec.padColour[2]
        }
        let left = (side - w) / 2, top = (side - h) / 2
        for y in 0..<h {
            let src = y * w * 3, dst = ((y + top) * side + left) * 3
            out.replaceSubrange(dst..<(dst + w * 3), with: rgb[src..<(src + w * 3)])
        }
        return out
    }

    private func crop(_ rgb: [Int], width w: Int, height h: Int) -> [Int] {
        let size = spec.size
        let top = (h - size) / 2, left = (w - size) / 2
        var out = [Int]()
        out.reserveCapacity(size * size * 3)
        for y in 0..<size {
            let src = ((y + top) * w + left) * 3
            out.append(contentsOf: rgb[src..<(src + size * 3)])
        }
        return out
    }

    private func normalise(_ rgb: [Int]) -> [Float] {
        let plane = spec.size * spec.size
        var out = [Float](repeating: 0, count: 3 * plane)
        for ch in 0..<3 {
            let mean = Float(spec.mean[ch]), std = Float(spec.std[ch])
            for i in 0..<plane {
                // numpy: rescale in float64 then cast; normalise in float32.
                let x = Float(Double(rgb[i * 3 + ch]) * spec.rescaleFactor)
                out[ch * plane + i] = (x - mean) / std
            }
        }
        return out
    }
}
