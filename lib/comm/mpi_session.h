// The process's MPI session: MPI_Init/MPI_Finalize around a tool's main, rank and size, and the
// few host-side collectives the tools need to agree (all ranks succeeded, a string from rank 0,
// a sum). Works as a plain process (MPI singleton) and under mpirun/mpiexec/srun.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llm {

class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // True when `ok` on every rank (collective).
  bool all_ok(bool ok) const;
  // Rank 0's `s` on every rank (collective).
  std::string broadcast(std::string s) const;
  // Every rank's `s` on rank 0, in rank order (collective; other ranks get an empty list).
  std::vector<std::string> gather(const std::string& s) const;
  int64_t sum(int64_t v) const;
  double max(double v) const;
  void barrier() const;
  // Ends every rank of the job now (after a rank-local failure, so no rank waits forever in a
  // collective the failed one will never reach).
  [[noreturn]] void abort(int code) const;

 private:
  int rank_ = 0, size_ = 1;
};

}  // namespace llm
