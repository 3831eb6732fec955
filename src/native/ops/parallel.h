// Fork-join parallelism for the ops: run fn(t) for t in [0, n_tasks) on up to `threads`
// threads, the caller's included. Tasks are handed out by an atomic counter; every task
// writes disjoint outputs, so results do not depend on the thread count or the schedule.
// The first exception thrown by a task is re-thrown in the caller once every task is done.
//
// Helper threads come from one persistent process-wide pool (creating threads per call
// costs tens of microseconds, a large share of a batch-1 layer). Several callers (Python
// threads with the GIL released) may use the pool at once: each call is a job in a queue
// that idle helpers join. A child process created by fork() gets a fresh pool (the parent's
// helper threads do not exist there).
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <utility>

namespace bitflow::ops {

/// Run fn(t), t in [0, n_tasks), on up to `threads` threads (see the file comment).
void parallel_run(std::int64_t n_tasks, int threads, const std::function<void(std::int64_t)>& fn);

template <class F>
void parallel_for(std::int64_t n_tasks, int threads, F&& fn) {
  if (threads <= 1 || n_tasks <= 1) {
    for (std::int64_t t = 0; t < n_tasks; ++t) fn(t);
    return;
  }
  parallel_run(n_tasks, threads, std::function<void(std::int64_t)>(std::forward<F>(fn)));
}

/// Split [0, total) into `parts` nearly equal chunks; returns [begin, end) of chunk p.
inline std::pair<std::int64_t, std::int64_t> chunk(std::int64_t total, std::int64_t parts,
                                                   std::int64_t p) {
  const std::int64_t base = total / parts, extra = total % parts;
  const std::int64_t begin = p * base + std::min(p, extra);
  return {begin, begin + base + (p < extra ? 1 : 0)};
}

}  // namespace bitflow::ops
