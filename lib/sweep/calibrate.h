// Calibration of the performance model against measured points: the efficiencies a cluster
// file cannot know a priori (large-GEMM efficiency, its half-performance length, attention
// efficiency) fitted by grid search to the measured iteration times.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "sweep/perf_model.h"
#include "sweep/result.h"

namespace llm::sweep {

struct FitResult {
  ClusterSpec cluster;           // the input with the fitted efficiencies
  double error_before = -1;      // median |predicted - measured| / measured with the input values
  double error_after = -1;       // ... with the fitted ones
  double max_error_after = -1;
  int points = 0;                // ok points with a measurement
};

// `model_of(point)` gives the point's model. Minimises the largest relative error over the ok
// points (ties: the median). Throws ConfigError when no point was measured.
FitResult fit_efficiencies(const std::vector<PointResult>& measured, const ClusterSpec& c, double peak_tflops,
                           const std::function<GPTConfig(const SweepPoint&)>& model_of);

// The cluster as a YAML file (same keys as load_cluster reads).
std::string cluster_yaml(const ClusterSpec& c, const std::string& comment);

}  // namespace llm::sweep
