// The bundle's manifest.json as this runner needs it, read and checked against the bundle schema
// (alignkd/contract/manifest.schema.json). Only ExecuTorch bundles run here.
#pragma once

#include "error.h"

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace alignkd {

struct ImageSpec {
  int size = 0;  // shortest edge after resize and the centre-crop side
  std::array<double, 3> mean{}, std{};
  int resample = 3;  // PIL's BICUBIC, the only filter implemented
  double rescale_factor = 1.0 / 255;
  std::string aspect_ratio;  // "pad" or "square"
  std::array<uint8_t, 3> pad_colour{};
};

struct PromptSpec {
  std::string text;  // the full prompt; "{question}" stands for the user's question
  std::string placeholder;  // "<image>"
  int64_t image_token_index = -200;
  std::vector<std::string> stop_strings;
};

struct FileEntry {
  std::string path;  // relative to the bundle folder
  std::string sha256;
  uint64_t bytes = 0;
};

struct Manifest {
  std::filesystem::path folder;
  std::string quant;
  int64_t max_seq_len = 0, hidden_size = 0, vocab_size = 0, num_image_tokens = 0;
  std::string program_file;  // the .pte holding all three methods
  std::string vision_method, embedding_method, decoder_method;
  std::string tokenizer_file;  // SentencePiece model
  bool add_bos = true;
  int64_t bos = 1, eos = 2, unk = 0, pad = 0;
  ImageSpec image;
  PromptSpec prompt;
  std::vector<FileEntry> files;
  uint64_t total_bytes = 0;
};

// Reads <folder>/manifest.json, validates it against the bundle schema and checks it is an ExecuTorch
// bundle whose three parts live in one program.
Result<Manifest> read_manifest(const std::filesystem::path& folder);

}  // namespace alignkd
