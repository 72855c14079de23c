// AdamW with decoupled weight decay, fused over one flat buffer (the parameters live in one
// flat buffer per decay class, so a step is two launches), optionally writing the bf16/f16
// working copy of the fp32 master weights in the same pass; four elements per thread with 16-byte
// loads when the buffers are aligned.
#include "common.cuh"
#include "kernels.h"

namespace llm::kernels {

namespace {
__device__ __forceinline__ float adamw_one(float& p, float g, float& m, float& v, const AdamWConstants& c) {
  const float gi = g * c.grad_scale;
  const float mi = c.beta1 * m + (1.0f - c.beta1) * gi;
  const float vi = c.beta2 * v + (1.0f - c.beta2) * gi * gi;
  m = mi;
  v = vi;
  const float mhat = mi * c.bias_correction1;
  const float vhat = vi * c.bias_correction2;
  p = p - c.lr * (mhat / (sqrtf(vhat) + c.eps) + c.weight_decay * p);
  return p;
}

// Four low-precision values, stored at once (8 bytes for bf16/f16, 16 for f32).
template <typename L>
struct alignas(4 * sizeof(L)) Quad {
  L e[4];
};

// packed: p, g, m, v 16-byte aligned and low (when set) aligned to its Quad: four elements per
// thread with 16-byte loads and stores, then the tail one at a time.
template <typename L>
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, AdamWConstants c, L* low,
                             bool packed) {
  elementwise<float>(
      n, packed,
      [&](int64_t i) {
        float pi = p[i], mi = m[i], vi = v[i];
        const float np = adamw_one(pi, g[i], mi, vi, c);
        p[i] = pi, m[i] = mi, v[i] = vi;
        if (low) low[i] = from_float<L>(np);
      },
      [&](int64_t k) {
        Pack<float> pp = reinterpret_cast<Pack<float>*>(p)[k], mm = reinterpret_cast<Pack<float>*>(m)[k];
        Pack<float> vv = reinterpret_cast<Pack<float>*>(v)[k];
        const Pack<float> gg = reinterpret_cast<const Pack<float>*>(g)[k];
        Quad<L> q;
#pragma unroll
        for (int e = 0; e < 4; ++e) q.e[e] = from_float<L>(adamw_one(pp.e[e], gg.e[e], mm.e[e], vv.e[e], c));
        reinterpret_cast<Pack<float>*>(p)[k] = pp;
        reinterpret_cast<Pack<float>*>(m)[k] = mm;
        reinterpret_cast<Pack<float>*>(v)[k] = vv;
        if (low) reinterpret_cast<Quad<L>*>(low)[k] = q;
      });
}
}  // namespace

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWConstants& c,
                  DType low_type, void* low_precision, cudaStream_t stream) {
  if (n == 0) return;
  const bool packed = packable(param, grad, m, v);
  const unsigned grid = grid_for(ceil_div(n, 4));
  if (!low_precision) {
    adamw_kernel<float><<<grid, 256, 0, stream>>>(param, grad, m, v, n, c, nullptr, packed);
    return;
  }
  dispatch_float(low_type, "adamw_update low-precision copy", [&](auto tag) {
    using E = decltype(tag);
    const bool low_ok = reinterpret_cast<uintptr_t>(low_precision) % sizeof(Quad<E>) == 0;
    adamw_kernel<E><<<grid, 256, 0, stream>>>(param, grad, m, v, n, c, static_cast<E*>(low_precision), packed && low_ok);
  });
}

}  // namespace llm::kernels
