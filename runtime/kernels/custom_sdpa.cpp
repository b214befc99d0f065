// llama::custom_sdpa.out: scaled dot-product attention of the new query rows against the KV cache.
// One task per (batch, head, query row), spread over ExecuTorch's thread pool; the inner loops run over
// the head dimension, contiguous in both the query and the cache, so the compiler vectorises them.
#include "llama_kernels.h"

#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

namespace alignkd::kernels {
namespace {

using executorch::aten::ScalarType;
using executorch::runtime::Error;

struct Shapes {
  int64_t batch, seq, heads, dim, cache_len, kv_heads;
};

// Four dot products of one query row with four key rows: independent accumulators keep the vector unit
// busy instead of waiting on one long chain of additions.
[[gnu::always_inline]] inline void dot4(const float* q, const float* k0, const float* k1, const float* k2,
                                        const float* k3, int64_t n, float* out) {
  float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t d = 0; d < n; ++d) {
    a0 += q[d] * k0[d];
    a1 += q[d] * k1[d];
    a2 += q[d] * k2[d];
    a3 += q[d] * k3[d];
  }
  out[0] = a0, out[1] = a1, out[2] = a2, out[3] = a3;
}

[[gnu::always_inline]] inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < n; ++d) acc += a[d] * b[d];
  return acc;
}

// y += w0 x0 + w1 x1 + w2 x2 + w3 x3: one read and write of y for four value rows.
[[gnu::always_inline]] inline void axpy4(const float* w, const float* x0, const float* x1, const float* x2,
                                         const float* x3, float* y, int64_t n) {
#pragma omp simd
  for (int64_t d = 0; d < n; ++d) y[d] += w[0] * x0[d] + w[1] * x1[d] + w[2] * x2[d] + w[3] * x3[d];
}

[[gnu::always_inline]] inline void axpy(float w, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t d = 0; d < n; ++d) y[d] += w * x[d];
}

// Additive mask value of (row, key): float masks add, bool masks keep (true) or drop (false).
float mask_value(const Tensor& mask, int64_t row, int64_t key) {
  const int64_t stride = mask.size(mask.dim() - 1);
  if (mask.scalar_type() == ScalarType::Bool) {
    return mask.const_data_ptr<bool>()[row * stride + key] ? 0.f : -std::numeric_limits<float>::infinity();
  }
  return mask.const_data_ptr<float>()[row * stride + key];
}

struct Row {
  const float* q;
  const float* keys;
  const float* values;
  int64_t kv_row_stride, n_keys, dim;
  float scale;
  const Tensor* mask;
  int64_t row;
  float* out;
};

// Attention of one query row; `scores` is scratch of at least n_keys floats. Inlined into a generic and an
// AVX2+FMA copy below, picked at run time.
[[gnu::always_inline]] inline void attend_row_impl(const Row& r, float* scores) {
  std::fill(r.out, r.out + r.dim, 0.f);
  if (r.n_keys <= 0) return;
  const int64_t s = r.kv_row_stride, n4 = r.n_keys / 4 * 4;
  for (int64_t j = 0; j < n4; j += 4) {
    const float* k = r.keys + j * s;
    dot4(r.q, k, k + s, k + 2 * s, k + 3 * s, r.dim, scores + j);
  }
  for (int64_t j = n4; j < r.n_keys; ++j) scores[j] = dot(r.q, r.keys + j * s, r.dim);
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < r.n_keys; ++j) {
    scores[j] = scores[j] * r.scale + (r.mask != nullptr ? mask_value(*r.mask, r.row, j) : 0.f);
    top = std::max(top, scores[j]);
  }
  if (top == -std::numeric_limits<float>::infinity()) return;  // every key masked: a zero row, not NaN
  float total = 0.f;
  for (int64_t j = 0; j < r.n_keys; ++j) {
    scores[j] = std::exp(scores[j] - top);
    total += scores[j];
  }
  const float inv = 1.f / total;
  for (int64_t j = 0; j < r.n_keys; ++j) scores[j] *= inv;
  for (int64_t j = 0; j < n4; j += 4) {
    const float* v = r.values + j * s;
    axpy4(scores + j, v, v + s, v + 2 * s, v + 3 * s, r.out, r.dim);
  }
  for (int64_t j = n4; j < r.n_keys; ++j) axpy(scores[j], r.values + j * s, r.out, r.dim);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) void attend_row_avx2(const Row& r, float* scores) { attend_row_impl(r, scores); }
#endif
void attend_row_generic(const Row& r, float* scores) { attend_row_impl(r, scores); }

using AttendFn = void (*)(const Row&, float*);

// ALIGNKD_SDPA_GENERIC=1 forces the portable copy (its tests run that way too).
AttendFn pick_attend_row() {
  const char* generic = std::getenv("ALIGNKD_SDPA_GENERIC");
  if (generic != nullptr && generic[0] == '1') return attend_row_generic;
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return attend_row_avx2;
#endif
  return attend_row_generic;
}

