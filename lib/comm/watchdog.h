// A thread that polls a set of communicators for errors no caller would see: NCCL records a
// failure inside the network (a link error, a peer lost without its process exiting) as the
// communicator's asynchronous error, and the rank's own work then waits in a stream synchronise
// until the job's wall time. On the first error the watchdog aborts every communicator it holds
// (which ends their kernels) after calling `fail` with a message naming the communicator; the
// NCCL communicator's `fail` ends the process (so no abort runs: the exit ends the kernels), and
// the launcher ends the job.
//
// It also ends a collective that never finishes: a rank that stopped without an error NCCL can
// see (a crash in its own code past a collective, a rank waiting in a different collective, a
// hung node) leaves its peers' kernels waiting forever. Each communicator records a marker (a
// CUDA event) after every operation it queues (PendingOps below); an operation still unfinished
// a timeout after it was queued (Megatron's --distributed-timeout-minutes, 10 by default, as
// PyTorch's process groups) is reported as that communicator's error.
//
// Plain C++ (no NCCL): the query, abort, fail and marker actions are given, so the policy is
// tested in every build (tests/parallel/watchdog_test.cpp); comm/nccl_communicator.cpp gives NCCL's.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace llm {

// LLM_NCCL_WATCHDOG_MS: unset or empty 1000 (poll once a second), "0" off, else a positive
// number of milliseconds; anything else throws naming the variable.
int watchdog_period_ms(const char* setting);

// The MPI communicators' watchdog period for a timeout: a tenth of it, within [50, 1000] ms.
int watchdog_period_for(double timeout_s);

// What every watchdog's fail does in a process: prints "[error] <message>; this rank exits
// (<consequence>)" to stderr and ends the process with exit status 1 (the launcher then ends the
// job). Once per process: a second watchdog failing meanwhile (a rank's NCCL and MPI communicators
// both wait on the same lost peer) waits for the first to exit, so one line is printed.
[[noreturn]] void watchdog_exit(const std::string& message, const char* consequence);

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

  // check (optional) is asked too when query finds nothing: "" healthy, else what failed (the
  // handle's PendingOps timeout). communicator false: a handle that is not one (a WatchedPhase),
  // only checked: never queried, never aborted.
  void add(void* handle, std::string name, std::function<std::string()> check = {}, bool communicator = true);
  // After remove() returns no query or abort of `handle` is running or will run: its owner may
  // destroy it.
  void remove(void* handle);
  // Whether its thread runs (a period above 0): only then is a handle's check ever asked.
  bool polling() const { return thread_.joinable(); }
  // One round: queries every communicator handle and checks every handle (a WatchedPhase's only
  // checked, never queried or aborted); on the first error calls fail, then (if it returns)
  // aborts the communicators, once, both under the lock remove() takes. Returns whether every handle was healthy.
  bool poll();
  bool failed() const;

 private:
  void loop(int period_ms);
  Query query_;
  Abort abort_;
  Fail fail_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  struct Handle {
    void* handle;
    std::string name;
    std::function<std::string()> check;
    bool communicator;
  };
  std::vector<Handle> handles_;
  bool stop_ = false, failed_ = false;
  std::thread thread_;
};

// A blocking phase outside any communicator's operations, watched while it lives: a
// communicator's set-up (MPI's collectives and ncclCommInitRank wait for every rank of the group,
// so a rank that never comes leaves the others there), its ncclCommDestroy, and the NCCL
// communicator's MPI calls beside NCCL (scalar reductions, the barrier, host tensors). The watchdog fails the rank once
// `timeout_s` has passed since `started` (0: not watched).
class WatchedPhase {
 public:
  using Clock = std::chrono::steady_clock;
  WatchedPhase(Watchdog& watchdog, std::string what, double timeout_s, Clock::time_point started = Clock::now());
  ~WatchedPhase();
  WatchedPhase(const WatchedPhase&) = delete;
  WatchedPhase& operator=(const WatchedPhase&) = delete;
  // "" while age_s < timeout_s, else what the watchdog reports after the phase's name.
  static std::string overdue(double age_s, double timeout_s);

 private:
  Watchdog* watchdog_ = nullptr;  // null: not watched
};

// The operations one communicator has queued and not yet seen finish, each with a marker that
// finishes after it in its stream (a CUDA event), the time it was queued, and what it was.
// Markers are recycled: check() moves finished ones to a free list that reuse() hands out again,
// so a steady run records into the same few events. Thread-safe: the owner pushes, the watchdog
// checks (querying the markers outside the lock push() takes).
class PendingOps {
 public:
  using Clock = std::chrono::steady_clock;
  using Done = std::function<bool(void* marker)>;  // whether the marker (and what precedes it) finished
  // library: whose calls the owner's thread waits in ("NCCL", "MPI"), for the message.
  explicit PendingOps(Done done, const char* library = "NCCL") : done_(std::move(done)), library_(library) {}
  // A finished marker to record again, or null (the owner makes a new one).
  void* reuse();
  // op: a string literal (kept as a pointer); peer: the other rank of a send or receive, else -1.
  void push(void* marker, const char* op, int64_t bytes, int peer, Clock::time_point queued);
  // The owner's thread is inside an operation's call, which may itself wait for a peer (NCCL
  // sets up a pair's connection inside their first operation): timed as a pending operation,
  // from `started`, until leave(). One at a time (the owner's thread).
  void enter(const char* op, int64_t bytes, int peer, Clock::time_point started);
  void leave();
  // Drops the finished operations; "" when none still pending was queued timeout_s or more before
  // now, else the oldest such: what it was and how long ago it was queued.
  std::string check(Clock::time_point now, double timeout_s);
  size_t pending() const;
  // Every marker, pending or free, for the owner to destroy (once nothing can still record them);
  // the set is closed: check() finds nothing from here on, and push() refuses.
  std::vector<void*> release_all();

 private:
  struct Op {
    void* marker;
    const char* op;
    int64_t bytes;
    int peer;
    Clock::time_point queued;
    bool in_call = false;  // enter()'s: no marker yet
  };
  Done done_;
  const char* library_;
  std::mutex check_mu_;   // one check() at a time
  mutable std::mutex mu_;  // pending_ and free_
  std::deque<Op> pending_;
  std::vector<void*> free_;
  Op call_{};  // set between enter() and leave()
  bool closed_ = false;
};

}  // namespace llm
