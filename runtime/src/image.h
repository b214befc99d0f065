// Image decoding (PNG/JPEG via stb_image) and MobileVLM's preprocessing exactly as alignkd.data.image:
// pad to a square with the mean colour, PIL's bicubic resize of the shortest edge (reimplemented: the
// same fixed-point two-pass convolution, so pixels match PIL's), centre crop, rescale, normalise.
#pragma once

#include "error.h"
#include "manifest.h"

#include <cstdint>
#include <string>
#include <vector>

namespace alignkd {

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes per pixel
};

// Decodes a PNG/JPEG/BMP/... file to RGB (alpha dropped, grey replicated, as PIL's convert("RGB")).
Result<Image> load_image(const std::string& path);

// `expand2square`: the image centred on a square canvas of `colour`, side = the longer edge.
Image expand_to_square(const Image& img, const std::array<uint8_t, 3>& colour);

// PIL's Image.resize(..., BICUBIC) on an 8-bit RGB image.
Image resize_bicubic(const Image& img, int width, int height);

// pixel_values [3, size, size] float32 (planar), as CLIPImageProcessor returns them for one image.
std::vector<float> preprocess(const Image& img, const ImageSpec& spec);

// Writes pixel_values as a NumPy .npy file (float32, shape [1, 3, size, size]), for checking the
// preprocessing against alignkd's (export/golden/*_pixel_values.npy).
Status write_npy(const std::string& path, const std::vector<float>& pixels, int size);

}  // namespace alignkd
