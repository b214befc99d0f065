// Our llama::custom_sdpa.out and llama::update_cache.out kernels against a plain reference: attention
// written as the textbook triple loop in double precision, and the cache update as an element-wise copy.
#include "llama_kernels.h"

#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/runtime.h>

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace {

using alignkd::kernels::custom_sdpa_out;
using alignkd::kernels::update_cache_out;
using executorch::aten::ScalarType;
using executorch::extension::from_blob;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

std::vector<float> random_values(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

struct Case {
  int batch, seq, heads, kv_heads, dim, cache_len, start_pos;
};

// softmax(q k^T * scale + mask) v over keys 0 .. limit(i), the query row i at position start_pos + i.
std::vector<float> reference(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
                             const std::vector<float>& v, double scale, const std::vector<float>* mask, int mask_keys) {
  std::vector<float> out(q.size(), 0.f);
  const int group = c.heads / c.kv_heads;
  for (int b = 0; b < c.batch; ++b)
    for (int i = 0; i < c.seq; ++i)
      for (int h = 0; h < c.heads; ++h) {
        const int n_keys = mask ? mask_keys : c.start_pos + i + 1;
        std::vector<double> s(n_keys);
        double top = -1e300;
        for (int j = 0; j < n_keys; ++j) {
          double acc = 0;
          for (int d = 0; d < c.dim; ++d)
            acc += double(q[((size_t(b) * c.seq + i) * c.heads + h) * c.dim + d]) *
                   k[((size_t(b) * c.cache_len + j) * c.kv_heads + h / group) * c.dim + d];
          s[j] = acc * scale + (mask ? (*mask)[size_t(i) * mask_keys + j] : 0.0);
          top = std::max(top, s[j]);
        }
        double total = 0;
        for (auto& x : s) total += (x = std::exp(x - top));
        for (int d = 0; d < c.dim; ++d) {
          double acc = 0;
          for (int j = 0; j < n_keys; ++j)
            acc += s[j] / total * v[((size_t(b) * c.cache_len + j) * c.kv_heads + h / group) * c.dim + d];
          out[((size_t(b) * c.seq + i) * c.heads + h) * c.dim + d] = float(acc);
        }
      }
  return out;
}

class SdpaTest : public ::testing::TestWithParam<Case> {
 protected:
  static void SetUpTestSuite() { executorch::runtime::runtime_init(); }
};

TEST_P(SdpaTest, CausalMatchesReference) {
  const Case c = GetParam();
  auto q = random_values(size_t(c.batch) * c.seq * c.heads * c.dim, 1);
  auto k = random_values(size_t(c.batch) * c.cache_len * c.kv_heads * c.dim, 2);
  auto v = random_values(k.size(), 3);
  std::vector<float> out(q.size(), -7.f);
  auto tq = from_blob(q.data(), {c.batch, c.seq, c.heads, c.dim});
  auto tk = from_blob(k.data(), {c.batch, c.cache_len, c.kv_heads, c.dim});
  auto tv = from_blob(v.data(), {c.batch, c.cache_len, c.kv_heads, c.dim});
  auto to = from_blob(out.data(), {c.batch, c.seq, c.heads, c.dim});
  KernelRuntimeContext ctx;
  custom_sdpa_out(ctx, *tq, *tk, *tv, c.start_pos, std::nullopt, 0.0, true, std::nullopt, *to);
  ASSERT_EQ(ctx.failure_state(), Error::Ok);
  const auto want = reference(c, q, k, v, 1.0 / std::sqrt(double(c.dim)), nullptr, 0);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 2e-5) << "element " << i;
}

INSTANTIATE_TEST_SUITE_P(Shapes, SdpaTest, ::testing::Values(
    Case{1, 5, 4, 4, 16, 12, 0},     // prefill from position 0
    Case{1, 1, 4, 2, 16, 12, 7},     // one decode step, grouped-query heads
    Case{2, 4, 6, 3, 8, 10, 3},      // a chunk in the middle of the cache, batch 2
    Case{1, 33, 8, 2, 64, 64, 17},   // longer rows: the vectorised paths and several threads
    Case{1, 1, 2, 1, 5, 4, 3}));     // odd head dim, last cache row

TEST(Sdpa, MaskAndScale) {
  const Case c{1, 3, 2, 2, 8, 6, 0};
  auto q = random_values(size_t(c.seq) * c.heads * c.dim, 4);
  auto k = random_values(size_t(c.cache_len) * c.kv_heads * c.dim, 5);
  auto v = random_values(k.size(), 6);
  const int keys = 5;
  std::vector<float> mask(size_t(c.seq) * keys, 0.f);
  mask[1] = -std::numeric_limits<float>::infinity();
  mask[keys + 4] = -2.5f;
  std::vector<float> out(q.size());
  auto tq = from_blob(q.data(), {1, c.seq, c.heads, c.dim});
  auto tk = from_blob(k.data(), {1, c.cache_len, c.kv_heads, c.dim});
  auto tv = from_blob(v.data(), {1, c.cache_len, c.kv_heads, c.dim});
  auto tm = from_blob(mask.data(), {c.seq, keys});
  auto to = from_blob(out.data(), {1, c.seq, c.heads, c.dim});
  KernelRuntimeContext ctx;
  custom_sdpa_out(ctx, *tq, *tk, *tv, 0, *tm, 0.0, false, 0.3, *to);
  ASSERT_EQ(ctx.failure_state(), Error::Ok);
  const auto want = reference(c, q, k, v, 0.3, &mask, keys);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 2e-5) << "element " << i;
}

