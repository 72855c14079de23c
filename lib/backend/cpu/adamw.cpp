// AdamW with decoupled weight decay, plus the reductions used for gradient clipping.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace llm::cpu {

namespace {
constexpr int64_t kChunk = 16384;

LLM_SIMD_CLONES void adamw_chunk(float* p, const float* g, float* m, float* v, int64_t n, float lr,
                                 float b1, float b2, float eps, float wd, float gs, float c1, float c2) {
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i] * gs;
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float mhat = mi * c1;
    float vhat = vi * c2;
    p[i] -= lr * (mhat / (std::sqrt(vhat) + eps) + wd * p[i]);
  }
}

LLM_SIMD_CLONES double sum_squares_chunk(const float* x, int64_t n) {
  // Float partial sums over short runs keep the loop vectorised; the runs add in double.
  double total = 0.0;
  for (int64_t s = 0; s < n; s += 1024) {
    float acc = 0.0f;
    const int64_t e = std::min<int64_t>(n, s + 1024);
    for (int64_t i = s; i < e; ++i) acc += x[i] * x[i];
    total += acc;
  }
  return total;
}

LLM_SIMD_CLONES void scale_chunk(float* x, int64_t n, float s) {
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}
}  // namespace

void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                  const AdamWParams& a) {
  const Shape s{param.numel()};
  check_f32(param, param.shape(), "adamw param");
  check_f32(grad, param.shape(), "adamw grad");
  check_f32(m, param.shape(), "adamw m");
  check_f32(v, param.shape(), "adamw v");
  LLM_CHECK(a.step >= 1, "adamw step must be >= 1, got ", a.step);
  const float c1 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(a.beta1), a.step)));
  const float c2 = static_cast<float>(1.0 / (1.0 - std::pow(static_cast<double>(a.beta2), a.step)));
  float* pp = param.data<float>();
  const float* pg = grad.data<float>();
  float* pm = m.data<float>();
  float* pv = v.data<float>();
  const int64_t n = param.numel();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n; c += kChunk)
    adamw_chunk(pp + c, pg + c, pm + c, pv + c, std::min(kChunk, n - c), a.lr, a.beta1, a.beta2,
                a.eps, a.weight_decay, a.grad_scale, c1, c2);
}

double sum_squares(const Tensor& x) {
  check_f32(x, x.shape(), "sum_squares x");
  const float* p = x.data<float>();
  const int64_t n = x.numel();
  // Per-chunk partials summed in a fixed order: the result does not depend on thread timing,
  // so two runs with the same seed clip identically.
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks));
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c)
    partial[c] = sum_squares_chunk(p + c * kChunk, std::min(kChunk, n - c * kChunk));
  double total = 0.0;
  for (double v : partial) total += v;
  return total;
}

void scale(const Tensor& x, float s) {
  check_f32(x, x.shape(), "scale x");
  float* p = x.data<float>();
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n; c += kChunk) scale_chunk(p + c, std::min(kChunk, n - c), s);
}

}  // namespace llm::cpu
