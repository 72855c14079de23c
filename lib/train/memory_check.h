// Before a CPU run allocates: what the performance model says a rank will hold at its peak,
// against what the node leaves it, so that a run far too large for the machine ends with one
// message instead of the kernel's OOM killer (which takes other jobs' memory on the way).
#pragma once
#include <string>

#include "parallel/process_grid.h"
#include "train/args.h"

namespace llm {

// Bytes this process may still use on the host: /proc/meminfo's MemAvailable, or, when lower,
// what a cgroup (v2) on its path leaves: its limit less its usage without the reclaimable file
// cache (inactive_file), the tightest of the process's group and its ancestors (a batch job's
// allocation sits on the job's group, not the leaf). 0 when unknown.
// (`proc` and `cgroup` are the file systems' roots; tests give a made-up tree.)
double available_host_bytes(const std::string& proc = "/proc", const std::string& cgroup = "/sys/fs/cgroup");

struct HostMemoryVerdict {
  double predicted = 0;  // bytes per rank at the peak (the performance model, no runtime overhead)
  double states = 0, activations = 0, logits = 0;
  std::string warning;   // non-empty: over the rank's share, but within the model's error
};
// The verdict for a run of `args` under `layout` given `available` bytes per rank (0: unknown,
// no verdict). A ConfigError ("out of host memory (predicted ...)", which llm-sweep counts as an
// OOM row), naming the estimate, its parts and the flags that shrink it, when the estimate is more
// than 4 times the share: the model's error on this backend is well under that, so such a run
// could not have finished.
HostMemoryVerdict check_host_memory(const TrainArgs& args, const ParallelLayout& layout, double available);

}  // namespace llm
