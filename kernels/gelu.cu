// GELU, tanh form (GPT-2), forward and backward; element-wise, so dinp may alias dout.
#include "kernels.h"
#include "common.cuh"

namespace llm::kernels {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;

template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = to_float(inp[i]);
    const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
    out[i] = from_float<T>(0.5f * x * (1.0f + tanhf(u)));
  }
}

template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = to_float(inp[i]);
    const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
    const float th = tanhf(u);
    const float sech2 = 1.0f - th * th;
    const float du = kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * x * x);
    dinp[i] = from_float<T>((0.5f * (1.0f + th) + 0.5f * x * sech2 * du) * to_float(dout[i]));
  }
}
}  // namespace

void gelu_forward(DType t, void* out, const void* inp, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(t, "gelu_forward", [&](auto tag) {
    using E = decltype(tag);
    gelu_forward_kernel<E><<<grid_for(n), 256, 0, stream>>>(static_cast<E*>(out), static_cast<const E*>(inp), n);
  });
}

void gelu_backward(DType t, void* dinp, const void* inp, const void* dout, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(t, "gelu_backward", [&](auto tag) {
    using E = decltype(tag);
    gelu_backward_kernel<E><<<grid_for(n), 256, 0, stream>>>(static_cast<E*>(dinp), static_cast<const E*>(inp),
                                                            static_cast<const E*>(dout), n);
  });
}

}  // namespace llm::kernels
