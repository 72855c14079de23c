// AdamW with decoupled weight decay, fused over one flat buffer (the parameters live in one
// flat buffer per decay class, so a step is two launches), optionally writing the bf16/f16
// working copy of the fp32 master weights in the same pass.
#include "common.cuh"
#include "kernels.h"

namespace llm::kernels {

namespace {
template <typename L>
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, int64_t n, AdamWConstants c, L* low) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i] * c.grad_scale;
    const float mi = c.beta1 * m[i] + (1.0f - c.beta1) * gi;
    const float vi = c.beta2 * v[i] + (1.0f - c.beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float mhat = mi * c.bias_correction1;
    const float vhat = vi * c.bias_correction2;
    const float pi = p[i];
    const float np = pi - c.lr * (mhat / (sqrtf(vhat) + c.eps) + c.weight_decay * pi);
    p[i] = np;
    if (low) low[i] = from_float<L>(np);
  }
}
}  // namespace

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWConstants& c,
                  DType low_type, void* low_precision, cudaStream_t stream) {
  if (n == 0) return;
  if (!low_precision) {
    adamw_kernel<float><<<grid_for(n), 256, 0, stream>>>(param, grad, m, v, n, c, nullptr);
    return;
  }
  dispatch_float(low_type, "adamw_update low-precision copy", [&](auto tag) {
    using E = decltype(tag);
    adamw_kernel<E><<<grid_for(n), 256, 0, stream>>>(param, grad, m, v, n, c, static_cast<E*>(low_precision));
  });
}

}  // namespace llm::kernels