bool valid_inputs(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                  int64_t start_pos, const std::optional<Tensor>& mask, bool is_causal) {
  ET_KERNEL_CHECK_MSG(ctx, q.dim() == 4 && k.dim() == 4 && v.dim() == 4, InvalidArgument, false,
                      "custom_sdpa: query, key and value must be 4-D [B, S, H, D]");
  ET_KERNEL_CHECK_MSG(ctx, q.scalar_type() == ScalarType::Float && k.scalar_type() == ScalarType::Float &&
                               v.scalar_type() == ScalarType::Float,
                      InvalidArgument, false, "custom_sdpa: only float32 is implemented");
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::tensors_have_same_shape(k, v), InvalidArgument, false,
                      "custom_sdpa: key and value caches differ in shape");
  ET_KERNEL_CHECK_MSG(ctx, k.size(0) == q.size(0) && k.size(3) == q.size(3), InvalidArgument, false,
                      "custom_sdpa: batch or head dim of the cache differs from the query");
  ET_KERNEL_CHECK_MSG(ctx, k.size(2) > 0 && q.size(2) % k.size(2) == 0, InvalidArgument, false,
                      "custom_sdpa: query heads must be a multiple of the cache's kv heads");
  ET_KERNEL_CHECK_MSG(ctx, start_pos >= 0, InvalidArgument, false, "custom_sdpa: negative start_pos");
  ET_KERNEL_CHECK_MSG(ctx, !mask.has_value() || !is_causal, InvalidArgument, false,
                      "custom_sdpa: attn_mask and is_causal together are not supported");
  if (mask.has_value()) {
    const Tensor& m = mask.value();
    ET_KERNEL_CHECK_MSG(ctx, m.dim() == 2 && m.size(0) == q.size(1) && m.size(1) <= k.size(1) &&
                                 (m.scalar_type() == ScalarType::Float || m.scalar_type() == ScalarType::Bool),
                        InvalidArgument, false, "custom_sdpa: attn_mask must be float or bool [S, keys]");
  } else {
    ET_KERNEL_CHECK_MSG(ctx, start_pos + q.size(1) <= k.size(1), InvalidArgument, false,
                        "custom_sdpa: start_pos + seq_len exceeds the cache length");
  }
  for (const Tensor* t : {&q, &k, &v}) {
    ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::tensor_is_default_dim_order(*t), InvalidArgument, false,
                        "custom_sdpa: tensors must be contiguous");
  }
  return true;
}

}  // namespace

Tensor& custom_sdpa_out(KernelRuntimeContext& ctx, const Tensor& query, const Tensor& key_cache,
                        const Tensor& value_cache, int64_t start_pos, const std::optional<Tensor>& attn_mask,
                        double /*dropout_p: inference*/, bool is_causal, std::optional<double> scale, Tensor& out) {
  if (!valid_inputs(ctx, query, key_cache, value_cache, start_pos, attn_mask, is_causal)) return out;
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, query.sizes()) == Error::Ok, InvalidArgument,
                      out, "custom_sdpa: cannot resize the output to the query's shape");
  const Shapes s{query.size(0), query.size(1), query.size(2), query.size(3), key_cache.size(1), key_cache.size(2)};
  const float sc = static_cast<float>(scale.has_value() ? scale.value() : 1.0 / std::sqrt(double(s.dim)));
  const int64_t group = s.heads / s.kv_heads;
  const int64_t kv_row_stride = s.kv_heads * s.dim;  // from one cache position to the next
  const Tensor* mask = attn_mask.has_value() ? &attn_mask.value() : nullptr;
  const int64_t mask_keys = mask != nullptr ? mask->size(1) : 0;
  const float* q = query.const_data_ptr<float>();
  const float* k = key_cache.const_data_ptr<float>();
  const float* v = value_cache.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();

  static const AttendFn attend_row = pick_attend_row();
  auto work = [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      // task = (b * S + i) * H + h: the same order as the [B, S, H, D] rows, so `offset` serves q and out
      const int64_t h = task % s.heads;
      const int64_t i = (task / s.heads) % s.seq;
      const int64_t b = task / (s.heads * s.seq);
      const int64_t offset = task * s.dim;
      const int64_t cache_offset = b * s.cache_len * kv_row_stride + (h / group) * s.dim;
      const int64_t n_keys = mask != nullptr ? mask_keys : (is_causal ? start_pos + i + 1 : start_pos + s.seq);
      if (static_cast<int64_t>(scores.size()) < n_keys) scores.resize(n_keys);
      attend_row(Row{q + offset, k + cache_offset, v + cache_offset, kv_row_stride, n_keys, s.dim, sc, mask, i,
                     o + offset},
                 scores.data());
    }
  };
  executorch::extension::parallel_for(0, s.batch * s.seq * s.heads, 1, work);
  return out;
}

}  // namespace alignkd::kernels
