// Residual add and its backward (both inputs receive the output gradient, accumulated).
#include <algorithm>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace llm::cpu {

namespace {
constexpr int64_t kChunk = 16384;

LLM_SIMD_CLONES void add_chunk(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
LLM_SIMD_CLONES void accumulate2_chunk(float* da, float* db, const float* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    da[i] += d[i];
    db[i] += d[i];
  }
}
}  // namespace

void residual_forward(const Tensor& out, const Tensor& a, const Tensor& b) {
  check_f32(a, a.shape(), "residual_forward a");
  check_f32(b, a.shape(), "residual_forward b");
  check_f32(out, a.shape(), "residual_forward out");
  float* o = out.data<float>();
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  const int64_t n = a.numel();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n; c += kChunk) add_chunk(o + c, pa + c, pb + c, std::min(kChunk, n - c));
}

void residual_backward(const Tensor& da, const Tensor& db, const Tensor& dout) {
  check_f32(dout, dout.shape(), "residual_backward dout");
  check_f32(da, dout.shape(), "residual_backward da");
  check_f32(db, dout.shape(), "residual_backward db");
  float* pa = da.data<float>();
  float* pb = db.data<float>();
  const float* d = dout.data<float>();
  const int64_t n = dout.numel();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n; c += kChunk) accumulate2_chunk(pa + c, pb + c, d + c, std::min(kChunk, n - c));
}

}  // namespace llm::cpu
