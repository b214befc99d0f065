// The generation loop of alignkd.runtime.generation, step for step: prompt template, tokenization with
// the image placeholder, splice of the image tokens, prefill, decode with the KV position, stop on eos
// or on a stop string in the last three decoded tokens, answer text stripped of the stop string.
#pragma once

#include "error.h"
#include "manifest.h"
#include "model.h"
#include "tokenizer.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace alignkd {

struct GenerationConfig {
  int max_new_tokens = 512;
  double temperature = 0.0;  // 0 = greedy, as the official inference and every benchmark
  uint64_t seed = 0;
  bool use_stop_strings = true;  // profiling turns both off so every run decodes max_new_tokens
  bool stop_at_eos = true;
};

struct Timings {
  double vision_encode_s = 0, prefill_s = 0, ttft_s = 0, decode_s = 0;
  int64_t prefill_tokens = 0, decode_tokens = 0;
  std::optional<double> prefill_tok_s, decode_tok_s;
};

struct GenerationResult {
  std::string text;
  std::vector<int64_t> output_ids;  // the new token ids only
  std::vector<int64_t> input_ids;  // prompt ids with the image placeholder index
  std::string prompt;
  int64_t n_prompt_positions = 0;  // after the image splice
  std::string stop_reason;  // "eos", "stop_string", "max_new_tokens" or "context_full"
  Timings timings;
};

// The full prompt: the manifest's template with the question (or the question itself when raw), with
// exactly one image placeholder.
Result<std::string> build_prompt(const Manifest& manifest, const std::string& question, bool raw);

Result<GenerationResult> generate(Model& model, const Tokenizer& tokenizer, const Manifest& manifest,
                                  const std::string& prompt, const std::vector<float>& pixels,
                                  const GenerationConfig& config);

// The object `alignkd generate --json` prints (GenerationResult.to_dict()).
nlohmann::json to_json(const GenerationResult& result);
nlohmann::json to_json(const Timings& timings);

}  // namespace alignkd
