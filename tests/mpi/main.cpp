// GoogleTest under MPI: every rank runs every test; ctest starts this under mpirun with 2, 3 and
// 4 ranks. A failure on any rank fails the job (non-zero exit from that rank; a rank left waiting
// for it in a collective is ended by the collective timeout). Rank 0 prints the
// progress lines; the other ranks print only their failures, prefixed with their rank, so the log
// stays readable and still says what went wrong where.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "comm/communicator.h"
#include "comm/mpi_session.h"

namespace {
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  // (The test's name is taken at its start: asking GoogleTest during a result deadlocks.)
  void OnTestStart(const ::testing::TestInfo& t) override {
    test_ = std::string(t.test_suite_name()) + "." + t.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: %s\n", rank_, test_.c_str(), r.file_name() ? r.file_name() : "?",
                 r.line_number(), r.summary());
  }

 private:
  int rank_;
  std::string test_;
};
}  // namespace

int main(int argc, char** argv) {
  llm::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  // ctest says how many ranks it started (LLM_TEST_RANKS): processes that did not form one MPI
  // job (no launcher seen, LLM_MPI=0) would each run as a world of one, skip every layout and
  // pass.
  if (const char* want = std::getenv("LLM_TEST_RANKS"); want && std::atoi(want) != mpi.size()) {
    std::fprintf(stderr, "test_mpi: LLM_TEST_RANKS=%s but this process is rank %d of %d\n", want, mpi.rank(),
                 mpi.size());
    return 1;
  }
  // A test that fails on one rank (an ASSERT returns early) leaves the others waiting in a
  // collective that rank never joins: the communicators' collective timeout (llm-pretrain's
  // --distributed-timeout-minutes) then ends the job within a minute, naming the operation and
  // the rank, where ctest would wait out its 10 minutes. LLM_TEST_MPI_TIMEOUT: seconds (0: none).
  const char* timeout = std::getenv("LLM_TEST_MPI_TIMEOUT");
  llm::set_mpi_timeout_seconds(timeout ? std::atof(timeout) : 60.0);
  if (mpi.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(mpi.rank()));
  }
  const int rc = RUN_ALL_TESTS();
  // Report a failing rank's verdict on rank 0 too.
  const bool all_ok = mpi.all_ok(rc == 0);
  if (!all_ok && mpi.rank() == 0 && rc == 0) std::fprintf(stderr, "a test failed on another rank\n");
  return all_ok ? 0 : 1;
}
