// What a sweep records for each point, and the statistics of its timed iterations.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "sweep/point.h"

namespace llm::sweep {

enum class Status { ok, oom, error, skipped };
// "ok", "out of memory", "error", "skipped"
const char* status_name(Status s);

struct Stats {
  double median = 0, min = 0, max = 0;
  int64_t n = 0;
  // (max - min) / median: the spread quoted next to the median.
  double spread() const { return median > 0 ? (max - min) / median : 0; }
};
Stats stats_of(std::vector<double> v);

struct PointResult {
  SweepPoint point;
  Status status = Status::ok;
  std::string message;          // why, for oom / error / skipped
  Stats ms_per_iteration;       // timed iterations (warm-up excluded)
  double samples_per_second = 0;
  double tokens_per_second = 0;         // all ranks together
  double tokens_per_device_per_second = 0;
  double tflops_megatron = 0;   // per device, Narayanan et al. (recompute counted)
  double tflops_model = 0;      // per device, model FLOPs (3 x forward, dense attention)
  double mfu = 0;               // model FLOP/s of all ranks / the machine's peak for them (0..1)
  int64_t peak_memory_bytes = 0;  // device runs: the allocator's peak (largest rank); CPU: largest rank's resident set
  double predicted_ms = 0;      // from the performance model (0 = not predicted)
  double predicted_memory_bytes = 0;
  std::string run_dir;
};

// Fills the rates of an ok point from its median time: samples, tokens, TFLOPS (from
// libllm's FLOP formulas for `model`), MFU against `peak_tflops_total` (the whole machine's
// peak for the point's ranks; 0 = unknown).

void derive_rates(PointResult& r, const GPTConfig& model, double peak_tflops_total);

}  // namespace llm::sweep
