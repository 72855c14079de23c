// The MPI communicators' collective timeout (set_mpi_timeout_seconds, llm-pretrain's
// --distributed-timeout-minutes on CPUs), under mpirun -np 2; tests/mpi/timeout/timeout_test.sh
// runs every mode and reads the exit status, the time and rank 0's message.
//
//   ok        every collective joined, one by a rank 1 s late and one waited for 3 s after it
//             started (compute between a non-blocking start and its wait is no peer's fault):
//             no timeout fires, exit 0
//   blocking  rank 1 never joins a tensor all-reduce: rank 0 must be ended by the watchdog
//   scalar    the same for a scalar all-reduce (the trainer's loss and gradient-norm sums)
//   recv      rank 0 waits for a message rank 1 never sends
//   split     rank 1 never joins MPI_Comm_split (a communicator's set-up)
//   waited    rank 1 never joins a non-blocking all-gather of ranges rank 0 waits for
//
// The timeout is 2 s. In the failing modes rank 1 sleeps 30 s and then exits 3, and rank 0 exits
// 3 if its wait ever returns: the expected end is rank 0's exit 1 within a few seconds, after
// which the launcher ends rank 1.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "comm/communicator.h"
#include "comm/mpi_session.h"
#include "core/tensor.h"

namespace {
void sleep_s(double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); }

[[noreturn]] void rank1_waits_out() {
  sleep_s(30);
  std::fprintf(stderr, "rank 1: FAILED rank 0 was not ended by the timeout in 30 s\n");
  std::fflush(stderr);
  std::_Exit(3);
}
[[noreturn]] void rank0_returned(const char* what) {
  std::fprintf(stderr, "rank 0: FAILED %s returned although rank 1 never joined\n", what);
  std::fflush(stderr);
  sleep_s(10);
  std::_Exit(3);
}
}  // namespace

int main(int argc, char** argv) {
  llm::MpiSession mpi(&argc, &argv);
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mpi.size() != 2) {
    std::fprintf(stderr, "run under mpirun -np 2\n");
    return 2;
  }
  llm::set_mpi_timeout_seconds(2.0);
  const int rank = mpi.rank();
  try {
    if (mode == "split") {
      if (rank == 1) rank1_waits_out();
      auto sub = llm::mpi_split_communicator(0, rank);
      rank0_returned("MPI_Comm_split");
    }
    auto comm = llm::mpi_world_communicator();
    llm::Tensor x = llm::Tensor::zeros({1024});
    x.fill(float(rank + 1));
    comm->all_reduce_sum(x);  // both join: x = 3
    if (x.data<float>()[0] != 3.0f) throw std::runtime_error("the all-reduce both ranks joined is wrong");
    if (mode == "ok") {
      if (rank == 1) sleep_s(1.0);  // late, within the timeout
      const double s = comm->all_reduce_sum(double(rank));
      llm::Tensor r = llm::Tensor::zeros({3000});
      auto pending = comm->all_gather_ranges_async(r, {0, 1000, 3000});
      sleep_s(3.0);  // past the timeout, between the start and the wait
      pending->wait();
      if (rank == 0) comm->send(x, 1, 5);
      else comm->recv(x, 0, 5);
      comm->barrier();
      if (s != 1.0) throw std::runtime_error("the scalar all-reduce is wrong");
      if (rank == 0) std::printf("MPI timeout: no false alarm\n");
      return 0;
    }
    if (rank == 1) rank1_waits_out();
    if (mode == "blocking") {
      comm->all_reduce_sum(x);
      rank0_returned("all_reduce_sum");
    } else if (mode == "scalar") {
      (void)comm->all_reduce_sum(1.0);
      rank0_returned("all_reduce_sum (a scalar)");
    } else if (mode == "recv") {
      comm->recv(x, 1, 7);
      rank0_returned("recv");
    } else if (mode == "waited") {
      llm::Tensor r = llm::Tensor::zeros({3000});
      auto pending = comm->all_gather_ranges_async(r, {0, 1000, 3000});
      pending->wait();
      rank0_returned("all_gather_ranges_async's wait");
    }
    std::fprintf(stderr, "unknown mode '%s'\n", mode.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: FAILED %s\n", rank, e.what());
    std::fflush(stderr);
    sleep_s(10);
    std::_Exit(3);
  }
}
