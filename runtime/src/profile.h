// `--profile`: the rounds of alignkd.runtime.profile, natively. Each of warmup + runs rounds loads the
// bundle afresh (manifest, sha256 of every file, tokenizer, program: timed as load_s), preprocesses the
// image, and generates exactly max_new_tokens tokens (eos and stop strings ignored). The summary is the
// median of each metric over the measured rounds, p90 and the raw rounds alongside, the worst round's
// peak RSS, and a device block: the same keys as `alignkd profile --json`.
#pragma once

#include "error.h"
#include "image.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

namespace alignkd {

struct ProfileOptions {
  int runs = 5, warmup = 1, max_new_tokens = 32;
  std::string prompt;
  bool raw_prompt = false;
};

Result<nlohmann::json> profile(const std::filesystem::path& bundle, const Image& image, const ProfileOptions& options);

// Where this runs: OS, CPU, cores, thread-pool size, runner and ExecuTorch versions.
nlohmann::json device_block();

}  // namespace alignkd
