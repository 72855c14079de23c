#include "sweep/result.h"

#include <algorithm>

#include "train/flops.h"

namespace llm::sweep {

const char* status_name(Status s) {
  switch (s) {
    case Status::ok: return "ok";
    case Status::oom: return "out of memory";
    case Status::error: return "error";
    case Status::skipped: return "skipped";
  }
  return "?";
}

Stats stats_of(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.n = static_cast<int64_t>(n);
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  s.min = v.front();
  s.max = v.back();
  return s;
}

void derive_rates(PointResult& r, const GPTConfig& model, double peak_tflops_total) {
  const SweepPoint& p = r.point;
  const double sec = r.ms_per_iteration.median / 1e3;
  if (sec <= 0) return;
  const double B = static_cast<double>(p.global_batch()), s = static_cast<double>(p.seq_length);
  const double world = static_cast<double>(p.world());
  r.samples_per_second = B / sec;
  r.tokens_per_second = B * s / sec;
  r.tokens_per_device_per_second = r.tokens_per_second / world;
  r.tflops_megatron = megatron_flops_per_iteration(model, p.global_batch(), p.seq_length, p.recompute) / sec / world / 1e12;
  const double model_flops = model_flops_per_iteration(model, p.global_batch(), p.seq_length);
  r.tflops_model = model_flops / sec / world / 1e12;
  r.mfu = peak_tflops_total > 0 ? model_flops / sec / 1e12 / peak_tflops_total : 0;
}

}  // namespace llm::sweep
