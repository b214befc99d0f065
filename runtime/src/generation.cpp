// The generation loop; see generation.h.
#include "generation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

namespace alignkd {
namespace {

constexpr int kStopWindow = 3;  // the official KeywordsStoppingCriteria decodes at most the last 3 tokens

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

std::string replace_first(std::string text, const std::string& what, const std::string& with) {
  const size_t at = text.find(what);
  return at == std::string::npos ? text : text.replace(at, what.size(), with);
}

std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(ws) - b + 1);
}

int64_t argmax(const std::vector<float>& logits) {  // first maximum, as torch.argmax
  return std::max_element(logits.begin(), logits.end()) - logits.begin();
}

int64_t sample(const std::vector<float>& logits, double temperature, std::mt19937_64& rng) {
  const float top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  for (size_t i = 0; i < p.size(); ++i) p[i] = std::exp((logits[i] - top) / temperature);
  return std::discrete_distribution<int64_t>(p.begin(), p.end())(rng);
}

// Text chunks embedded, the image tokens put where the placeholder index stands.
Result<std::vector<float>> splice(Model& model, const std::vector<int64_t>& ids, int64_t image_index,
                                  const std::vector<float>& pixels, int size, double& vision_s) {
  std::vector<float> embeds;
  std::vector<int64_t> chunk;
  auto flush = [&]() -> Status {
    if (chunk.empty()) return {};
    ALIGNKD_ASSIGN(auto e, model.embed(chunk));
    embeds.insert(embeds.end(), e.begin(), e.end());
    chunk.clear();
    return {};
  };
  for (int64_t id : ids) {
    if (id != image_index) {
      chunk.push_back(id);
      continue;
    }
    ALIGNKD_CHECK_OK(flush());
    const auto t0 = std::chrono::steady_clock::now();
    ALIGNKD_ASSIGN(auto image_tokens, model.encode_image(pixels, size));
    vision_s += seconds_since(t0);
    embeds.insert(embeds.end(), image_tokens.begin(), image_tokens.end());
  }
  ALIGNKD_CHECK_OK(flush());
  return embeds;
}

}  // namespace

Result<std::string> build_prompt(const Manifest& manifest, const std::string& question, bool raw) {
  const std::string& tag = manifest.prompt.placeholder;
  std::string prompt = question;
  if (!raw) {
    const std::string& text = manifest.prompt.text;
    if (text.find("{question}") == std::string::npos || count(text, tag) != 1) {
      return Error{"the manifest's prompt text has no {question} slot or not exactly one " + tag + "; re-export the bundle"};
    }
    // As user_message(): a question that already holds the placeholder keeps it where the user put it.
    prompt = count(question, tag) > 0 ? replace_first(text, tag + "\n{question}", question)
                                      : replace_first(text, "{question}", question);
  }
  const size_t tags = count(prompt, tag);
  if (tags == 0) {
    return Error{"an image was given but the raw prompt has no " + tag + " placeholder; put " + tag + " where the image goes"};
  }
  if (tags > 1) {
    return Error{"the prompt has " + std::to_string(tags) + " " + tag + " placeholders but 1 image was given; use one per image"};
  }
  return prompt;
}

