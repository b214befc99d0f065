// File hashing and verification; see sha256.h.
#include "sha256.h"

#include <openssl/evp.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <memory>
#include <vector>

namespace alignkd {

Result<std::string> sha256_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Error{"cannot open " + path.string() + " to check its sha256"};
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return Error{"OpenSSL could not start a sha256"};
  std::vector<char> block(1 << 22);
  while (in) {
    in.read(block.data(), std::streamsize(block.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), block.data(), size_t(in.gcount()));
  }
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), digest.data(), &n);
  std::string hex;
  char byte[3];
  for (unsigned int i = 0; i < n; ++i) {
    std::snprintf(byte, sizeof byte, "%02x", digest[i]);
    hex += byte;
  }
  return hex;
}

Status verify_files(const Manifest& manifest) {
  for (const auto& entry : manifest.files) {
    const auto path = manifest.folder / entry.path;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) {
      return Error{"bundle file " + path.string() + " is missing; copy the whole bundle folder again or re-export it"};
    }
    const auto size = std::filesystem::file_size(path, ec);
    if (ec || size != entry.bytes) {
      return Error{"bundle file " + path.string() + " has " + std::to_string(size) + " bytes but the manifest says " +
                   std::to_string(entry.bytes) + " (truncated or replaced); copy it again or re-export the bundle"};
    }
    ALIGNKD_ASSIGN(std::string digest, sha256_file(path));
    if (digest != entry.sha256) {
      return Error{"bundle file " + path.string() +
                   " does not match its sha256 in the manifest (modified or corrupt); copy it again or re-export the bundle"};
    }
  }
  return {};
}

}  // namespace alignkd
