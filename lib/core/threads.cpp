#include "core/threads.h"

#include <omp.h>

#include <cstdlib>

#include "core/error.h"

namespace llm {

void check_cpu_threads(int64_t requested, const std::string& flag) {
  if (requested < 0 || requested > kMaxThreads)
    throw ConfigError(detail::concat(flag, " ", requested, ": expected 0 (OMP_NUM_THREADS or all cores) to ",
                                     kMaxThreads, " threads"));
  // (libgomp read the variable at start-up: omp_get_max_threads() is its first level.)
  if (requested == 0 && omp_get_max_threads() > kMaxThreads) {
    const char* env = std::getenv("OMP_NUM_THREADS");
    throw ConfigError(detail::concat("OMP_NUM_THREADS=", env ? env : "?", ": at most ", kMaxThreads,
                                     " threads a process (or give ", flag, ")"));
  }
}

void set_cpu_threads(int64_t requested, const std::string& flag) {
  check_cpu_threads(requested, flag);
  if (requested > 0) omp_set_num_threads(static_cast<int>(requested));
}

}  // namespace llm
