// The process's MPI session: MPI_Init/MPI_Finalize around a tool's main, rank and size, and the
// few host-side collectives the tools need to agree (all ranks succeeded, a string from rank 0,
// a sum). Under mpirun/mpiexec/srun (a launcher's environment: Open MPI, PMI, PMIx, Cray PALS,
// MVAPICH) MPI is initialised; a plain process runs without MPI as rank 0 of 1 (no singleton
// MPI_Init: Open MPI's would start an orted daemon, which a relocated bundle or a machine without
// an MPI installation does not have). LLM_MPI=1 initialises MPI regardless, LLM_MPI=0 never.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"

namespace llm {

// An error every rank has reached together (its verdict agreed through a collective): the tool's
// rank 0 says it once and every rank exits 2, with no abort. Any other error under MPI aborts the
// job, so no rank is left waiting in a collective.
struct AllRanksError : ConfigError {
  using ConfigError::ConfigError;
};

// "rank 3", "ranks 1, 2 and 5", "ranks 1, 2, 3 ... (7 ranks)".
std::string ranks_phrase(const std::vector<int>& ranks);

class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Whether this process initialised MPI (see above).
  bool uses_mpi() const { return mpi_; }
  // True when `ok` on every rank (collective).
  bool all_ok(bool ok) const;
  // Rank 0's `s` on every rank (collective).
  std::string broadcast(std::string s) const;
  // Every rank's `s` on rank 0, in rank order (collective; other ranks get an empty list).
  std::vector<std::string> gather(const std::string& s) const;
  int64_t sum(int64_t v) const;
  double max(double v) const;
  // The ranks of the job on this rank's node (MPI_COMM_TYPE_SHARED; collective), 1 without MPI.
  int node_size() const;
  void barrier() const;
  // The ranks that do not see a file rank 0 creates beside `path` (in its nearest directory that
  // exists on rank 0): a directory on node-local disk, or a mount only some nodes have. Every
  // rank writes into a directory rank 0 made (a checkpoint's, a dataset's staging), so such a
  // path fails only at the end of the work. Collective; empty without MPI, when every rank sees
  // it, and when rank 0 cannot write there (the writability checks say so).
  std::vector<int> ranks_not_seeing(const std::string& path) const;
  // Before a rank other than 0 reports an error of its own and ends the job: two seconds in which
  // rank 0, when it met the same error (every rank usually does), reports it and ends the job
  // first, so the user reads it once, and a rank's error alone still reaches them. Returns at
  // once on rank 0 and without MPI.
  void yield_to_lead() const;
  // Ends every rank of the job now (after a rank-local failure, so no rank waits forever in a
  // collective the failed one will never reach).
  [[noreturn]] void abort(int code) const;

 private:
  int rank_ = 0, size_ = 1;
  bool mpi_ = false;
};

// Whether the environment is that of an MPI launcher (or LLM_MPI says so).
bool launched_by_mpi();

// The rank and size an MPI launcher gave this process, read from its environment before any
// MPI_Init (Open MPI's OMPI_COMM_WORLD_*, PMI_* of MPICH/Hydra and Cray PALS, MVAPICH's MV2_*);
// {0, 1} when there is none or it says nothing. For single-process tools to refuse running as
// one of several copies, each of which would write the same output.
struct LauncherWorld {
  int rank = 0, size = 1;
};
LauncherWorld launcher_world();
// Throws a ConfigError naming `tool` when launcher_world() has more than one process.
void require_single_process(const std::string& tool);

}  // namespace llm
