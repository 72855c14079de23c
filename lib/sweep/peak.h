// The peak a point's MFU is measured against: on the CPU backend the sgemm GFLOP/s this machine
// gives with the sweep's threads (measured); for GPUs a datasheet table of dense peaks.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llm::sweep {

// Best sgemm GFLOP/s over a few 2048^3 products (C = A B^T, the linear layer's form) with the
// current OpenMP thread count (after one warm-up product).
double measured_sgemm_gflops(int m = 2048, int n = 2048, int k = 2048, int reps = 5);

// The CPU peak a measured point is compared with. The sweep's `threads` are split over the
// point's ranks (each gets max(1, threads / world), as the sweep launches them), and `peak` is the
// sgemm ceiling measured with `threads` threads: it scales with the cores the ranks' threads
// occupy. An oversubscribed point (more threads than cores) shares the machine's ceiling.
double cpu_point_peak(double peak, int64_t world, int64_t threads, int64_t cores);

struct DevicePeak {
  std::string device;  // "A100-40GB", ...
  std::string dtype;   // bf16 | fp16 | fp32 | tf32
  double tflops;       // dense, per device
  double hbm_gib, hbm_gbs;
};
// NVIDIA datasheet dense peaks (no structured sparsity): A100 SXM bf16/fp16 312, tf32 156,
// fp32 19.5; H100 SXM bf16/fp16 989, tf32 495, fp32 67; H200 the same compute as H100 SXM.
const std::vector<DevicePeak>& datasheet_peaks();
// Throws ConfigError listing the known devices when (device, dtype) is not in the table.
const DevicePeak& datasheet_peak(const std::string& device, const std::string& dtype);

}  // namespace llm::sweep
