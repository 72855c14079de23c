// Token + position embedding (vocab-parallel aware), forward and backward.
// Backward is deterministic: the host buckets positions by token (CudaBackend), one block row
// per token sums its positions' gradients in position order and adds once, so repeated tokens
// need no atomics and two runs give identical bits.
#include "kernels.h"
#include "common.cuh"

namespace llm::kernels {

namespace {

template <typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* wte, const T* wpe,
                                         int64_t BT, int64_t T_, int64_t C, int64_t vocab_begin, int64_t Vl) {
  const int64_t total = BT * C;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / C, c = idx - i * C;
    const int64_t row = int64_t(tokens[i]) - vocab_begin;
    const bool e = row >= 0 && row < Vl;
    float v;
    if (e && wpe)
      v = to_float(wte[row * C + c]) + to_float(wpe[(i % T_) * C + c]);
    else if (e)
      v = to_float(wte[row * C + c]);
    else if (wpe)
      v = to_float(wpe[(i % T_) * C + c]);
    else
      v = 0.0f;
    out[idx] = from_float<T>(v);
  }
}

template <typename T>
__global__ void embedding_backward_wte_kernel(float* dwte, const T* dout, const int32_t* rows,
                                              const int32_t* starts, const int32_t* positions, int64_t C) {
  const int64_t b = blockIdx.x;
  const int64_t c = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  float acc = 0.0f;
  for (int32_t k = starts[b]; k < starts[b + 1]; ++k) acc += to_float(dout[int64_t(positions[k]) * C + c]);
  dwte[int64_t(rows[b]) * C + c] += acc;
}

template <typename T>
__global__ void embedding_backward_wpe_kernel(float* dwpe, const T* dout, int64_t B, int64_t T_, int64_t C) {
  const int64_t total = T_ * C;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.0f;
    for (int64_t b = 0; b < B; ++b) acc += to_float(dout[b * total + idx]);
    dwpe[idx] += acc;
  }
}

}  // namespace

void embedding_forward(DType t, void* out, const int32_t* tokens, const void* wte, const void* wpe,
                       int64_t BT, int64_t T, int64_t C, int64_t vocab_begin, int64_t Vl, cudaStream_t stream) {
  dispatch_float(t, "embedding_forward", [&](auto tag) {
    using E = decltype(tag);
    embedding_forward_kernel<E><<<grid_for(BT * C), 256, 0, stream>>>(
        static_cast<E*>(out), tokens, static_cast<const E*>(wte), static_cast<const E*>(wpe), BT, T, C,
        vocab_begin, Vl);
  });
}

void embedding_backward_wte(DType t, float* dwte, const void* dout, const int32_t* rows, const int32_t* starts,
                            const int32_t* positions, int64_t n_buckets, int64_t C, cudaStream_t stream) {
  if (n_buckets == 0 || C == 0) return;  // (a grid dimension of 0 is a launch error)
  const dim3 grid(static_cast<unsigned>(n_buckets), static_cast<unsigned>(ceil_div(C, 256)));
  dispatch_float(t, "embedding_backward", [&](auto tag) {
    using E = decltype(tag);
    embedding_backward_wte_kernel<E><<<grid, 256, 0, stream>>>(dwte, static_cast<const E*>(dout), rows, starts,
                                                                positions, C);
  });
}

void embedding_backward_wpe(DType t, float* dwpe, const void* dout, int64_t B, int64_t T, int64_t C,
                            cudaStream_t stream) {
  dispatch_float(t, "embedding_backward", [&](auto tag) {
    using E = decltype(tag);
    embedding_backward_wpe_kernel<E><<<grid_for(T * C), 256, 0, stream>>>(dwpe, static_cast<const E*>(dout), B, T, C);
  });
}

}  // namespace llm::kernels
