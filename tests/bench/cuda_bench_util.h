// Shared bits of the GPU benchmarks: flag parsing, median timing with CUDA events, the card's
// nominal dense bf16 peak (for MFU; override with --peak-tflops).
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "core/philox.h"

namespace bench {

inline double flag(int argc, char** argv, const char* name, double def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atof(argv[i + 1]);
  return def;
}

// A comma-separated list of integers ("--head-dims 48,80,96"), or def when the flag is absent.
inline std::vector<int> int_list(int argc, char** argv, const char* name, std::vector<int> def) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) {
      std::vector<int> v;
      for (const char* p = argv[i + 1]; *p;) {
        char* end = nullptr;
        v.push_back(static_cast<int>(std::strtol(p, &end, 10)));
        if (end == p) {
          std::fprintf(stderr, "%s '%s': expected comma-separated integers\n", name, argv[i + 1]);
          std::exit(2);
        }
        p = *end == ',' ? end + 1 : end;
      }
      return v;
    }
  return def;
}

// Median milliseconds of `reps` runs of f after `warmup` runs, timed on the backend's stream.
inline double time_ms(llm::cuda::CudaBackend& be, const std::function<void()>& f, int warmup = 2, int reps = 5) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> t;
  llm::cuda::CudaTimer timer(be.stream());
  for (int i = 0; i < reps; ++i) {
    timer.start();
    f();
    timer.stop();
    t.push_back(timer.milliseconds());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Nominal dense bf16 tensor-core TFLOPS of the card (datasheet), 0 if unknown.
inline double nominal_bf16_tflops(int device) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return 0;
  const std::string n = p.name;
  if (n.find("H100") != std::string::npos && n.find("PCIe") != std::string::npos) return 756.0;
  if (n.find("H100") != std::string::npos || n.find("H200") != std::string::npos || n.find("GH200") != std::string::npos)
    return 989.4;
  if (n.find("A100") != std::string::npos) return 312.0;
  return 0;
}

inline std::string device_line(int device) {
  cudaDeviceProp p{};
  cudaGetDeviceProperties(&p, device);
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         std::to_string(p.multiProcessorCount) + " SMs), driver " + std::to_string(driver) + ", runtime " +
         std::to_string(runtime);
}

// Host tensors for inputs: N(0, sd) f32, a constant, or ids below k.
inline llm::Tensor host_normal(int64_t n, double sd, uint64_t seed) {
  llm::Tensor t = llm::Tensor::empty({n});
  float* p = t.data<float>();
  for (int64_t i = 0; i < n; ++i) p[i] = float(sd * llm::philox_normal(seed, 0, uint64_t(i)));
  return t;
}
// The first n elements of a host f32 tensor, as a tensor of their own.
inline llm::Tensor host_prefix(const llm::Tensor& t, int64_t n) {
  llm::Tensor p = llm::Tensor::empty({n});
  std::copy_n(t.data<float>(), n, p.data<float>());
  return p;
}
inline llm::Tensor host_const(int64_t n, float v) {
  llm::Tensor t = llm::Tensor::empty({n});
  t.fill(v);
  return t;
}
inline llm::Tensor host_ids(llm::Shape s, int k, uint64_t seed) {
  llm::Tensor t = llm::Tensor::empty(s, llm::DType::i32);
  int32_t* p = t.data<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = int32_t(llm::philox_below(seed, 1, uint64_t(i), uint64_t(k)));
  return t;
}

inline llm::cuda::CudaBackend& backend_or_exit() {
  llm::cuda::CudaBackend* be = llm::cuda::cuda_backend();
  if (!be) {
    std::fprintf(stderr, "bench skipped: %s\n", llm::cuda::device_status().c_str());
    std::exit(77);
  }
  return *be;
}

}  // namespace bench
