// Tokenizer; see tokenizer.h.
#include "tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>

namespace alignkd {

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<Tokenizer> Tokenizer::load(const Manifest& manifest) {
  Tokenizer tok;
  tok.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto path = manifest.folder / manifest.tokenizer_file;
  const auto status = tok.sp_->Load(path.string());
  if (!status.ok()) {
    return Error{path.string() + " is not a SentencePiece model (" + status.ToString() + "); copy the bundle again or re-export it"};
  }
  tok.bos_ = manifest.bos;
  tok.eos_ = manifest.eos;
  tok.unk_ = manifest.unk;
  tok.add_bos_ = manifest.add_bos;
  for (int64_t id : {tok.bos_, tok.eos_, tok.unk_}) {
    if (id < 0 || id >= tok.sp_->GetPieceSize()) {
      return Error{"manifest.json's special token id " + std::to_string(id) + " is outside the tokenizer's " +
                   std::to_string(tok.sp_->GetPieceSize()) + " pieces; re-export the bundle"};
    }
    tok.specials_.emplace_back(tok.sp_->IdToPiece(int(id)), id);
  }
  // Longest first, as the Python regex alternation is sorted, so "</s>" wins over a shorter prefix.
  std::stable_sort(tok.specials_.begin(), tok.specials_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  return tok;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_special) const {
  std::vector<int64_t> ids;
  if (add_special && add_bos_) ids.push_back(bos_);
  std::string chunk;
  auto flush = [&] {
    if (chunk.empty()) return;
    std::vector<int> piece_ids;
    sp_->Encode(chunk, &piece_ids).IgnoreError();
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    chunk.clear();
  };
  for (size_t i = 0; i < text.size();) {
    const auto hit = std::find_if(specials_.begin(), specials_.end(),
                                  [&](const auto& s) { return !s.first.empty() && text.compare(i, s.first.size(), s.first) == 0; });
    if (hit != specials_.end()) {
      flush();
      ids.push_back(hit->second);
      i += hit->first.size();
    } else {
      chunk += text[i++];
    }
  }
  flush();
  return ids;
}

std::vector<int64_t> Tokenizer::tokenize_with_image(const std::string& prompt, const std::string& placeholder,
                                                    int64_t image_token_index) const {
  std::vector<std::string> chunks;
  size_t start = 0;
  for (size_t at; (at = prompt.find(placeholder, start)) != std::string::npos; start = at + placeholder.size()) {
    chunks.push_back(prompt.substr(start, at - start));
  }
  chunks.push_back(prompt.substr(start));
  std::vector<int64_t> ids;
  size_t offset = 0;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const auto chunk_ids = encode(chunks[c]);
    if (c == 0 && !chunk_ids.empty() && chunk_ids[0] == bos_) {
      offset = 1;
      ids.push_back(bos_);
    }
    if (c > 0) ids.push_back(image_token_index);
    if (chunk_ids.size() > offset) ids.insert(ids.end(), chunk_ids.begin() + offset, chunk_ids.end());
  }
  return ids;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> kept;
  for (int64_t id : ids) {
    if (id >= 0 && !is_special(id)) kept.push_back(int(id));
  }
  std::string text;
  sp_->Decode(kept, &text).IgnoreError();
  return text;
}

}  // namespace alignkd
