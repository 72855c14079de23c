// Measures one sweep point by running llm-pretrain on mock data as a child process (under
// mpiexec for several ranks) and reading its metrics.jsonl: warm-up iterations dropped, the
// rest summarised by median and spread. Impossible layouts are skipped with the reason, crashes
// and memory exhaustion become the point's status, never the sweep's.
#pragma once
#include <string>

#include "sweep/child.h"
#include "sweep/result.h"

namespace llm::sweep {

struct MeasureOptions {
  LaunchOptions launch;           // pretrain path, mpiexec, iterations, threads (output_dir set per point)
  std::string runs_root;          // each point runs in <runs_root>/<index>-<label>
  int64_t mem_limit_bytes = 0;    // per-rank cap on resident memory (0 = none)
  double timeout_seconds = 600;
  double peak_tflops_total = 0;   // for MFU
};

PointResult measure_point(const SweepPoint& p, const GPTConfig& model, const MeasureOptions& o, int index);

// Classifies a finished child: ok, out of memory (over the cap, an allocation failure in its
// message, or killed by SIGKILL, the kernel OOM killer's signal), or error with its message.
void classify(PointResult& r, const ChildResult& c, const std::string& stderr_text, double timeout_seconds,
              int64_t mem_limit_bytes = 0);
// What a run's metrics.jsonl says: elapsed_ms_per_iteration of the records after `warmup`
// iterations, and the largest memory_max_allocated_mib (device runs; -1 when absent) in bytes.
struct RunMetrics {
  std::vector<double> ms;
  int64_t device_peak_bytes = -1;
};
RunMetrics read_run_metrics(const std::string& metrics_jsonl_path, int64_t warmup);
inline std::vector<double> timed_iterations(const std::string& metrics_jsonl_path, int64_t warmup) {
  return read_run_metrics(metrics_jsonl_path, warmup).ms;
}

}  // namespace llm::sweep