TEST(Sdpa, RefusesRowsPastTheCache) {
  std::vector<float> q(1 * 3 * 2 * 4), k(1 * 4 * 2 * 4), out(q.size());
  auto tq = from_blob(q.data(), {1, 3, 2, 4});
  auto tk = from_blob(k.data(), {1, 4, 2, 4});
  auto to = from_blob(out.data(), {1, 3, 2, 4});
  KernelRuntimeContext ctx;
  custom_sdpa_out(ctx, *tq, *tk, *tk, 2, std::nullopt, 0.0, true, std::nullopt, *to);  // rows 2..4 of 4
  EXPECT_EQ(ctx.failure_state(), Error::InvalidArgument);
}

TEST(UpdateCache, WritesRowsAtStartPos) {
  const int batch = 2, cache_len = 6, heads = 3, dim = 4, seq = 2, start = 3;
  std::vector<float> cache(size_t(batch) * cache_len * heads * dim, -1.f);
  auto value = random_values(size_t(batch) * seq * heads * dim, 7);
  float dummy = 0;
  auto tv = from_blob(value.data(), {batch, seq, heads, dim});
  auto tc = from_blob(cache.data(), {batch, cache_len, heads, dim});
  auto to = from_blob(&dummy, {1});
  KernelRuntimeContext ctx;
  update_cache_out(ctx, *tv, *tc, start, *to);
  ASSERT_EQ(ctx.failure_state(), Error::Ok);
  for (int b = 0; b < batch; ++b)
    for (int p = 0; p < cache_len; ++p)
      for (int e = 0; e < heads * dim; ++e) {
        const float got = cache[(size_t(b) * cache_len + p) * heads * dim + e];
        const bool written = p >= start && p < start + seq;
        const float want = written ? value[(size_t(b) * seq + (p - start)) * heads * dim + e] : -1.f;
        ASSERT_EQ(got, want) << "batch " << b << " position " << p;
      }
}

TEST(UpdateCache, RefusesWritePastTheEnd) {
  std::vector<float> cache(1 * 4 * 1 * 2), value(1 * 2 * 1 * 2);
  float dummy = 0;
  auto tv = from_blob(value.data(), {1, 2, 1, 2});
  auto tc = from_blob(cache.data(), {1, 4, 1, 2});
  auto to = from_blob(&dummy, {1});
  KernelRuntimeContext ctx;
  update_cache_out(ctx, *tv, *tc, 3, *to);
  EXPECT_EQ(ctx.failure_state(), Error::InvalidArgument);
}

TEST(Registry, BothKernelsRegisterOnce) {
  executorch::runtime::runtime_init();
  ASSERT_EQ(alignkd::kernels::register_llama_kernels(), Error::Ok);
  ASSERT_EQ(alignkd::kernels::register_llama_kernels(), Error::Ok);  // idempotent
  EXPECT_TRUE(executorch::runtime::registry_has_op_function("llama::custom_sdpa.out"));
  EXPECT_TRUE(executorch::runtime::registry_has_op_function("llama::update_cache.out"));
}

}  // namespace
