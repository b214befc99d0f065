// SentencePiece tokenizer with the legacy slow-LlamaTokenizer chunking of alignkd.data.tokenizer, and
// the image-placeholder tokenization of alignkd.data.templates.tokenize_with_image, id for id.
#pragma once

#include "error.h"
#include "manifest.h"

#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace alignkd {

class Tokenizer {
 public:
  static Result<Tokenizer> load(const Manifest& manifest);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // `tokenizer(text).input_ids`: the text split at the special pieces (<s>, </s>, <unk>), each other
  // chunk encoded alone (so each gets the dummy-prefix space), BOS in front when add_special.
  std::vector<int64_t> encode(const std::string& text, bool add_special = true) const;

  // The prompt's ids with one `image_token_index` per placeholder: each placeholder-separated chunk
  // tokenized alone, BOS kept once (the official tokenizer_image_token).
  std::vector<int64_t> tokenize_with_image(const std::string& prompt, const std::string& placeholder,
                                           int64_t image_token_index) const;

  // Text of the ids, special tokens skipped (batch_decode(..., skip_special_tokens=True)).
  std::string decode(const std::vector<int64_t>& ids) const;

  int64_t bos() const { return bos_; }
  int64_t eos() const { return eos_; }

 private:
  Tokenizer() = default;
  bool is_special(int64_t id) const { return id == bos_ || id == eos_ || id == unk_; }

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<std::pair<std::string, int64_t>> specials_;  // piece, id; longest piece first
  int64_t bos_ = 1, eos_ = 2, unk_ = 0;
  bool add_bos_ = true;
};

}  // namespace alignkd
