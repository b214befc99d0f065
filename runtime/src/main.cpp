// alignkd-runner: run an alignkd ExecuTorch bundle outside Python (the same tokens as `alignkd generate`),
// or profile it (the same JSON as `alignkd profile --json`).
//
//   alignkd-runner --bundle DIR --image IMG --prompt Q [--max-new-tokens N] [--temperature T] [--json]
//   alignkd-runner --bundle DIR --image IMG --prompt Q --profile [--runs N] [--warmup N] [--json]
//
// Every failure is one line on stderr, "error: ...", and exit status 2 (user input) or 1 (internal).
#include "error.h"
#include "et_log.h"
#include "generation.h"
#include "image.h"
#include "manifest.h"
#include "model.h"
#include "profile.h"
#include "sha256.h"
#include "threads.h"
#include "tokenizer.h"

#include "../kernels/llama_kernels.h"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <map>
#include <string>

namespace {

using alignkd::Error;
using alignkd::Result;
using alignkd::Status;

constexpr const char* kUsage =
    "usage: alignkd-runner --bundle DIR --image IMG --prompt Q [--max-new-tokens N] [--temperature T] [--seed S]\n"
    "                      [--raw-prompt] [--threads N] [--json] [--etdump OUT.etdp] [--profile [--runs N] [--warmup N]]\n"
    "       alignkd-runner --bundle DIR --image IMG --dump-pixels OUT.npy   (preprocessing only)\n"
    "Runs an alignkd ExecuTorch bundle (greedy by default) and prints the answer, or with --json the object\n"
    "`alignkd generate --json` prints; --profile times load, vision encode, prefill and decode over rounds.\n";

struct Args {
  std::string bundle, image, prompt, dump_pixels, etdump;
  int max_new_tokens = -1;  // -1: 512, or 32 with --profile (as the Python commands)
  double temperature = 0.0;
  unsigned long long seed = 0;
  int runs = 5, warmup = 1;
  unsigned int threads = 0;
  bool raw_prompt = false, json = false, profile = false, help = false;
};

Result<long long> to_int(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  return Error{flag + " takes an integer, not '" + text + "'"};
}

Result<Args> parse(int argc, char** argv) {
  Args a;
  const std::map<std::string, bool> flags = {{"--raw-prompt", true}, {"--json", true}, {"--profile", true},
                                             {"--help", true}, {"-h", true}};
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (flags.count(key)) {
      if (key == "--raw-prompt") a.raw_prompt = true;
      if (key == "--json") a.json = true;
      if (key == "--profile") a.profile = true;
      if (key == "--help" || key == "-h") a.help = true;
      continue;
    }
    if (i + 1 >= argc) return Error{"option " + key + " is unknown or lacks its value; see alignkd-runner --help"};
    const std::string value = argv[++i];
    if (key == "--bundle") a.bundle = value;
    else if (key == "--image") a.image = value;
    else if (key == "--prompt") a.prompt = value;
    else if (key == "--dump-pixels") a.dump_pixels = value;
    else if (key == "--etdump") a.etdump = value;
    else if (key == "--temperature") {
      try {
        a.temperature = std::stod(value);
      } catch (const std::exception&) {
        return Error{"--temperature takes a number, not '" + value + "'"};
      }
    } else {
      ALIGNKD_ASSIGN(long long v, to_int(key, value));
      if (key == "--max-new-tokens") a.max_new_tokens = int(v);
      else if (key == "--seed") a.seed = static_cast<unsigned long long>(v);
      else if (key == "--runs") a.runs = int(v);
      else if (key == "--warmup") a.warmup = int(v);
      else if (key == "--threads") a.threads = static_cast<unsigned int>(v);
      else return Error{"option " + key + " is unknown; see alignkd-runner --help"};
    }
  }
  if (a.help) return a;
  const std::string prompt = a.dump_pixels.empty() ? a.prompt : "-";  // preprocessing needs no prompt
  for (const auto& [name, value] : {std::pair{"--bundle", a.bundle}, {"--image", a.image}, {"--prompt", prompt}}) {
    if (value.empty()) return Error{std::string(name) + " is required; see alignkd-runner --help"};
  }
  if (a.max_new_tokens == -1) a.max_new_tokens = a.profile ? 32 : 512;
  if (a.max_new_tokens < 1) return Error{"--max-new-tokens must be at least 1"};
  if (a.temperature < 0) return Error{"--temperature must be 0 (greedy) or positive"};
  if (a.profile && !a.etdump.empty()) return Error{"--etdump records one generation; drop --profile (tracing would skew its timings)"};
  return a;
}

