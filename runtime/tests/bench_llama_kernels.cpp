// Times our llama::custom_sdpa.out on one attention shape and prints one JSON line (benchmarks/sdpa_kernel.py
// puts it beside ExecuTorch's own kernel, the one the Python runtime uses).
//   bench_llama_kernels HEADS KV_HEADS HEAD_DIM CACHE_LEN START_POS SEQ ITERS [THREADS]
#include "llama_kernels.h"
#include "threads.h"

#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 8 && argc != 9) {
    std::fprintf(stderr, "error: usage: bench_llama_kernels HEADS KV_HEADS HEAD_DIM CACHE_LEN START_POS SEQ ITERS [THREADS]\n");
    return 2;
  }
  int v[7];
  for (int i = 0; i < 7; ++i) v[i] = std::atoi(argv[i + 1]);
  const int heads = v[0], kv = v[1], dim = v[2], cache = v[3], start = v[4], seq = v[5], iters = v[6];
  executorch::runtime::runtime_init();
  if (argc == 9 && !alignkd::set_runtime_threads(unsigned(std::atoi(argv[8])))) {
    std::fprintf(stderr, "error: cannot resize ExecuTorch's thread pool to %s threads\n", argv[8]);
    return 2;
  }
  std::mt19937 rng(0);
  std::normal_distribution<float> dist;
  std::vector<float> q(size_t(seq) * heads * dim), k(size_t(cache) * kv * dim), val(k.size()), out(q.size());
  for (auto* buf : {&q, &k, &val})
    for (auto& x : *buf) x = dist(rng);
  using executorch::extension::from_blob;
  auto tq = from_blob(q.data(), {1, seq, heads, dim});
  auto tk = from_blob(k.data(), {1, cache, kv, dim});
  auto tv = from_blob(val.data(), {1, cache, kv, dim});
  auto to = from_blob(out.data(), {1, seq, heads, dim});
  executorch::runtime::KernelRuntimeContext ctx;
  alignkd::kernels::custom_sdpa_out(ctx, *tq, *tk, *tv, start, std::nullopt, 0.0, true, std::nullopt, *to);  // warm-up
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i)
    alignkd::kernels::custom_sdpa_out(ctx, *tq, *tk, *tv, start, std::nullopt, 0.0, true, std::nullopt, *to);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
  std::printf("{\"ms_per_call\": %.6f, \"ok\": %s}\n", ms, ctx.failure_state() == executorch::runtime::Error::Ok ? "true" : "false");
  return 0;
}
