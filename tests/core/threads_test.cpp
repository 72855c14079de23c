// set_cpu_threads: a thread count libgomp cannot start (its team's start data on the stack) is
// refused naming the flag or OMP_NUM_THREADS, before any parallel region.
#include <gtest/gtest.h>
#include <omp.h>

#include "core/error.h"
#include "core/threads.h"

namespace llm {
namespace {

std::string message_of(int64_t n, const char* flag) {
  try {
    set_cpu_threads(n, flag);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(Threads, CountsPastTheLimitOrNegativeAreRefusedNamingTheFlag) {
  const int before = omp_get_max_threads();
  EXPECT_EQ(message_of(100000, "--threads"), "--threads 100000: expected 0 (OMP_NUM_THREADS or all cores) to 4096 threads");
  EXPECT_NE(message_of(kMaxThreads + 1, "--workers").find("--workers 4097:"), std::string::npos);
  EXPECT_NE(message_of(-1, "--threads").find("--threads -1:"), std::string::npos);
  EXPECT_EQ(omp_get_max_threads(), before);  // nothing set
}

TEST(Threads, CountsInRangeAreSet) {
  const int before = omp_get_max_threads();
  set_cpu_threads(3, "--threads");
  EXPECT_EQ(omp_get_max_threads(), 3);
  set_cpu_threads(0, "--threads");  // 0 keeps what OpenMP has
  EXPECT_EQ(omp_get_max_threads(), 3);
  EXPECT_NO_THROW(check_cpu_threads(kMaxThreads, "--threads"));
  omp_set_num_threads(before);
}

}  // namespace
}  // namespace llm