Status run_generate(const Args& a) {
  ALIGNKD_ASSIGN(alignkd::Manifest manifest, alignkd::read_manifest(a.bundle));
  ALIGNKD_CHECK_OK(alignkd::verify_files(manifest));
  ALIGNKD_ASSIGN(alignkd::Image image, alignkd::load_image(a.image));
  ALIGNKD_ASSIGN(std::string prompt, alignkd::build_prompt(manifest, a.prompt, a.raw_prompt));
  ALIGNKD_ASSIGN(alignkd::Tokenizer tokenizer, alignkd::Tokenizer::load(manifest));
  ALIGNKD_ASSIGN(auto model, alignkd::Model::load(manifest, !a.etdump.empty()));
  const std::vector<float> pixels = alignkd::preprocess(image, manifest.image);
  alignkd::GenerationConfig config;
  config.max_new_tokens = a.max_new_tokens;
  config.temperature = a.temperature;
  config.seed = a.seed;
  ALIGNKD_ASSIGN(alignkd::GenerationResult result, alignkd::generate(*model, tokenizer, manifest, prompt, pixels, config));
  if (!a.etdump.empty()) ALIGNKD_CHECK_OK(model->write_etdump(a.etdump));
  if (a.json) {
    std::cout << alignkd::to_json(result).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else {
    std::cout << result.text << std::endl;
  }
  return {};
}

Status run_dump_pixels(const Args& a) {
  ALIGNKD_ASSIGN(alignkd::Manifest manifest, alignkd::read_manifest(a.bundle));
  ALIGNKD_ASSIGN(alignkd::Image image, alignkd::load_image(a.image));
  return alignkd::write_npy(a.dump_pixels, alignkd::preprocess(image, manifest.image), manifest.image.size);
}

Status run_profile(const Args& a) {
  ALIGNKD_ASSIGN(alignkd::Image image, alignkd::load_image(a.image));
  alignkd::ProfileOptions opt;
  opt.runs = a.runs;
  opt.warmup = a.warmup;
  opt.max_new_tokens = a.max_new_tokens;
  opt.prompt = a.prompt;
  opt.raw_prompt = a.raw_prompt;
  ALIGNKD_ASSIGN(nlohmann::json result, alignkd::profile(a.bundle, image, opt));
  if (a.json) {
    std::cout << result.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else {
    for (const char* m : {"load_s", "preprocess_s", "vision_encode_s", "prefill_s", "ttft_s", "prefill_tok_s",
                          "decode_s", "decode_tok_s", "peak_rss_mb", "size_mb"}) {
      std::printf("%-16s %10.4f\n", m, result[m].get<double>());
    }
  }
  return {};
}

int fail(const std::string& message, int code) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    auto args = parse(argc, argv);
    if (!args.ok()) return fail(args.error().message, 2);
    if (args.value().help) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    alignkd::install_runtime_log();
    if (alignkd::kernels::register_llama_kernels() != executorch::runtime::Error::Ok) {
      return fail("registering the llama custom-op kernels failed (already registered by another library?)", 1);
    }
    if (!alignkd::set_runtime_threads(args.value().threads)) {
      return fail("--threads " + std::to_string(args.value().threads) + " cannot be applied to ExecuTorch's thread pool", 2);
    }
    const Args& a = args.value();
    Status status = !a.dump_pixels.empty() ? run_dump_pixels(a) : a.profile ? run_profile(a) : run_generate(a);
    if (!status.ok()) return fail(status.error().message, 2);
    return 0;
  } catch (const std::exception& e) {
    return fail(std::string("internal error: ") + e.what(), 1);
  }
}
