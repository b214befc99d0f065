// Running the program's methods through ExecuTorch's Module; see model.h.
#include "model.h"

#include "et_log.h"

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#ifdef ALIGNKD_HAS_ETDUMP
#include <executorch/devtools/etdump/etdump_flatcc.h>
#endif

#include <cstdlib>
#include <fstream>

namespace alignkd {
namespace {

using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::runtime::EValue;

// Every output is copied out: the runtime reuses its planned output memory on the next call.
std::vector<float> copy_floats(const EValue& value) {
  const auto& t = value.toTensor();
  const float* p = t.const_data_ptr<float>();
  return std::vector<float>(p, p + t.numel());
}

}  // namespace

Model::~Model() = default;

Error Model::failure(const std::string& what, int code) const {
  std::string detail = last_runtime_error();
  clear_runtime_error();
  return Error{what + " failed in ExecuTorch (" +
               executorch::runtime::to_string(static_cast<executorch::runtime::Error>(code)) +
               (detail.empty() ? "" : ": " + detail) + "); check the bundle was exported by this alignkd version"};
}

Result<std::unique_ptr<Model>> Model::load(const Manifest& manifest, bool trace) {
  auto model = std::make_unique<Model>();
  model->program_ = (manifest.folder / manifest.program_file).string();
  model->vision_ = manifest.vision_method;
  model->embedding_ = manifest.embedding_method;
  model->decoder_ = manifest.decoder_method;
  model->hidden_ = manifest.hidden_size;
  model->vocab_ = manifest.vocab_size;
  model->max_seq_len_ = manifest.max_seq_len;
  // mmap: weights stay in the page cache and count against RSS only as far as they are touched.
  std::unique_ptr<executorch::runtime::EventTracer> tracer;
#ifdef ALIGNKD_HAS_ETDUMP
  if (trace) tracer = std::make_unique<executorch::etdump::ETDumpGen>();
#else
  if (trace) return Error{"this alignkd-runner was built without ExecuTorch's etdump library; --etdump is unavailable"};
#endif
  model->module_ = std::make_unique<Module>(model->program_, Module::LoadMode::Mmap, std::move(tracer));
  if (auto err = model->module_->load(); err != executorch::runtime::Error::Ok) {
    return model->failure("loading " + model->program_, int(err));
  }
  for (const auto& method : {model->vision_, model->embedding_, model->decoder_}) {
    if (auto err = model->module_->load_method(method); err != executorch::runtime::Error::Ok) {
      return model->failure("loading method " + method + " of " + model->program_, int(err));
    }
  }
  return model;
}

Status Model::write_etdump(const std::string& path) const {
#ifdef ALIGNKD_HAS_ETDUMP
  auto* gen = dynamic_cast<executorch::etdump::ETDumpGen*>(module_->event_tracer());
  if (gen == nullptr) return Error{"no ETDump was recorded; load the model with tracing on"};
  const executorch::etdump::ETDumpResult dump = gen->get_etdump_data();
  // Without a caller-provided buffer the dump is malloc'ed and ours to free.
  std::unique_ptr<void, decltype(&std::free)> owned(dump.buf, std::free);
  std::ofstream out(path, std::ios::binary);
  if (!out || dump.buf == nullptr) return Error{"cannot write the ETDump to " + path + "; pass a writable path to --etdump"};
  out.write(static_cast<const char*>(dump.buf), std::streamsize(dump.size));
  return out ? Status{} : Status{Error{"cannot write the ETDump to " + path + " (disk full?)"}};
#else
  return Error{"this alignkd-runner was built without ExecuTorch's etdump library; --etdump is unavailable"};
#endif
}

Result<std::vector<float>> Model::encode_image(const std::vector<float>& pixels, int size) {
  auto input = from_blob(const_cast<float*>(pixels.data()), {1, 3, size, size}, ScalarType::Float);
  auto out = module_->execute(vision_, {EValue(*input)});
  if (!out.ok()) return failure("running " + vision_, int(out.error()));
  return copy_floats(out.get()[0]);
}

Result<std::vector<float>> Model::embed(const std::vector<int64_t>& ids) {
  auto input = from_blob(const_cast<int64_t*>(ids.data()), {1, int(ids.size())}, ScalarType::Long);
  auto out = module_->execute(embedding_, {EValue(*input)});
  if (!out.ok()) return failure("running " + embedding_, int(out.error()));
  return copy_floats(out.get()[0]);
}

Result<std::vector<float>> Model::decode(std::vector<float>& embeddings, int64_t position) {
  const int n = int(embeddings.size() / size_t(hidden_));
  auto input = from_blob(embeddings.data(), {1, n, int(hidden_)}, ScalarType::Float);
  int64_t pos = position;
  auto input_pos = from_blob(&pos, {1}, ScalarType::Long);
  auto out = module_->execute(decoder_, {EValue(*input), EValue(*input_pos)});
  if (!out.ok()) return failure("running " + decoder_, int(out.error()));
  std::vector<float> logits = copy_floats(out.get()[0]);
  // The decoder returns the last position only ([1, V]); keep the last row should a program return [1, S, V].
  if (int64_t(logits.size()) > vocab_) logits.erase(logits.begin(), logits.end() - vocab_);
  return logits;
}

}  // namespace alignkd
