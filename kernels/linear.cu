// Linear layer pieces that are not matmuls: the bias gradient (deterministic column sums), and
// the bias and rounding of a GEMM that wrote fp32 where cuBLASLt's own epilogue is not used.
// The matmuls themselves go through cuBLASLt (lib/backend/cuda/cublaslt_matmul.cpp).
#include "column_sums.cuh"
#include "kernels.h"

namespace llm::kernels {

namespace {
template <typename T>
__global__ void bias_partials_kernel(float* partial, const T* dout, int64_t N, int64_t OC) {
  __shared__ float s[kColumnRowLanes][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.0f;
  if (c < OC)
    for (int64_t r = blockIdx.y * kColumnRowLanes + threadIdx.y; r < N; r += int64_t(gridDim.y) * kColumnRowLanes)
      acc += to_float(dout[r * OC + c]);
  column_block_store(s, acc, partial, OC, c);
}

template <typename T>
__global__ void bias_partials_packed_kernel(float* partial, const T* dout, int64_t N, int64_t OC) {
  constexpr int V = Pack<T>::n;
  const int64_t c0 = (blockIdx.x * int64_t(32) + threadIdx.x) * V;
  const bool active = c0 < OC;
  float acc[V] = {};
  if (active) {
#pragma unroll 4
    for (int64_t r = blockIdx.y * kColumnRowLanes + threadIdx.y; r < N; r += int64_t(gridDim.y) * kColumnRowLanes) {
      const Pack<T> d = *reinterpret_cast<const Pack<T>*>(dout + r * OC + c0);
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] += to_float(d.e[e]);
    }
  }
  column_pack_store<V>(acc, partial, OC, 0, c0, active);
}

// out[r, c] = round(acc[r, c] + bias[c]): one rounding to T, as cuBLASLt's epilogue does. out may
// be acc itself (T = float: each element is read and written by one thread).
template <typename T>
__global__ void bias_epilogue_kernel(T* out, const float* acc, const T* bias, int64_t N, int64_t OC) {
  const int64_t n = N * OC;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(acc[i] + (bias ? to_float(bias[i % OC]) : 0.0f));
}
}  // namespace

void bias_epilogue(DType t, void* out, const float* acc, const void* bias, int64_t N, int64_t OC,
                   cudaStream_t stream) {
  if (N * OC == 0) return;
  dispatch_float(t, "linear_forward bias", [&](auto tag) {
    using E = decltype(tag);
    bias_epilogue_kernel<E><<<grid_for(N * OC), 256, 0, stream>>>(static_cast<E*>(out), acc,
                                                                   static_cast<const E*>(bias), N, OC);
  });
}

int64_t column_sum_scratch(int64_t N, int64_t width) { return column_row_blocks(N) * width; }

void bias_backward(DType t, float* dbias, const void* dout, int64_t N, int64_t OC, float* scratch,
                   cudaStream_t stream) {
  if (OC == 0) return;
  const int64_t G = column_row_blocks(N);
  dispatch_float(t, "linear_backward dbias", [&](auto tag) {
    using E = decltype(tag);
    if (packable(dout) && OC % Pack<E>::n == 0) {
      const dim3 grid(static_cast<unsigned>(ceil_div(OC, 32 * Pack<E>::n)), static_cast<unsigned>(G));
      bias_partials_packed_kernel<E><<<grid, dim3(32, kColumnRowLanes), 0, stream>>>(scratch, static_cast<const E*>(dout), N, OC);
    } else {
      const dim3 grid(static_cast<unsigned>(ceil_div(OC, 32)), static_cast<unsigned>(G));
      bias_partials_kernel<E><<<grid, dim3(32, kColumnRowLanes), 0, stream>>>(scratch, static_cast<const E*>(dout), N, OC);
    }
  });
  column_sums_finalize<<<static_cast<unsigned>(ceil_div(OC, 256)), 256, 0, stream>>>(dbias, nullptr, scratch, G, OC, OC);
}

}  // namespace llm::kernels
