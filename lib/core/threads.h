// CPU thread counts: the --threads/--workers flags and OMP_NUM_THREADS, checked before OpenMP
// starts a team with them.
#pragma once
#include <cstdint>
#include <string>

namespace llm {

// The most threads one process takes. libgomp lays out a new team's start data on the calling
// thread's stack (alloca): a team of ~100000 overflowed an 8 MiB stack and crashed (SIGSEGV) in
// the first parallel region. 4096 is far past any node's hardware threads.
inline constexpr int64_t kMaxThreads = 4096;

// Sets OpenMP's thread count to `requested` when it is > 0; 0 keeps OMP_NUM_THREADS (or all
// cores). A count outside [0, kMaxThreads] is a ConfigError naming `flag`, and one from
// OMP_NUM_THREADS above kMaxThreads names the variable.
void set_cpu_threads(int64_t requested, const std::string& flag);

// set_cpu_threads' checks alone (a process that passes the count on to others).
void check_cpu_threads(int64_t requested, const std::string& flag);

}  // namespace llm
