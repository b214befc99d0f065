// Captures ExecuTorch's log through its platform abstraction layer (register_pal); see et_log.h.
#include "et_log.h"

#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace alignkd {
namespace {

std::mutex& log_mutex() {
  static std::mutex m;
  return m;
}

std::string& last_error() {
  static std::string s;
  return s;
}

bool verbose() {
  static const bool v = [] {
    const char* env = std::getenv("ALIGNKD_RUNNER_VERBOSE");
    return env != nullptr && env[0] != '\0' && env[0] != '0';
  }();
  return v;
}

void emit(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
          const char* message, size_t length) {
  std::string text(message, length);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  for (char& ch : text) {
    if (static_cast<unsigned char>(ch) < 0x20 || static_cast<unsigned char>(ch) > 0x7e) ch = '?';  // one printable line
  }
  if (verbose()) std::fprintf(stderr, "[executorch %c %s:%zu] %s\n", char(level), filename, line, text.c_str());
  if (level == kError || level == kFatal) {
    std::lock_guard<std::mutex> lock(log_mutex());
    last_error() = text;
  }
}

}  // namespace

void install_runtime_log() {
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(emit, __FILE__));
  executorch::runtime::runtime_init();
}

std::string last_runtime_error() {
  std::lock_guard<std::mutex> lock(log_mutex());
  return last_error();
}

void clear_runtime_error() {
  std::lock_guard<std::mutex> lock(log_mutex());
  last_error().clear();
}

}  // namespace alignkd
