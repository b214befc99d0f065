// Registers our llama kernels with ExecuTorch's operator registry, by the names the .pte refers to.
#include "llama_kernels.h"

#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/operator_registry.h>

#include <array>

namespace alignkd::kernels {
namespace {

constexpr char kSdpa[] = "llama::custom_sdpa.out";
constexpr char kUpdateCache[] = "llama::update_cache.out";

executorch::runtime::Error register_once() {
  static const std::array<executorch::runtime::Kernel, 2> kernels = {
      executorch::extension::make_boxed_kernel(kSdpa, EXECUTORCH_FN(custom_sdpa_out, kSdpa)),
      executorch::extension::make_boxed_kernel(kUpdateCache, EXECUTORCH_FN(update_cache_out, kUpdateCache)),
  };
  return executorch::runtime::register_kernels({kernels.data(), kernels.size()});
}

}  // namespace

executorch::runtime::Error register_llama_kernels() {
  // A function-local static runs the registration once even if callers ask twice (the registry refuses
  // a duplicate name).
  static const executorch::runtime::Error result = register_once();
  return result;
}

}  // namespace alignkd::kernels
