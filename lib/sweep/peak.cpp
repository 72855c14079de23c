#include "sweep/peak.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/error.h"
#include "core/philox.h"

namespace llm::sweep {

double measured_sgemm_gflops(int M, int N, int K, int reps) {
  std::vector<float> A(static_cast<size_t>(M) * K), B(static_cast<size_t>(N) * K), C(static_cast<size_t>(M) * N);
  for (size_t i = 0; i < A.size(); ++i) A[i] = philox_uniform(7, 1, i) - 0.5f;
  for (size_t i = 0; i < B.size(); ++i) B[i] = philox_uniform(7, 2, i) - 0.5f;
  std::vector<double> t;
  for (int r = 0; r < reps + 1; ++r) {  // the first product warms caches and thread pools
    const auto start = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, C.data(), N);
    if (r) t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  // The fastest product: a ceiling, robust to other work on a shared machine slowing some runs.
  return 2.0 * M * N * K / *std::min_element(t.begin(), t.end()) / 1e9;
}

const std::vector<DevicePeak>& datasheet_peaks() {
  static const std::vector<DevicePeak> table = {
      {"A100-40GB", "bf16", 312, 40, 1555},  {"A100-40GB", "fp16", 312, 40, 1555},
      {"A100-40GB", "tf32", 156, 40, 1555},  {"A100-40GB", "fp32", 19.5, 40, 1555},
      {"A100-80GB", "bf16", 312, 80, 2039},  {"A100-80GB", "fp16", 312, 80, 2039},
      {"A100-80GB", "tf32", 156, 80, 2039},  {"A100-80GB", "fp32", 19.5, 80, 2039},
      {"H100-SXM", "bf16", 989, 80, 3350},   {"H100-SXM", "fp16", 989, 80, 3350},
      {"H100-SXM", "tf32", 495, 80, 3350},   {"H100-SXM", "fp32", 67, 80, 3350},
      {"H200", "bf16", 989, 141, 4800},      {"H200", "fp16", 989, 141, 4800},
      {"H200", "tf32", 495, 141, 4800},      {"H200", "fp32", 67, 141, 4800},
  };
  return table;
}

const DevicePeak& datasheet_peak(const std::string& device, const std::string& dtype) {
  for (const DevicePeak& d : datasheet_peaks())
    if (d.device == device && d.dtype == dtype) return d;
  std::string known;
  for (const DevicePeak& d : datasheet_peaks())
    if (known.find(d.device) == std::string::npos) known += (known.empty() ? "" : ", ") + d.device;
  throw ConfigError("no datasheet peak for device '" + device + "' in " + dtype + " (known: " + known + ")");
}

double cpu_point_peak(double peak, int64_t world, int64_t threads, int64_t cores) {
  world = std::max<int64_t>(1, world), threads = std::max<int64_t>(1, threads), cores = std::max<int64_t>(1, cores);
  const int64_t per_rank = std::max<int64_t>(1, threads / world);
  const int64_t used = std::min(world * per_rank, cores), measured = std::min(threads, cores);
  return peak * static_cast<double>(used) / static_cast<double>(measured);
}

}  // namespace llm::sweep
