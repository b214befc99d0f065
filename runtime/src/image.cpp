// Image decoding and preprocessing; see image.h.
#include "image.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>

namespace alignkd {
namespace {

// Pillow's fixed point: coefficients scaled by 2^22, accumulators start at one half (round to nearest).
constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {  // Keys cubic with a = -0.5, support 2 (Pillow's bicubic_filter)
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;  // per output pixel: first input pixel and how many contribute
  std::vector<int32_t> weights;  // out * ksize fixed-point weights
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for resampling [0, in_size) onto out_size pixels.
// When downscaling, the filter is stretched by the scale (antialiasing).
Coefficients coefficients(int in_size, int out_size) {
  const double scale = double(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  Coefficients c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(size_t(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const int xmin = std::max(int(center - support + 0.5), 0);  // int(): truncation, as Pillow's C cast
    const int xmax = std::min(int(center + support + 0.5), in_size) - xmin;
    double total = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = bicubic((x + xmin - center + 0.5) / filterscale);
      total += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double w = total != 0.0 ? k[x] / total : k[x];
      const double fixed = w * (1 << kPrecisionBits);
      c.weights[size_t(xx) * c.ksize + x] = int32_t(w < 0 ? -0.5 + fixed : 0.5 + fixed);
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

uint8_t clip8(int64_t acc) { return uint8_t(std::clamp<int64_t>(acc >> kPrecisionBits, 0, 255)); }

// One pass along x (horizontal) or y: each output sample is a weighted sum of input samples on its line.
Image resample_pass(const Image& in, int out_w, int out_h, bool horizontal) {
  const Coefficients c = coefficients(horizontal ? in.width : in.height, horizontal ? out_w : out_h);
  Image out{out_w, out_h, std::vector<uint8_t>(size_t(out_w) * out_h * 3)};
  for (int y = 0; y < out_h; ++y) {
    for (int x = 0; x < out_w; ++x) {
      const int o = horizontal ? x : y;
      const int32_t* k = &c.weights[size_t(o) * c.ksize];
      int64_t acc[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1)};
      for (int i = 0; i < c.count[o]; ++i) {
        const int src = c.first[o] + i;
        const uint8_t* p = &in.rgb[(size_t(horizontal ? y : src) * in.width + (horizontal ? src : x)) * 3];
        for (int ch = 0; ch < 3; ++ch) acc[ch] += int64_t(p[ch]) * k[i];
      }
      uint8_t* q = &out.rgb[(size_t(y) * out_w + x) * 3];
      for (int ch = 0; ch < 3; ++ch) q[ch] = clip8(acc[ch]);
    }
  }
  return out;
}

}  // namespace

Result<Image> load_image(const std::string& path) {
  int w = 0, h = 0, channels = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> data(stbi_load(path.c_str(), &w, &h, &channels, 3), stbi_image_free);
  if (!data) {
    FILE* probe = std::fopen(path.c_str(), "rb");
    if (probe == nullptr) return Error{"image file " + path + " does not exist; pass the path of a PNG/JPEG image"};
    std::fclose(probe);
    return Error{"cannot decode image " + path + " (" + stbi_failure_reason() + "); re-save it as PNG or JPEG"};
  }
  Image img{w, h, {}};
  img.rgb.assign(data.get(), data.get() + size_t(w) * h * 3);
  return img;
}

Image expand_to_square(const Image& img, const std::array<uint8_t, 3>& colour) {
  if (img.width == img.height) return img;
  const int side = std::max(img.width, img.height);
  Image out{side, side, std::vector<uint8_t>(size_t(side) * side * 3)};
  for (size_t i = 0; i < size_t(side) * side; ++i) std::copy(colour.begin(), colour.end(), &out.rgb[i * 3]);
  const int left = img.width < img.height ? (side - img.width) / 2 : 0;
  const int top = img.width < img.height ? 0 : (side - img.height) / 2;
  for (int y = 0; y < img.height; ++y) {
    std::copy_n(&img.rgb[size_t(y) * img.width * 3], size_t(img.width) * 3, &out.rgb[(size_t(y + top) * side + left) * 3]);
  }
  return out;
}

Image resize_bicubic(const Image& img, int width, int height) {
  // Pillow: horizontal pass first, then vertical; a pass whose size does not change is skipped.
  Image out = img;
  if (width != img.width) out = resample_pass(out, width, out.height, true);
  if (height != img.height) out = resample_pass(out, out.width, height, false);
  return out;
}

std::vector<float> preprocess(const Image& input, const ImageSpec& spec) {
  const Image img = spec.aspect_ratio == "pad" ? expand_to_square(input, spec.pad_colour) : input;
  // transformers' get_resize_output_image_size(default_to_square=False): the short edge becomes `size`,
  // the long edge int(size * long / short).
  const bool wide = img.width >= img.height;
  const int short_edge = wide ? img.height : img.width, long_edge = wide ? img.width : img.height;
  const int new_long = int(double(spec.size) * long_edge / short_edge);
  const int w = wide ? new_long : spec.size, h = wide ? spec.size : new_long;
  const Image resized = resize_bicubic(img, w, h);
  const int top = (h - spec.size) / 2, left = (w - spec.size) / 2;  // centre crop
  const size_t plane = size_t(spec.size) * spec.size;
  std::vector<float> pixels(3 * plane);
  for (int y = 0; y < spec.size; ++y) {
    for (int x = 0; x < spec.size; ++x) {
      const uint8_t* p = &resized.rgb[(size_t(y + top) * w + (x + left)) * 3];
      for (int c = 0; c < 3; ++c) {
        const double v = p[c] * spec.rescale_factor;
        pixels[c * plane + size_t(y) * spec.size + x] = float((v - spec.mean[c]) / spec.std[c]);
      }
    }
  }
  return pixels;
}

Status write_npy(const std::string& path, const std::vector<float>& pixels, int size) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, " + std::to_string(size) + ", " +
                       std::to_string(size) + "), }";
  // NPY 1.0: magic, version, little-endian header length; header padded with spaces to a 64-byte boundary.
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) return Error{"cannot write " + path + "; pass a writable path to --dump-pixels"};
  const uint16_t len = uint16_t(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.put(char(len & 0xff)).put(char(len >> 8));
  out << header;
  out.write(reinterpret_cast<const char*>(pixels.data()), std::streamsize(pixels.size() * sizeof(float)));
  if (!out) return Error{"cannot write " + path + " (disk full?)"};
  return {};
}

}  // namespace alignkd
