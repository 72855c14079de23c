#include "comm/watchdog.h"

#include <algorithm>
#include <charconv>
#include <chrono>

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

void Watchdog::add(void* handle, std::string name) {
  std::lock_guard<std::mutex> lock(mu_);
  handles_.emplace_back(handle, std::move(name));
}

void Watchdog::remove(void* handle) {
  std::lock_guard<std::mutex> lock(mu_);  // waits for a poll in progress
  handles_.erase(std::remove_if(handles_.begin(), handles_.end(), [&](const auto& h) { return h.first == handle; }),
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
  for (const auto& [handle, name] : handles_) {
    const std::string error = query_(handle);
    if (error.empty()) continue;
    message = name + ": " + error;
    break;
  }
  if (message.empty()) return true;
  failed_ = true;
  // Every communicator, not only the failed one: the others' kernels may wait on it. fail runs
  // under the lock too: an owner's remove() (its destructor, once its synchronise returns from
  // the aborted kernels) waits until fail has ended the process, never touching an aborted handle.
  for (const auto& h : handles_) abort_(h.first);
  fail_(message);
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

}  // namespace llm