Result<GenerationResult> generate(Model& model, const Tokenizer& tokenizer, const Manifest& manifest,
                                  const std::string& prompt, const std::vector<float>& pixels,
                                  const GenerationConfig& config) {
  GenerationResult r;
  r.prompt = prompt;
  r.input_ids = tokenizer.tokenize_with_image(prompt, manifest.prompt.placeholder, manifest.prompt.image_token_index);
  Timings& t = r.timings;
  ALIGNKD_ASSIGN(auto embeds, splice(model, r.input_ids, manifest.prompt.image_token_index, pixels,
                                     manifest.image.size, t.vision_encode_s));
  r.n_prompt_positions = int64_t(embeds.size()) / model.hidden_size();
  if (r.n_prompt_positions >= model.max_seq_len()) {
    return Error{"the prompt takes " + std::to_string(r.n_prompt_positions) +
                 " positions (text plus image tokens) but the model's context is " +
                 std::to_string(model.max_seq_len()) + "; shorten the prompt"};
  }
  std::mt19937_64 rng(config.seed);
  const auto t0 = std::chrono::steady_clock::now();
  ALIGNKD_ASSIGN(auto logits, model.decode(embeds, 0));
  t.prefill_s = seconds_since(t0);
  r.stop_reason = "max_new_tokens";
  const auto t1 = std::chrono::steady_clock::now();
  std::optional<double> first_token_s;
  for (int step = 0; step < config.max_new_tokens; ++step) {
    const int64_t tok = config.temperature <= 0 ? argmax(logits) : sample(logits, config.temperature, rng);
    r.output_ids.push_back(tok);
    if (!first_token_s) first_token_s = seconds_since(t0);
    if (tok == tokenizer.eos() && config.stop_at_eos) {
      r.stop_reason = "eos";
      break;
    }
    if (config.use_stop_strings) {
      const size_t n = r.output_ids.size(), from = n > size_t(kStopWindow) ? n - kStopWindow : 0;
      const std::string tail = tokenizer.decode({r.output_ids.begin() + from, r.output_ids.end()});
      const bool hit = std::any_of(manifest.prompt.stop_strings.begin(), manifest.prompt.stop_strings.end(),
                                   [&](const std::string& s) { return !s.empty() && tail.find(s) != std::string::npos; });
      if (hit) {
        r.stop_reason = "stop_string";
        break;
      }
    }
    if (step == config.max_new_tokens - 1) break;
    const int64_t position = r.n_prompt_positions + int64_t(r.output_ids.size()) - 1;
    if (position >= model.max_seq_len()) {
      r.stop_reason = "context_full";
      break;
    }
    ALIGNKD_ASSIGN(auto next, model.embed({tok}));
    ALIGNKD_ASSIGN(logits, model.decode(next, position));
  }
  t.decode_s = seconds_since(t1);
  std::string text = strip(tokenizer.decode(r.output_ids));
  if (config.use_stop_strings) {
    for (const auto& s : manifest.prompt.stop_strings) {
      if (!s.empty() && text.size() >= s.size() && text.compare(text.size() - s.size(), s.size(), s) == 0) {
        text.resize(text.size() - s.size());
      }
    }
  }
  r.text = strip(text);
  const int64_t n_decoded = std::max<int64_t>(int64_t(r.output_ids.size()) - 1, 0);
  t.ttft_s = t.vision_encode_s + first_token_s.value_or(t.prefill_s);
  t.prefill_tokens = r.n_prompt_positions;
  t.decode_tokens = n_decoded;
  if (t.prefill_s > 0) t.prefill_tok_s = double(r.n_prompt_positions) / t.prefill_s;
  if (n_decoded > 0 && t.decode_s > 0) t.decode_tok_s = double(n_decoded) / t.decode_s;
  return r;
}

nlohmann::json to_json(const Timings& t) {
  auto optional = [](const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
  return {{"vision_encode_s", t.vision_encode_s}, {"prefill_s", t.prefill_s},
          {"ttft_s", t.ttft_s}, {"decode_s", t.decode_s},
          {"prefill_tokens", t.prefill_tokens}, {"decode_tokens", t.decode_tokens},
          {"prefill_tok_s", optional(t.prefill_tok_s)}, {"decode_tok_s", optional(t.decode_tok_s)}};
}

nlohmann::json to_json(const GenerationResult& r) {
  return {{"text", r.text}, {"output_ids", r.output_ids}, {"input_ids", r.input_ids},
          {"prompt", r.prompt}, {"n_prompt_positions", r.n_prompt_positions},
          {"stop_reason", r.stop_reason}, {"timings", to_json(r.timings)}};
}

}  // namespace alignkd
