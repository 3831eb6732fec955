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
//
// Waiting. A helper that finds no job spins (a pause instruction per probe of one atomic
// counter) for a short time, BITFLOW_SPIN_US microseconds (default 100; 0 = sleep at once),
// before it sleeps on a condition variable: the ops of one inference follow each other within
// microseconds, so a spinning helper starts the next op without a futex wake-up (tens of
// microseconds on a loaded machine), while an idle engine costs no CPU after the spin.
// The caller, once its own tasks are done, waits for the helpers the same way.
//
// Partitioning by work size. Ops pass their work (in units of about one nanosecond of one
// core) to threads_for(), which returns how many threads are worth waking: none beyond the
// caller for tiny ops (no fork-join at all), and at most one per grain_ns() (default
// kGrainNs; tests set it to 0 with set_grain_ns so that small inputs take every split).
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <utility>

namespace bitflow::ops {

/// Default smallest share of work worth handing to another thread, in estimated nanoseconds
/// of one core: a wake-up of a spinning helper plus the job hand-off cost about 1-2 us, a
/// sleeping one tens of microseconds.
inline constexpr double kGrainNs = 20000.0;

/// The grain in use (kGrainNs unless set_grain_ns changed it).
double grain_ns();
/// Set the grain (>= 0; 0: every op uses all threads it is given); returns the old value.
double set_grain_ns(double ns);

/// Threads to use for `work_ns` estimated nanoseconds of single-thread work: between 1 and
/// `threads`, one per grain of work (all `threads` when the grain is 0).
inline int threads_for(double work_ns, int threads) {
  const double grain = grain_ns();
  if (threads <= 1) return 1;
  if (grain <= 0) return threads;
  if (!(work_ns >= 2 * grain)) return 1;
  const double t = work_ns / grain;
  return t >= static_cast<double>(threads) ? threads : std::max(1, static_cast<int>(t));
}

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

/// Rows [0, rows) in contiguous chunks over the threads worth using for `ns_per_row`
/// nanoseconds per row: fn(r0, r1) once per chunk (one chunk per thread, so each thread's
/// output is one contiguous range: no false sharing except at the chunk edges).
template <class F>
void parallel_rows(std::int64_t rows, double ns_per_row, int threads, F&& fn) {
  if (rows <= 0) return;
  const int t = static_cast<int>(
      std::min<std::int64_t>(threads_for(static_cast<double>(rows) * ns_per_row, threads), rows));
  if (t <= 1) {
    fn(std::int64_t{0}, rows);
    return;
  }
  parallel_for(t, t, [&](std::int64_t p) {
    const auto [r0, r1] = chunk(rows, t, p);
    fn(r0, r1);
  });
}

}  // namespace bitflow::ops
