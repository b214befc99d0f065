// The size of ExecuTorch's shared thread pool (used by XNNPACK, the optimized kernels and our SDPA).
#pragma once

#include <cstdint>

namespace alignkd {

// Threads in the pool, or 1 when the runner was built without the pool.
int64_t runtime_threads();

// Resizes the pool (0: leave ExecuTorch's default, one per core); false when that is not possible.
bool set_runtime_threads(unsigned int n);

}  // namespace alignkd
