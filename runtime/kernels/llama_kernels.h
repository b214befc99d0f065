// Our native kernels for the two llama custom ops the exported text decoder calls:
//   llama::custom_sdpa.out  (causal attention over the KV cache, grouped-query heads)
//   llama::update_cache.out (write this step's keys or values into the cache at start_pos)
// The wheel ships them only inside a libtorch-dependent library, so a standalone program brings its own.
// Semantics follow the op schemas (executorch/extension/llm/custom_ops/custom_ops.py):
//   query [B, S, H, D], key/value cache [B, C, Hkv, D] with H % Hkv == 0, output [B, S, H, D];
//   with is_causal, query row i (absolute position start_pos + i) attends to cache rows 0 .. start_pos + i;
//   with attn_mask (is_causal false), to rows 0 .. mask.size(-1) - 1 plus the additive (float) or
//   keep (bool) mask; scale defaults to 1 / sqrt(D); dropout is ignored (inference).
#pragma once

#include <executorch/runtime/core/error.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/kernel/kernel_runtime_context.h>

#include <cstdint>
#include <optional>

namespace alignkd::kernels {

using executorch::aten::Tensor;
using executorch::runtime::KernelRuntimeContext;

Tensor& custom_sdpa_out(KernelRuntimeContext& ctx, const Tensor& query, const Tensor& key_cache,
                        const Tensor& value_cache, int64_t start_pos, const std::optional<Tensor>& attn_mask,
                        double dropout_p, bool is_causal, std::optional<double> scale, Tensor& out);

// `cache` is written in place (the schema's Tensor(a!)); `out` is the op's dummy [1] result.
Tensor& update_cache_out(KernelRuntimeContext& ctx, const Tensor& value, const Tensor& cache, int64_t start_pos,
                         Tensor& out);

// Registers both kernels with ExecuTorch's kernel registry; call once before loading a program.
// Idempotent: a second call is a no-op.
executorch::runtime::Error register_llama_kernels();

}  // namespace alignkd::kernels
