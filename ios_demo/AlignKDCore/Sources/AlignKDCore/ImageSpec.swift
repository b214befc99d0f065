import Foundation

/// The manifest's "image" block (alignkd.data.image.ImageConfig.to_dict()). Mirrors ImageSpec.java.
public struct ImageSpec: Equatable {
    public static let pilBicubic = 3

    public let size: Int
    public let mean: [Double]
    public let std: [Double]
    public let resample: Int
    public let rescaleFactor: Double
    public let pad: Bool
    public let padColour: [Int]

    public init(size: Int, mean: [Double], std: [Double], resample: Int = ImageSpec.pilBicubic,
                rescaleFactor: Double, pad: Bool, padColour: [Int]) {
        self.size = size
        self.mean = mean
        self.std = std
        self.resample = resample
        self.rescaleFactor = rescaleFactor
        self.pad = pad
        self.padColour = padColour
    }

    static func fromJSON(_ image: [String: Any], where path: String) throws -> ImageSpec {
        guard let aspect = image["aspect_ratio"] as? String, aspect == "pad" || aspect == "square" else {
            throw BundleError("\(path) image.aspect_ratio is '\(image["aspect_ratio"] ?? "")' but this app knows "
                + "'pad' and 'square'; re-export the bundle with alignkd")
        }
        let resample = (image["resample"] as? NSNumber)?.intValue ?? -1
        guard resample == pilBicubic else {
            // Only bicubic is implemented: every MobileVLM / CLIP preprocessor uses it.
            throw BundleError("\(path) image.resample is \(resample) but this app implements only bicubic (3); "
                + "re-export the bundle with the CLIP preprocessor")
        }
        guard let size = (image["size"] as? NSNumber)?.intValue, size >= 1 else {
            throw BundleError("\(path) image.size is not a positive integer; re-export the bundle")
        }
        let mean = (image["mean"] as? [NSNumber])?.map { $0.doubleValue } ?? []
        let std = (image["std"] as? [NSNumber])?.map { $0.doubleValue } ?? []
        let pad = (image["pad_colour"] as? [NSNumber])?.map { $0.intValue } ?? []
        guard mean.count == 3, std.count == 3, pad.count == 3,
              let rescale = (image["rescale_factor"] as? NSNumber)?.doubleValue else {
            throw BundleError("\(path) image mean/std/pad_colour must hold 3 numbers each, with a rescale_factor; "
                + "re-export the bundle")
        }
        return ImageSpec(size: size, mean: mean, std: std, resample: resample, rescaleFactor: rescale,
                         pad: aspect == "pad", padColour: pad)
    }
}
