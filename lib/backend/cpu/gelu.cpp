// GELU, tanh form (GPT-2): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
#include <omp.h>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace llm::cpu {

namespace {
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr int64_t kChunk = 16384;

LLM_SIMD_CLONES void gelu_chunk(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i];
    float u = kSqrt2OverPi * (v + 0.044715f * v * v * v);
    out[i] = 0.5f * v * (1.0f + fast_tanh(u));
  }
}

LLM_SIMD_CLONES void gelu_backward_chunk(float* dinp, const float* x, const float* dout, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i];
    float u = kSqrt2OverPi * (v + 0.044715f * v * v * v);
    float th = fast_tanh(u);
    float sech2 = 1.0f - th * th;
    float du = kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * v * v);
    dinp[i] = (0.5f * (1.0f + th) + 0.5f * v * sech2 * du) * dout[i];
  }
}
}  // namespace

void gelu_forward(const Tensor& out, const Tensor& inp) {
  check_f32(inp, inp.shape(), "gelu_forward inp");
  check_f32(out, inp.shape(), "gelu_forward out");
  float* o = out.data<float>();
  const float* x = inp.data<float>();
  const int64_t n = inp.numel();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n; c += kChunk) gelu_chunk(o + c, x + c, std::min(kChunk, n - c));
}

void gelu_backward(const Tensor& dinp, const Tensor& inp, const Tensor& dout) {
  check_f32(inp, inp.shape(), "gelu_backward inp");
  check_f32(dout, inp.shape(), "gelu_backward dout");
  check_f32(dinp, inp.shape(), "gelu_backward dinp");
  float* di = dinp.data<float>();
  const float* x = inp.data<float>();
  const float* d = dout.data<float>();
  const int64_t n = inp.numel();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n; c += kChunk) gelu_backward_chunk(di + c, x + c, d + c, std::min(kChunk, n - c));
}

}  // namespace llm::cpu
