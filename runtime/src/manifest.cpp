// Reading manifest.json; see manifest.h.
#include "manifest.h"

#include "schema.h"

#include <nlohmann/json.hpp>

#include <fstream>

namespace alignkd {
namespace {

using nlohmann::json;

Result<json> parse_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) {
    return Error{"cannot read " + path.string() + " (no such file); pass a bundle folder written by `alignkd export`"};
  }
  json doc = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return Error{"cannot read " + path.string() + " (not valid JSON); pass a bundle folder written by `alignkd export`"};
  }
  return doc;
}

Status check_target(const json& m, const std::filesystem::path& where) {
  const std::string target = m["target"].get<std::string>();
  if (target != "executorch") {
    return Error{where.string() + " is a bundle for target '" + target +
                 "', but alignkd-runner runs ExecuTorch bundles only; export with --target executorch "
                 "or run this bundle with `alignkd generate --model BUNDLE`"};
  }
  const auto& parts = m["parts"];
  const std::string file = parts["text_decoder"]["file"].get<std::string>();
  for (const char* part : {"vision_encoder", "token_embedding"}) {
    if (parts[part]["file"].get<std::string>() != file || !parts[part].contains("method")) {
      return Error{where.string() + " puts " + part + " outside " + file +
                   " or without a method name; alignkd-runner needs the one-program layout of `alignkd export --target executorch`"};
    }
  }
  return {};
}

Result<Manifest> from_json(const json& m, const std::filesystem::path& folder) {
  Manifest out;
  out.folder = folder;
  out.quant = m["quant"]["scheme"].get<std::string>();
  out.max_seq_len = m["max_seq_len"].get<int64_t>();
  out.hidden_size = m["model"]["hidden_size"].get<int64_t>();
  out.vocab_size = m["model"]["vocab_size"].get<int64_t>();
  out.num_image_tokens = m["num_image_tokens"].get<int64_t>();
  const auto& parts = m["parts"];
  out.program_file = parts["text_decoder"]["file"].get<std::string>();
  out.vision_method = parts["vision_encoder"]["method"].get<std::string>();
  out.embedding_method = parts["token_embedding"]["method"].get<std::string>();
  out.decoder_method = parts["text_decoder"].value("method", std::string("text_decoder"));
  out.tokenizer_file = m["tokenizer"]["files"]["sentencepiece"].get<std::string>();
  out.add_bos = m["tokenizer"]["add_bos"].get<bool>();
  const auto& special = m["special_tokens"];
  out.bos = special["bos"].get<int64_t>();
  out.eos = special["eos"].get<int64_t>();
  out.unk = special["unk"].get<int64_t>();
  out.pad = special["pad"].get<int64_t>();
  const auto& img = m["image"];
  out.image.size = img["size"].get<int>();
  for (int c = 0; c < 3; ++c) {
    out.image.mean[c] = img["mean"][c].get<double>();
    out.image.std[c] = img["std"][c].get<double>();
    out.image.pad_colour[c] = img["pad_colour"][c].get<uint8_t>();
  }
  out.image.resample = img["resample"].get<int>();
  out.image.rescale_factor = img["rescale_factor"].get<double>();
  out.image.aspect_ratio = img["aspect_ratio"].get<std::string>();
  if (out.image.resample != 3) {
    return Error{"manifest.json asks for image resample filter " + std::to_string(out.image.resample) +
                 " but alignkd-runner implements only PIL's bicubic (3); re-export the bundle with the default image settings"};
  }
  const auto& prompt = m["prompt"];
  out.prompt.text = prompt["text"].get<std::string>();
  out.prompt.placeholder = prompt["image_placeholder"].get<std::string>();
  out.prompt.image_token_index = prompt["image_token_index"].get<int64_t>();
  out.prompt.stop_strings = prompt["stop_strings"].get<std::vector<std::string>>();
  for (auto it = m["files"].begin(); it != m["files"].end(); ++it) {
    const std::filesystem::path rel(it.key());
    if (rel.is_absolute() || rel.lexically_normal().string().rfind("..", 0) == 0) {
      return Error{"manifest.json lists the file " + it.key() + " outside the bundle folder; re-export the bundle"};
    }
    out.files.push_back({it.key(), it.value()["sha256"].get<std::string>(), it.value()["bytes"].get<uint64_t>()});
    out.total_bytes += out.files.back().bytes;
  }
  return out;
}

}  // namespace

Result<Manifest> read_manifest(const std::filesystem::path& folder) {
  const auto path = folder / "manifest.json";
  ALIGNKD_ASSIGN(json m, parse_file(path));
  Status valid = validate_schema(m, manifest_schema());
  if (!valid.ok()) {
    return Error{path.string() + " does not follow the bundle schema " + valid.error().message + "; re-export the bundle"};
  }
  ALIGNKD_CHECK_OK(check_target(m, path));
  return from_json(m, folder);
}

}  // namespace alignkd
