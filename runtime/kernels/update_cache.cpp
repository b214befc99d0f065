// llama::update_cache.out: copy `value` [B, S, H, D] into `cache` [B, C, H, D] at rows start_pos .. + S.
#include "llama_kernels.h"

#include <executorch/runtime/core/exec_aten/util/tensor_util.h>

#include <cstring>

namespace alignkd::kernels {

Tensor& update_cache_out(KernelRuntimeContext& ctx, const Tensor& value, const Tensor& cache, int64_t start_pos,
                         Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, value.dim() == 4 && cache.dim() == 4, InvalidArgument, out,
                      "update_cache: value and cache must be 4-D [B, S, H, D]");
  ET_KERNEL_CHECK_MSG(ctx, value.scalar_type() == cache.scalar_type(), InvalidArgument, out,
                      "update_cache: value and cache dtypes differ");
  ET_KERNEL_CHECK_MSG(ctx, value.size(0) == cache.size(0) && value.size(2) == cache.size(2) &&
                               value.size(3) == cache.size(3),
                      InvalidArgument, out, "update_cache: value and cache differ in batch, heads or head dim");
  ET_KERNEL_CHECK_MSG(ctx, start_pos >= 0 && start_pos + value.size(1) <= cache.size(1), InvalidArgument, out,
                      "update_cache: start_pos + seq_len exceeds the cache length");
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::tensor_is_default_dim_order(value) &&
                               executorch::runtime::tensor_is_default_dim_order(cache),
                      InvalidArgument, out, "update_cache: tensors must be contiguous");
  const size_t item = value.element_size();
  const size_t row_bytes = size_t(value.size(2) * value.size(3)) * item;  // one position: all heads
  const size_t chunk = size_t(value.size(1)) * row_bytes;  // this step's rows of one batch entry
  const auto* src = static_cast<const char*>(value.const_data_ptr());
  // The schema marks `cache` as written in place (Tensor(a!)); the runtime hands it over as const.
  auto* dst = static_cast<char*>(const_cast<void*>(cache.const_data_ptr()));
  for (int64_t b = 0; b < value.size(0); ++b) {
    std::memcpy(dst + (size_t(b * cache.size(1) + start_pos) * row_bytes), src + size_t(b) * chunk, chunk);
  }
  return out;
}

}  // namespace alignkd::kernels
