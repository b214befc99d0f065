// Thread-pool size; see threads.h. The wheel ships libexecutorch_threadpool.so but not its header
// (extension/threadpool/threadpool.h), so the two members used here are declared by hand; they are
// exported by that library under these names.
#include "threads.h"

#ifdef ALIGNKD_HAS_THREADPOOL
#include <cstddef>

namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool
#endif

namespace alignkd {

int64_t runtime_threads() {
#ifdef ALIGNKD_HAS_THREADPOOL
  auto* pool = executorch::extension::threadpool::get_threadpool();
  return pool != nullptr ? int64_t(pool->get_thread_count()) : 1;
#else
  return 1;
#endif
}

bool set_runtime_threads(unsigned int n) {
  if (n == 0) return true;
#ifdef ALIGNKD_HAS_THREADPOOL
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool == nullptr) return false;
  pool->_unsafe_reset_threadpool(n);
  return int64_t(pool->get_thread_count()) == int64_t(n);
#else
  return n == 1;
#endif
}

}  // namespace alignkd
