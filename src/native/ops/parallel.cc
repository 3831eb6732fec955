// The persistent helper-thread pool behind parallel_for (see parallel.h).
#include "parallel.h"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

namespace bitflow::ops {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/// How long a waiting thread spins before it sleeps (BITFLOW_SPIN_US, default 100 us).
std::chrono::nanoseconds spin_budget() {
  static const std::chrono::nanoseconds budget = [] {
    long us = 100;
    if (const char* env = std::getenv("BITFLOW_SPIN_US"); env != nullptr && env[0] != '\0') {
      char* end = nullptr;
      const long v = std::strtol(env, &end, 10);
      if (end != env && *end == '\0' && v >= 0 && v <= 1000000) us = v;
    }
    return std::chrono::nanoseconds(us * 1000);
  }();
  return budget;
}

/// Spin until ready() or the spin budget is spent; returns ready().
template <class Ready>
bool spin_until(Ready&& ready) {
  const auto budget = spin_budget();
  if (budget.count() == 0) return ready();
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() - start >= budget) return ready();
  }
}

// The counters that every thread writes (next, done) sit on their own cache lines, apart
// from the read-mostly fields, so taking a task does not invalidate the others' copies of fn.
struct Job {
  const std::function<void(std::int64_t)>* fn = nullptr;
  std::int64_t n_tasks = 0;
  int helpers_wanted = 0;  // guarded by Pool::mutex
  alignas(64) std::atomic<std::int64_t> next{0};
  alignas(64) std::atomic<std::int64_t> done{0};
  alignas(64) std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::exception_ptr error;
  std::mutex done_mutex;
  std::condition_variable done_cv;

  // Take and run tasks until none is left. Every taken task counts as done, also when an
  // earlier one failed (then it is skipped), so the caller's wait always ends.
  void work() {
    for (;;) {
      const std::int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= n_tasks) return;
      if (!failed.load(std::memory_order_relaxed)) {
        try {
          (*fn)(t);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
          failed.store(true);
        }
      }
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == n_tasks) {
        std::lock_guard<std::mutex> lock(done_mutex);
        done_cv.notify_all();
      }
    }
  }
};

class Pool {
 public:
  void run(std::int64_t n_tasks, int threads, const std::function<void(std::int64_t)>& fn) {
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n_tasks = n_tasks;
    const int helpers = static_cast<int>(std::min<std::int64_t>(threads, n_tasks)) - 1;
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job->helpers_wanted = helpers;
      queue_.push_back(job);
      queued_.store(static_cast<int>(queue_.size()), std::memory_order_release);
      while (static_cast<int>(n_workers_) < helpers) {
        try {
          std::thread(&Pool::worker_loop, this).detach();
          ++n_workers_;
        } catch (...) {
          break;  // no more threads: the ones we have (and the caller) do the work
        }
      }
      wake = sleepers_ > 0;  // read under the mutex: a helper going to sleep has counted itself
    }
    if (wake) cv_.notify_all();
    job->work();
    {
      // Helpers that have not joined yet are no longer needed.
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = queue_.begin(); it != queue_.end(); ++it)
        if (*it == job) {
          queue_.erase(it);
          break;
        }
      queued_.store(static_cast<int>(queue_.size()), std::memory_order_release);
    }
    const auto finished = [&] { return job->done.load(std::memory_order_acquire) >= n_tasks; };
    if (!spin_until(finished)) {
      std::unique_lock<std::mutex> lock(job->done_mutex);
      job->done_cv.wait(lock, finished);
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void worker_loop() {
    for (;;) {
      // Spin on the queue length first (no lock), then sleep.
      spin_until([&] { return queued_.load(std::memory_order_acquire) > 0; });
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        while (queue_.empty()) {
          ++sleepers_;
          cv_.wait(lock);
          --sleepers_;
        }
        job = queue_.front();
        if (--job->helpers_wanted <= 0) {
          queue_.pop_front();
          queued_.store(static_cast<int>(queue_.size()), std::memory_order_release);
        }
      }
      job->work();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;  // guarded by mutex_
  std::size_t n_workers_ = 0;               // guarded by mutex_
  int sleepers_ = 0;                        // guarded by mutex_
  alignas(64) std::atomic<int> queued_{0};  // queue_.size(), for the lock-free spin
};

// One pool per process. After fork() the child must not use the parent's pool (its helper
// threads do not exist there and its mutexes may be held): the atfork child handler, which
// runs while the child still has a single thread, drops it (deliberately leaked) so the
// child creates its own. Pools are never destroyed, so detached helpers blocked in a wait
// never touch freed memory at interpreter exit.
std::atomic<Pool*> g_pool{nullptr};
std::atomic<std::mutex*> g_create_mutex{new std::mutex()};

void reset_in_child() {
  g_pool.store(nullptr);
  g_create_mutex.store(new std::mutex());
}

Pool& pool() {
  static const int registered = pthread_atfork(nullptr, nullptr, &reset_in_child);
  (void)registered;
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p != nullptr) return *p;
  std::lock_guard<std::mutex> lock(*g_create_mutex.load());
  p = g_pool.load(std::memory_order_acquire);
  if (p == nullptr) {
    p = new Pool();
    g_pool.store(p, std::memory_order_release);
  }
  return *p;
}

std::atomic<double> g_grain_ns{kGrainNs};

}  // namespace

double grain_ns() { return g_grain_ns.load(std::memory_order_relaxed); }

double set_grain_ns(double ns) { return g_grain_ns.exchange(ns < 0 ? 0 : ns); }

void parallel_run(std::int64_t n_tasks, int threads, const std::function<void(std::int64_t)>& fn) {
  pool().run(n_tasks, threads, fn);
}

}  // namespace bitflow::ops
