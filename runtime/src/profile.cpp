// Profiling rounds; see profile.h.
#include "profile.h"

#include "generation.h"
#include "manifest.h"
#include "model.h"
#include "sha256.h"
#include "threads.h"
#include "tokenizer.h"

#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <thread>

#ifndef ALIGNKD_RUNNER_VERSION
#define ALIGNKD_RUNNER_VERSION "0"
#endif
#ifndef ALIGNKD_EXECUTORCH_VERSION
#define ALIGNKD_EXECUTORCH_VERSION "unknown"
#endif

namespace alignkd {
namespace {

using nlohmann::json;

constexpr double kMiB = 1024.0 * 1024.0;  // "MB" here is MiB, as top and ps count (and profile.py)
const char* const kMetrics[] = {"load_s", "preprocess_s", "vision_encode_s", "prefill_s", "ttft_s",
                                "prefill_tok_s", "decode_s", "decode_tok_s", "peak_rss_mb"};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Linux lets a process reset its RSS high-water mark (VmHWM) by writing 5 to clear_refs, so each round's
// peak is its own. False where unavailable (then peaks are cumulative).
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return bool(f);
}

double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) * 1024 / kMiB;
  }
  return 0.0;
}

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  utsname u{};
  return uname(&u) == 0 ? u.machine : "unknown";
}

// numpy.percentile's default (linear interpolation between closest ranks).
double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(pos), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

Result<json> one_round(const std::filesystem::path& bundle, const Image& image, const ProfileOptions& opt,
                       double& size_mb) {
  const bool per_round = reset_peak_rss();
  const auto t0 = std::chrono::steady_clock::now();
  ALIGNKD_ASSIGN(Manifest manifest, read_manifest(bundle));
  ALIGNKD_CHECK_OK(verify_files(manifest));
  ALIGNKD_ASSIGN(Tokenizer tokenizer, Tokenizer::load(manifest));
  ALIGNKD_ASSIGN(auto model, Model::load(manifest));
  const double load_s = seconds_since(t0);
  const auto t1 = std::chrono::steady_clock::now();
  const std::vector<float> pixels = preprocess(image, manifest.image);
  const double preprocess_s = seconds_since(t1);
  ALIGNKD_ASSIGN(std::string prompt, build_prompt(manifest, opt.prompt, opt.raw_prompt));
  GenerationConfig config;
  config.max_new_tokens = opt.max_new_tokens;
  config.use_stop_strings = false;
  config.stop_at_eos = false;
  ALIGNKD_ASSIGN(GenerationResult result, generate(*model, tokenizer, manifest, prompt, pixels, config));
  size_mb = double(manifest.total_bytes) / kMiB;
  json run = {{"load_s", load_s}, {"preprocess_s", preprocess_s}};
  run.update(to_json(result.timings));
  run["peak_rss_mb"] = peak_rss_mb();
  run["peak_rss_per_round"] = per_round;
  return run;
}

}  // namespace

json device_block() {
  utsname u{};
  const std::string os = uname(&u) == 0 ? std::string(u.sysname) + "-" + u.release + "-" + u.machine : "unknown";
  return {{"name", "host"}, {"os", os}, {"cpu", cpu_name()}, {"cores", std::thread::hardware_concurrency()},
          {"threads", runtime_threads()}, {"runner", std::string("alignkd-runner ") + ALIGNKD_RUNNER_VERSION},
          {"executorch", ALIGNKD_EXECUTORCH_VERSION}};
}

Result<json> profile(const std::filesystem::path& bundle, const Image& image, const ProfileOptions& opt) {
  if (opt.runs < 1 || opt.warmup < 0 || opt.max_new_tokens < 2) {
    return Error{"runs=" + std::to_string(opt.runs) + ", warmup=" + std::to_string(opt.warmup) +
                 ", max_new_tokens=" + std::to_string(opt.max_new_tokens) +
                 ": need runs >= 1, warmup >= 0 and max_new_tokens >= 2 (decode speed needs a second token)"};
  }
  std::vector<json> raw;
  double size_mb = 0;
  for (int i = 0; i < opt.warmup + opt.runs; ++i) {
    ALIGNKD_ASSIGN(json run, one_round(bundle, image, opt, size_mb));
    if (i >= opt.warmup) raw.push_back(std::move(run));
  }
  json out = {{"model", bundle.string()}, {"kind", "executorch"}, {"runtime", "native"},
              {"device", device_block()}, {"runs", opt.runs}, {"warmup", opt.warmup}, {"dtype", "float32"},
              {"max_new_tokens", opt.max_new_tokens}, {"prompt", opt.prompt},
              {"prefill_tokens", raw[0]["prefill_tokens"]}, {"decode_tokens", raw[0]["decode_tokens"]},
              {"size_mb", size_mb}};
  json p90 = json::object();
  for (const char* m : kMetrics) {
    std::vector<double> v;
    for (const auto& r : raw) v.push_back(r[m].is_null() ? 0.0 : r[m].get<double>());
    out[m] = percentile(v, 50);
    p90[m] = percentile(v, 90);
  }
  double worst = 0;
  for (const auto& r : raw) worst = std::max(worst, r["peak_rss_mb"].get<double>());
  out["peak_rss_mb"] = worst;  // a peak: the worst round, not the median
  out["p90"] = p90;
  out["raw"] = raw;
  return out;
}

}  // namespace alignkd
