// A thread that polls a set of communicators for errors no caller would see: NCCL records a
// failure inside the network (a link error, a peer lost without its process exiting) as the
// communicator's asynchronous error, and the rank's own work then waits in a stream synchronise
// until the job's wall time. On the first error the watchdog aborts every communicator it holds
// (which ends their kernels) and calls `fail` with a message naming the communicator; the NCCL
// communicator's `fail` ends the process, so the launcher ends the job.
//
// Plain C++ (no NCCL): the query, abort and fail actions are given, so the policy is tested in
// every build (tests/parallel/watchdog_test.cpp); comm/nccl_communicator.cpp gives NCCL's.
#pragma once
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace llm {

// LLM_NCCL_WATCHDOG_MS: unset or empty 1000 (poll once a second), "0" off, else a positive
// number of milliseconds; anything else throws naming the variable.
int watchdog_period_ms(const char* setting);

class Watchdog {
 public:
  using Query = std::function<std::string(void* handle)>;  // "" when healthy, else what failed
  using Abort = std::function<void(void* handle)>;
  using Fail = std::function<void(const std::string& message)>;
  // period_ms > 0: a thread polls every period; 0: no thread (poll() by hand).
  Watchdog(int period_ms, Query query, Abort abort, Fail fail);
  ~Watchdog();  // stops and joins the thread
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void add(void* handle, std::string name);
  // After remove() returns no query or abort of `handle` is running or will run: its owner may
  // destroy it.
  void remove(void* handle);
  // One round: queries every handle; on the first error aborts them all (once) and calls fail,
  // both under the lock remove() takes. Returns whether every handle was healthy.
  bool poll();
  bool failed() const;

 private:
  void loop(int period_ms);
  Query query_;
  Abort abort_;
  Fail fail_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<void*, std::string>> handles_;
  bool stop_ = false, failed_ = false;
  std::thread thread_;
};

}  // namespace llm
