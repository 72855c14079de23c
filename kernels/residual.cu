// Residual add (out may alias a or b) and its backward (da += dout, db += dout); 16-byte packs
// when the pointers allow.
#include "kernels.h"
#include "common.cuh"

namespace llm::kernels {

namespace {
template <typename T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, int64_t n, bool packed) {
  elementwise<T>(
      n, packed, [&](int64_t i) { out[i] = from_float<T>(to_float(a[i]) + to_float(b[i])); },
      [&](int64_t k) {
        const Pack<T> x = reinterpret_cast<const Pack<T>*>(a)[k], y = reinterpret_cast<const Pack<T>*>(b)[k];
        Pack<T> o;
#pragma unroll
        for (int e = 0; e < Pack<T>::n; ++e) o.e[e] = from_float<T>(to_float(x.e[e]) + to_float(y.e[e]));
        reinterpret_cast<Pack<T>*>(out)[k] = o;
      });
}
template <typename T>
__global__ void residual_backward_kernel(T* da, T* db, const T* dout, int64_t n, bool packed) {
  elementwise<T>(
      n, packed,
      [&](int64_t i) {
        const float d = to_float(dout[i]);
        da[i] = from_float<T>(to_float(da[i]) + d);
        db[i] = from_float<T>(to_float(db[i]) + d);
      },
      [&](int64_t k) {
        const Pack<T> d = reinterpret_cast<const Pack<T>*>(dout)[k];
        Pack<T> x = reinterpret_cast<Pack<T>*>(da)[k], y = reinterpret_cast<Pack<T>*>(db)[k];
#pragma unroll
        for (int e = 0; e < Pack<T>::n; ++e) {
          x.e[e] = from_float<T>(to_float(x.e[e]) + to_float(d.e[e]));
          y.e[e] = from_float<T>(to_float(y.e[e]) + to_float(d.e[e]));
        }
        reinterpret_cast<Pack<T>*>(da)[k] = x;
        reinterpret_cast<Pack<T>*>(db)[k] = y;
      });
}
}  // namespace

void residual_forward(DType t, void* out, const void* a, const void* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(t, "residual_forward", [&](auto tag) {
    using E = decltype(tag);
    const bool packed = packable(out, a, b);
    residual_forward_kernel<E><<<grid_for(ceil_div(n, Pack<E>::n)), 256, 0, stream>>>(
        static_cast<E*>(out), static_cast<const E*>(a), static_cast<const E*>(b), n, packed);
  });
}

void residual_backward(DType t, void* da, void* db, const void* dout, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(t, "residual_backward", [&](auto tag) {
    using E = decltype(tag);
    const bool packed = packable(da, db, dout);
    residual_backward_kernel<E><<<grid_for(ceil_div(n, Pack<E>::n)), 256, 0, stream>>>(
        static_cast<E*>(da), static_cast<E*>(db), static_cast<const E*>(dout), n, packed);
  });
}

}  // namespace llm::kernels
