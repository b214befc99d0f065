import Foundation

/// Pillow's bicubic resize of 8-bit RGB, step for step (libImaging/Resample.c): two separable passes,
/// horizontal then vertical, each rounding to uint8; the support widens by the scale when downscaling;
/// weights normalised in Double, then fixed point with 22 fractional bits. Mirrors PilResample.java, whose
/// output equals the bytes behind export/golden/'s pixel values.
enum PilResample {
    static let precisionBits = 32 - 8 - 2
    static let support = 2.0
    static let a = -0.5

    /// Interleaved RGB (0...255, count w*h*3) -> the same layout at outW x outH.
    static func resize(_ rgb: [Int], width w: Int, height h: Int, outWidth: Int, outHeight: Int) -> [Int] {
        var out = rgb
        var curW = w
        if outWidth != w {
            out = horizontal(out, width: curW, height: h, outWidth: outWidth)
            curW = outWidth
        }
        if outHeight != h {
            out = vertical(out, width: curW, height: h, outHeight: outHeight)
        }
        return out
    }

    static func bicubic(_ value: Double) -> Double {
        let x = abs(value)
        if x < 1.0 {
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        }
        if x < 2.0 {
            return (((x - 5) * x + 8) * x - 4) * a
        }
        return 0.0
    }

    struct Coefficients {
        let ksize: Int
        let bounds: [Int]  // per output sample: first input index, number of inputs
        let kernel: [Int]  // fixed point, kernel[o * ksize + i]
    }

    static func coefficients(inSize: Int, outSize: Int) -> Coefficients {
        let scale = Double(inSize) / Double(outSize)
        let filterscale = max(scale, 1.0)
        let support = PilResample.support * filterscale
        let ksize = Int(support.rounded(.up)) * 2 + 1
        var weights = [Double](repeating: 0, count: outSize * ksize)
        var bounds = [Int](repeating: 0, count: outSize * 2)
        for xx in 0..<outSize {
            let center = (Double(xx) + 0.5) * scale
            let ss = 1.0 / filterscale
            // Int(_:) truncates toward zero, as C's cast does; Pillow relies on that here.
            let xmin = max(Int(center - support + 0.5), 0)
            let xmax = min(Int(center + support + 0.5), inSize) - xmin
            var ww = 0.0
            for x in 0..<max(xmax, 0) {
                let w = bicubic((Double(x + xmin) - center + 0.5) * ss)
                weights[xx * ksize + x] = w
                ww += w
            }
            for x in 0..<max(xmax, 0) where ww != 0.0 {
                weights[xx * ksize + x] /= ww
            }
            bounds[xx * 2] = xmin
            bounds[xx * 2 + 1] = xmax
        }
        let one = Double(1 << precisionBits)
        let kernel = weights.map { w in Int(w < 0 ? -0.5 + w * one : 0.5 + w * one) }
        return Coefficients(ksize: ksize, bounds: bounds, kernel: kernel)
    }

    static func clip8(_ value: Int) -> Int {
        if value >= (1 << precisionBits << 8) {
            return 255
        }
        if value <= 0 {
            return 0
        }
        return value >> precisionBits
    }

    private static func horizontal(_ src: [Int], width w: Int, height h: Int, outWidth: Int) -> [Int] {
        let c = coefficients(inSize: w, outSize: outWidth)
        var out = [Int](repeating: 0, count: outWidth * h * 3)
        for y in 0..<h {
            for xx in 0..<outWidth {
                let xmin = c.bounds[xx * 2], xmax = c.bounds[xx * 2 + 1]
                for ch in 0..<3 {
                    var ss = 1 << (precisionBits - 1)
                    for x in 0..<xmax {
                        ss += src[(y * w + x + xmin) * 3 + ch] * c.kernel[xx * c.ksize + x]
                    }
                    out[(y * outWidth + xx) * 3 + ch] = clip8(ss)
                }
            }
        }
        return out
    }

    private static func vertical(_ src: [Int], width w: Int, height h: Int, outHeight: Int) -> [Int] {
        let c = coefficients(inSize: h, outSize: outHeight)
        var out = [Int](repeating: 0, count: w * outHeight * 3)
        for yy in 0..<outHeight {
            let ymin = c.bounds[yy * 2], ymax = c.bounds[yy * 2 + 1]
            for x in 0..<w {
                for ch in 0..<3 {
                    var ss = 1 << (precisionBits - 1)
                    for y in 0..<ymax {
                        ss += src[((y + ymin) * w + x) * 3 + ch] * c.kernel[yy * c.ksize + y]
                    }
                    out[(yy * w + x) * 3 + ch] = clip8(ss)
                }
            }
        }
        return out
    }
}
