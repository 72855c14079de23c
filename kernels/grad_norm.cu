// Gradient norm and clipping pieces: sum of squares (deterministic: fixed grid, per-block
// double partials added on the host in order), scaling, and the non-finite count used by
// dynamic loss scaling to skip a step.
#include "common.cuh"
#include "kernels.h"

namespace llm::kernels {

namespace {
constexpr int kThreads = 256;

// partials[blockIdx.x] = the block's sum of acc: warps reduce by shuffles, then thread 0 adds
// the warps in order (a fixed order: the same bits on every run).
__device__ __forceinline__ void store_block_sum(double acc, double* partials) {
  __shared__ double s[kThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (threadIdx.x % 32 == 0) s[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) total += s[w];
    partials[blockIdx.x] = total;
  }
}

template <typename T>
__global__ void sum_squares_kernel(const T* x, int64_t n, double* partials) {
  double acc = 0.0;
  // Float partials over short runs (as the CPU op), accumulated in double.
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t base = blockIdx.x * int64_t(kThreads) + threadIdx.x; base < n; base += stride * 16) {
    float run = 0.0f;
#pragma unroll 4
    for (int r = 0; r < 16; ++r) {
      const int64_t i = base + r * stride;
      if (i < n) {
        const float v = to_float(x[i]);
        run += v * v;
      }
    }
    acc += run;
  }
  store_block_sum(acc, partials);
}

// The same with 16-byte packs (x 16-byte aligned): float runs of 4 packs (16 f32 or 32 bf16/f16
// elements) accumulated in double; the n % pack tail goes to block 0. Fixed grid and assignment,
// so the same bits on every run.
template <typename T>
__global__ void sum_squares_packed_kernel(const T* x, int64_t n, double* partials) {
  constexpr int V = Pack<T>::n;
  double acc = 0.0;
  const int64_t packs = n / V, stride = int64_t(gridDim.x) * kThreads;
  const Pack<T>* xp = reinterpret_cast<const Pack<T>*>(x);
  for (int64_t base = blockIdx.x * int64_t(kThreads) + threadIdx.x; base < packs; base += stride * 4) {
    float run = 0.0f;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t k = base + r * stride;
      if (k < packs) {
        const Pack<T> p = xp[k];
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float v = to_float(p.e[e]);
          run += v * v;
        }
      }
    }
    acc += run;
  }
  if (blockIdx.x == 0)
    for (int64_t i = packs * V + threadIdx.x; i < n; i += kThreads) {
      const float v = to_float(x[i]);
      acc += v * v;
    }
  store_block_sum(acc, partials);
}

template <typename T>
__global__ void scale_kernel(T* x, int64_t n, float s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = from_float<T>(to_float(x[i]) * s);
}

template <typename T>
__global__ void count_nonfinite_kernel(const T* x, int64_t n, unsigned long long* count) {
  unsigned long long local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    local += isfinite(to_float(x[i])) ? 0ull : 1ull;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) local += __shfl_xor_sync(0xffffffffu, local, o);
  if (threadIdx.x % 32 == 0 && local) atomicAdd(count, local);
}
}  // namespace

void sum_squares(DType t, const void* x, int64_t n, double* partials, cudaStream_t stream) {
  dispatch_float(t, "sum_squares", [&](auto tag) {
    using E = decltype(tag);
    if (packable(x))
      sum_squares_packed_kernel<E><<<kSumSquaresBlocks, kThreads, 0, stream>>>(static_cast<const E*>(x), n, partials);
    else
      sum_squares_kernel<E><<<kSumSquaresBlocks, kThreads, 0, stream>>>(static_cast<const E*>(x), n, partials);
  });
}

void scale(DType t, void* x, int64_t n, float s, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(t, "scale", [&](auto tag) {
    using E = decltype(tag);
    scale_kernel<E><<<grid_for(n), kThreads, 0, stream>>>(static_cast<E*>(x), n, s);
  });
}

void count_nonfinite(DType t, const void* x, int64_t n, unsigned long long* count, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(t, "count_nonfinite", [&](auto tag) {
    using E = decltype(tag);
    count_nonfinite_kernel<E><<<grid_for(n), kThreads, 0, stream>>>(static_cast<const E*>(x), n, count);
  });
}

}  // namespace llm::kernels
