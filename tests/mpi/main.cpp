// GoogleTest under MPI: every rank runs every test; ctest starts this under mpirun with 2 and 4
// ranks. A failure on any rank fails the job (non-zero exit from that rank), and only rank 0
// prints the progress lines so the log stays readable.
#include <gtest/gtest.h>

#include "comm/mpi_session.h"

int main(int argc, char** argv) {
  llm::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (mpi.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  // Report a failing rank's verdict on rank 0 too.
  const bool all_ok = mpi.all_ok(rc == 0);
  if (!all_ok && mpi.rank() == 0 && rc == 0) std::fprintf(stderr, "a test failed on another rank\n");
  return all_ok ? 0 : 1;
}
