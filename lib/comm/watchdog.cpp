#include "comm/watchdog.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "core/error.h"

namespace llm {

int watchdog_period_ms(const char* setting) {
  const std::string s = setting ? setting : "";
  if (s.empty()) return 1000;
  int ms = -1;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), ms);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || ms < 0)
    throw ConfigError("LLM_NCCL_WATCHDOG_MS='" + s +
                      "': expected milliseconds between checks of the NCCL communicators' errors (0: off)");
  return ms;
}

int watchdog_period_for(double timeout_s) {
  return static_cast<int>(std::clamp(timeout_s * 100.0, 50.0, 1000.0));
}

void watchdog_exit(const std::string& message, const char* consequence) {
  static std::mutex once;
  once.lock();  // never unlocked: this process ends here
  // stderr first: flushing stdout may block on a full pipe to the launcher.
  std::fprintf(stderr, "[error] %s; this rank exits (%s)\n", message.c_str(), consequence);
  std::fflush(stderr);
  std::fflush(stdout);
  std::_Exit(1);
}

Watchdog::Watchdog(int period_ms, Query query, Abort abort, Fail fail)
    : query_(std::move(query)), abort_(std::move(abort)), fail_(std::move(fail)) {
  if (period_ms > 0) thread_ = std::thread([this, period_ms] { loop(period_ms); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::add(void* handle, std::string name, std::function<std::string()> check, bool communicator) {
  std::lock_guard<std::mutex> lock(mu_);
  handles_.push_back({handle, std::move(name), std::move(check), communicator});
}

void Watchdog::remove(void* handle) {
  std::lock_guard<std::mutex> lock(mu_);  // waits for a poll in progress
  handles_.erase(std::remove_if(handles_.begin(), handles_.end(), [&](const Handle& h) { return h.handle == handle; }),
                 handles_.end());
}

bool Watchdog::failed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_;
}

bool Watchdog::poll() {
  std::lock_guard<std::mutex> lock(mu_);
  if (failed_) return false;
  std::string message;
  for (const Handle& h : handles_) {
    std::string error = h.communicator ? query_(h.handle) : std::string();
    if (error.empty() && h.check) error = h.check();
    if (error.empty()) continue;
    message = h.name + ": " + error;
    break;
  }
  if (message.empty()) return true;
  failed_ = true;
  // fail first: the NCCL one says what failed and ends the process, whose exit ends the kernels.
  // Aborting first would release the owner's thread (its synchronise returns, or its NCCL call
  // errs) into a torn-down communicator and a step on unreduced data, and a crash there could
  // come before the message. A fail that returns gets every handle aborted after it (every
  // communicator, not only the failed one: the others' kernels may wait on it). Both run under
  // the lock: an owner's remove() waits for them, never touching an aborted handle.
  fail_(message);
  for (const Handle& h : handles_)
    if (h.communicator) abort_(h.handle);
  return false;
}

void Watchdog::loop(int period_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_ && !failed_) {
    cv_.wait_for(lock, std::chrono::milliseconds(period_ms), [this] { return stop_; });
    if (stop_) break;
    lock.unlock();
    poll();
    lock.lock();
  }
}

WatchedPhase::WatchedPhase(Watchdog& watchdog, std::string what, double timeout_s, Clock::time_point started) {
  if (!(timeout_s > 0)) return;
  watchdog_ = &watchdog;
  watchdog.add(
      this, std::move(what),
      [timeout_s, started] { return overdue(std::chrono::duration<double>(Clock::now() - started).count(), timeout_s); },
      false);
}

WatchedPhase::~WatchedPhase() {
  if (watchdog_) watchdog_->remove(this);
}

std::string WatchedPhase::overdue(double age_s, double timeout_s) {
  if (age_s < timeout_s) return "";
  char line[512];
  std::snprintf(line, sizeof(line),
                "not finished %.1f s after it began (the timeout is %.1f s: --distributed-timeout-minutes); "
                "a rank of the group never joined it (stopped, or waiting elsewhere)",
                age_s, timeout_s);
  return line;
}

void* PendingOps::reuse() {
  std::lock_guard<std::mutex> lock(mu_);
  if (free_.empty()) return nullptr;
  void* m = free_.back();
  free_.pop_back();
  return m;
}

void PendingOps::push(void* marker, const char* op, int64_t bytes, int peer, Clock::time_point queued) {
  std::lock_guard<std::mutex> lock(mu_);
  LLM_CHECK(!closed_, "PendingOps::push(", op, ") after release_all()");
  pending_.push_back({marker, op, bytes, peer, queued});
}

void PendingOps::enter(const char* op, int64_t bytes, int peer, Clock::time_point started) {
  std::lock_guard<std::mutex> lock(mu_);
  call_ = {nullptr, op, bytes, peer, started, true};
}

void PendingOps::leave() {
  std::lock_guard<std::mutex> lock(mu_);
  call_ = {};
}

size_t PendingOps::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.size();
}

std::string PendingOps::check(Clock::time_point now, double timeout_s) {
  // The markers are queried without holding the lock push() takes (the owner's thread keeps
  // queueing meanwhile); only check() removes, one at a time, so the snapshot's operations are
  // still the first of pending_ when the lock is taken again.
  std::lock_guard<std::mutex> one(check_mu_);
  std::vector<Op> snapshot;
  Op call{};
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return "";
    snapshot.assign(pending_.begin(), pending_.end());
    call = call_;
  }
  // Every finished one goes, not only a finished prefix: the operations of two streams (blocking
  // and non-blocking) interleave here, and either may finish first.
  std::vector<char> finished(snapshot.size());
  for (size_t i = 0; i < snapshot.size(); ++i) finished[i] = done_(snapshot[i].marker);
  const Op* oldest = call.in_call ? &call : nullptr;
  for (size_t i = 0; i < snapshot.size(); ++i)
    if (!finished[i] && (!oldest || snapshot[i].queued < oldest->queued)) oldest = &snapshot[i];
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return "";
    std::deque<Op> still;
    for (size_t i = 0; i < pending_.size(); ++i) {
      if (i < snapshot.size() && finished[i])
        free_.push_back(pending_[i].marker);
      else
        still.push_back(pending_[i]);
    }
    pending_.swap(still);
  }
  if (!oldest || timeout_s <= 0) return "";
  const double age = std::chrono::duration<double>(now - oldest->queued).count();
  if (age < timeout_s) return "";
  char line[512];
  std::snprintf(line, sizeof(line),
                "%s of %lld bytes%s%s %s %.1f s ago %s%s%s (the timeout is %.1f s: "
                "--distributed-timeout-minutes); a rank of this communicator never joined it (stopped, or waiting "
                "in another collective)",
                oldest->op, static_cast<long long>(oldest->bytes), oldest->peer >= 0 ? " with rank " : "",
                oldest->peer >= 0 ? std::to_string(oldest->peer).c_str() : "",
                oldest->in_call ? "called" : "queued", age,
                oldest->in_call ? "has not returned (its " : "has not finished", oldest->in_call ? library_ : "",
                oldest->in_call ? " call waits for the peers)" : "", timeout_s);
  return line;
}

std::vector<void*> PendingOps::release_all() {
  std::lock_guard<std::mutex> one(check_mu_);  // no check() still querying what is handed back
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  call_ = {};
  std::vector<void*> all = std::move(free_);
  free_.clear();
  for (const Op& o : pending_) all.push_back(o.marker);
  pending_.clear();
  return all;
}

}  // namespace llm
