// The persistent helper-thread pool behind parallel_for (see parallel.h).
#include "parallel.h"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

namespace bitflow::ops {
namespace {

struct Job {
  const std::function<void(std::int64_t)>* fn = nullptr;
  std::int64_t n_tasks = 0;
  std::atomic<std::int64_t> next{0};
  std::atomic<std::int64_t> done{0};
  int helpers_wanted = 0;  // guarded by Pool::mutex
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::exception_ptr error;
  std::mutex done_mutex;
  std::condition_variable done_cv;

  // Take and run tasks until none is left. Every taken task counts as done, also when an
  // earlier one failed (then it is skipped), so the caller's wait always ends.
  void work() {
    for (;;) {
      const std::int64_t t = next.fetch_add(1);
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
      if (done.fetch_add(1) + 1 == n_tasks) {
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
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job->helpers_wanted = helpers;
      queue_.push_back(job);
      while (static_cast<int>(n_workers_) < helpers) {
        try {
          std::thread(&Pool::worker_loop, this).detach();
          ++n_workers_;
        } catch (...) {
          break;  // no more threads: the ones we have (and the caller) do the work
        }
      }
    }
    cv_.notify_all();
    job->work();
    {
      // Helpers that have not joined yet are no longer needed.
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = queue_.begin(); it != queue_.end(); ++it)
        if (*it == job) {
          queue_.erase(it);
          break;
        }
    }
    {
      std::unique_lock<std::mutex> lock(job->done_mutex);
      job->done_cv.wait(lock, [&] { return job->done.load() >= n_tasks; });
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void worker_loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return !queue_.empty(); });
        job = queue_.front();
        if (--job->helpers_wanted <= 0) queue_.pop_front();
      }
      job->work();
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::size_t n_workers_ = 0;
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

}  // namespace

void parallel_run(std::int64_t n_tasks, int threads, const std::function<void(std::int64_t)>& fn) {
  pool().run(n_tasks, threads, fn);
}

}  // namespace bitflow::ops
