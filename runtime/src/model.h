// The bundle's program (model.pte) and its three methods, behind the four operations the generation
// loop needs; the same protocol as alignkd.runtime.generation.Backend.
#pragma once

#include "error.h"
#include "manifest.h"

#include <memory>
#include <string>
#include <vector>

namespace executorch::extension {
inline namespace module {
class Module;
}
}  // namespace executorch::extension

namespace alignkd {

class Model {
 public:
  // Loads the program and its vision_encoder, token_embedding and text_decoder methods. With `trace`, every
  // operator and delegate call is recorded in an ETDump (see write_etdump).
  static Result<std::unique_ptr<Model>> load(const Manifest& manifest, bool trace = false);
  Model() = default;  // empty; use load()
  ~Model();

  // pixel_values [1, 3, S, S] -> image tokens [n, D] (returns n * D floats).
  Result<std::vector<float>> encode_image(const std::vector<float>& pixels, int size);
  // ids [1, n] -> embeddings [n, D].
  Result<std::vector<float>> embed(const std::vector<int64_t>& ids);
  // embeddings [1, n, D] written to the KV cache from `position` -> logits [V] of the last row.
  Result<std::vector<float>> decode(std::vector<float>& embeddings, int64_t position);

  // Writes the recorded ETDump (per-operator times, readable by executorch.devtools.Inspector).
  Status write_etdump(const std::string& path) const;

  int64_t hidden_size() const { return hidden_; }
  int64_t max_seq_len() const { return max_seq_len_; }

 private:
  Error failure(const std::string& what, int code) const;

  std::unique_ptr<executorch::extension::Module> module_;
  std::string program_, vision_, embedding_, decoder_;
  int64_t hidden_ = 0, vocab_ = 0, max_seq_len_ = 0;
};

}  // namespace alignkd
