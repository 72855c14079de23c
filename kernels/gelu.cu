// GELU, tanh form (GPT-2), forward and backward; element-wise (16-byte packs when the pointers
// allow), so dinp may alias dout.
#include "kernels.h"
#include "common.cuh"

namespace llm::kernels {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;

__device__ __forceinline__ float gelu(float x) {
  const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}
__device__ __forceinline__ float gelu_grad(float x, float d) {
  const float u = kSqrt2OverPi * (x + 0.044715f * x * x * x);
  const float th = tanhf(u);
  const float sech2 = 1.0f - th * th;
  const float du = kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * x * x);
  return (0.5f * (1.0f + th) + 0.5f * x * sech2 * du) * d;
}

template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, int64_t n, bool packed) {
  elementwise<T>(
      n, packed, [&](int64_t i) { out[i] = from_float<T>(gelu(to_float(inp[i]))); },
      [&](int64_t k) {
        const Pack<T> x = reinterpret_cast<const Pack<T>*>(inp)[k];
        Pack<T> o;
#pragma unroll
        for (int e = 0; e < Pack<T>::n; ++e) o.e[e] = from_float<T>(gelu(to_float(x.e[e])));
        reinterpret_cast<Pack<T>*>(out)[k] = o;
      });
}

template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, int64_t n, bool packed) {
  elementwise<T>(
      n, packed, [&](int64_t i) { dinp[i] = from_float<T>(gelu_grad(to_float(inp[i]), to_float(dout[i]))); },
      [&](int64_t k) {
        const Pack<T> x = reinterpret_cast<const Pack<T>*>(inp)[k], d = reinterpret_cast<const Pack<T>*>(dout)[k];
        Pack<T> o;
#pragma unroll
        for (int e = 0; e < Pack<T>::n; ++e) o.e[e] = from_float<T>(gelu_grad(to_float(x.e[e]), to_float(d.e[e])));
        reinterpret_cast<Pack<T>*>(dinp)[k] = o;
      });
}
}  // namespace

void gelu_forward(DType t, void* out, const void* inp, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(t, "gelu_forward", [&](auto tag) {
    using E = decltype(tag);
    gelu_forward_kernel<E><<<grid_for(ceil_div(n, Pack<E>::n)), 256, 0, stream>>>(
        static_cast<E*>(out), static_cast<const E*>(inp), n, packable(out, inp));
  });
}

void gelu_backward(DType t, void* dinp, const void* inp, const void* dout, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(t, "gelu_backward", [&](auto tag) {
    using E = decltype(tag);
    gelu_backward_kernel<E><<<grid_for(ceil_div(n, Pack<E>::n)), 256, 0, stream>>>(
        static_cast<E*>(dinp), static_cast<const E*>(inp), static_cast<const E*>(dout), n,
        packable(dinp, inp, dout));
  });
}

}  // namespace llm::kernels
