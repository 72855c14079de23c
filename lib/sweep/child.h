// Runs one command as a child process in its own session: stdout and stderr to files, a
// wall-clock limit, and a cap on resident memory per process enforced by watching the session's
// processes in /proc (every 20 ms; mpiexec's ranks have process groups of their own but stay in
// the session) and killing them all when one exceeds it. (RLIMIT_AS/DATA do
// not work here: an idle llm-pretrain already maps ~570 MB of private address space for malloc
// arenas and MPI, and Open MPI spins instead of failing when they bite.) Reports the peak
// resident memory of the largest process (VmHWM / wait4's ru_maxrss). A crash, an OOM kill or
// a timeout of the child is a result, never ours.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llm::sweep {

struct ChildOptions {
  std::string stdout_path, stderr_path;
  std::vector<std::string> env;  // extra NAME=VALUE entries
  int64_t mem_limit_bytes = 0;   // resident bytes per process; 0 = no cap
  double timeout_seconds = 0;    // 0 = none
};

struct ChildResult {
  int exit_code = -1;     // when exited normally
  int signal = 0;         // when killed by a signal
  bool timed_out = false;
  bool over_memory = false;  // killed by us: a process's resident set passed the cap
  bool exec_failed = false;
  double wall_seconds = 0;
  int64_t max_rss_bytes = 0;  // largest resident set among the child and its waited-for descendants
  bool ok() const { return !timed_out && signal == 0 && exit_code == 0; }
};

ChildResult run_child(const std::vector<std::string>& argv, const ChildOptions& o);

// Last `max_lines` non-empty lines of a text file ("" if unreadable).
std::string tail_lines(const std::string& path, int max_lines);

}  // namespace llm::sweep
