// Residual add (out may alias a or b) and its backward (da += dout, db += dout).
#include "kernels.h"
#include "common.cuh"

namespace llm::kernels {

namespace {
template <typename T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
}
template <typename T>
__global__ void residual_backward_kernel(T* da, T* db, const T* dout, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float d = to_float(dout[i]);
    da[i] = from_float<T>(to_float(da[i]) + d);
    db[i] = from_float<T>(to_float(db[i]) + d);
  }
}
}  // namespace

void residual_forward(DType t, void* out, const void* a, const void* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(t, "residual_forward", [&](auto tag) {
    using E = decltype(tag);
    residual_forward_kernel<E><<<grid_for(n), 256, 0, stream>>>(static_cast<E*>(out), static_cast<const E*>(a),
                                                               static_cast<const E*>(b), n);
  });
}

void residual_backward(DType t, void* da, void* db, const void* dout, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(t, "residual_backward", [&](auto tag) {
    using E = decltype(tag);
    residual_backward_kernel<E><<<grid_for(n), 256, 0, stream>>>(static_cast<E*>(da), static_cast<E*>(db),
                                                                static_cast<const E*>(dout), n);
  });
}

}  // namespace llm::kernels
