#include "sweep/calibrate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"

namespace llm::sweep {

namespace {

struct Errors {
  double median = 0, max = 0;
};

Errors errors_of(const std::vector<PointResult>& rs, const std::vector<GPTConfig>& models, const ClusterSpec& c,
                 double peak) {
  std::vector<double> e;
  for (size_t i = 0; i < rs.size(); ++i) {
    const Prediction p = predict(rs[i].point, models[i], c, peak);
    const double measured = rs[i].ms_per_iteration.median / 1e3;
    e.push_back(p.problem.empty() ? std::fabs(p.iteration_s - measured) / measured : 1e9);
  }
  const Stats s = stats_of(e);
  return {s.median, s.max};
}

}  // namespace

FitResult fit_efficiencies(const std::vector<PointResult>& measured, const ClusterSpec& c, double peak,
                           const std::function<GPTConfig(const SweepPoint&)>& model_of) {
  std::vector<PointResult> ok;
  std::vector<GPTConfig> models;
  for (const PointResult& r : measured)
    if (r.status == Status::ok && r.ms_per_iteration.median > 0) {
      ok.push_back(r);
      models.push_back(model_of(r.point));
    }
  if (ok.empty()) throw ConfigError("--fit: no point was measured successfully");
  FitResult f;
  f.points = static_cast<int>(ok.size());
  f.cluster = c;
  f.error_before = errors_of(ok, models, c, peak).median;
  Errors best{1e300, 1e300};
  ClusterSpec trial = c;
  for (int mi = 20; mi <= 100; ++mi)          // matmul efficiency 0.20 .. 1.00
    for (int ai = 5; ai <= 100; ai += 1) {    // attention efficiency 0.05 .. 1.00
      for (double nh : {0.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0}) {
        trial.matmul_efficiency = mi / 100.0;
        trial.attention_efficiency = ai / 100.0;
        trial.matmul_half_tokens = nh;
        const Errors e = errors_of(ok, models, trial, peak);
        if (e.max < best.max - 1e-12 || (std::fabs(e.max - best.max) <= 1e-12 && e.median < best.median)) {
          best = e;
          f.cluster = trial;
        }
      }
    }
  f.error_after = best.median;
  f.max_error_after = best.max;
  return f;
}

std::string cluster_yaml(const ClusterSpec& c, const std::string& comment) {
  char buf[2048];
  std::snprintf(buf, sizeof buf,
                "# %s\nname: %s\ndevice: %s\ndevices-per-node: %lld\nmax-nodes: %lld\ndtype: %s\npeak-tflops: %g\n"
                "matmul-efficiency: %g\nmatmul-half-tokens: %g\nattention-efficiency: %g\nmemory-gib: %g\n"
                "memory-bandwidth-gbs: %g\nmemory-overhead-gib: %g\nintra-node-bandwidth-gbs: %g\n"
                "intra-node-latency-us: %g\ninter-node-bandwidth-gbs: %g\ninter-node-latency-us: %g\n"
                "activation-bytes-per-hidden: %g\nflash-attention: %s\n",
                comment.c_str(), c.name.c_str(), c.device.c_str(), static_cast<long long>(c.devices_per_node),
                static_cast<long long>(c.max_nodes), c.dtype.c_str(), c.peak_tflops, c.matmul_efficiency,
                c.matmul_half_tokens, c.attention_efficiency, c.memory_gib, c.memory_bandwidth_gbs,
                c.memory_overhead_gib, c.intra_node_bandwidth_gbs, c.intra_node_latency_us, c.inter_node_bandwidth_gbs,
                c.inter_node_latency_us, c.activation_bytes_per_hidden, c.flash_attention ? "true" : "false");
  return buf;
}

}  // namespace llm::sweep
