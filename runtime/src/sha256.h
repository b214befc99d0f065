// SHA-256 of the bundle's files (OpenSSL), so a missing, truncated or modified file is refused by name
// before anything is loaded.
#pragma once

#include "error.h"
#include "manifest.h"

#include <filesystem>
#include <string>

namespace alignkd {

// Lower-case hex digest of a file's bytes.
Result<std::string> sha256_file(const std::filesystem::path& path);

// Every file the manifest lists exists with its recorded size and sha256.
Status verify_files(const Manifest& manifest);

}  // namespace alignkd
