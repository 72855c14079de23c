// LayerNorm over the last dimension, saving mean and 1/std for the backward.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace llm::cpu {

namespace {

LLM_SIMD_CLONES void layernorm_row(float* out, float* mean_out, float* rstd_out, const float* x,
                                   const float* w, const float* b, int64_t C, float eps) {
  float sum = 0.0f;
  for (int64_t c = 0; c < C; ++c) sum += x[c];
  const float mean = sum / static_cast<float>(C);
  float var = 0.0f;
  for (int64_t c = 0; c < C; ++c) {
    float d = x[c] - mean;
    var += d * d;
  }
  const float rstd = 1.0f / std::sqrt(var / static_cast<float>(C) + eps);
  for (int64_t c = 0; c < C; ++c) out[c] = (x[c] - mean) * rstd * w[c] + b[c];
  *mean_out = mean;
  *rstd_out = rstd;
}

// dinp += ...; dw/db partials (per thread) +=.
LLM_SIMD_CLONES void layernorm_backward_row(float* dinp, float* dw, float* db, const float* dout,
                                            const float* x, const float* w, float mean, float rstd,
                                            int64_t C) {
  float sum_dn = 0.0f, sum_dn_n = 0.0f;
  for (int64_t c = 0; c < C; ++c) {
    float n = (x[c] - mean) * rstd;
    float dn = w[c] * dout[c];
    sum_dn += dn;
    sum_dn_n += dn * n;
  }
  const float mdn = sum_dn / static_cast<float>(C), mdnn = sum_dn_n / static_cast<float>(C);
  for (int64_t c = 0; c < C; ++c) {
    float n = (x[c] - mean) * rstd;
    float dn = w[c] * dout[c];
    dinp[c] += (dn - mdn - n * mdnn) * rstd;
    dw[c] += dout[c] * n;
    db[c] += dout[c];
  }
}

}  // namespace

void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& inp,
                       const Tensor& weight, const Tensor& bias, float eps) {
  const int64_t C = inp.size(-1), N = rows_of(inp, "layernorm_forward inp");
  check_f32(inp, inp.shape(), "layernorm_forward inp");
  check_f32(out, inp.shape(), "layernorm_forward out");
  check_f32(mean, {N}, "layernorm_forward mean");
  check_f32(rstd, {N}, "layernorm_forward rstd");
  check_f32(weight, {C}, "layernorm_forward weight");
  check_f32(bias, {C}, "layernorm_forward bias");
  float* o = out.data<float>();
  float* pm = mean.data<float>();
  float* pr = rstd.data<float>();
  const float* x = inp.data<float>();
  const float* w = weight.data<float>();
  const float* b = bias.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) layernorm_row(o + i * C, pm + i, pr + i, x + i * C, w, b, C, eps);
}

void layernorm_backward(const Tensor& dinp, const Tensor& dweight, const Tensor& dbias,
                        const Tensor& dout, const Tensor& inp, const Tensor& weight,
                        const Tensor& mean, const Tensor& rstd) {
  const int64_t C = inp.size(-1), N = rows_of(inp, "layernorm_backward inp");
  check_f32(inp, inp.shape(), "layernorm_backward inp");
  check_f32(dout, inp.shape(), "layernorm_backward dout");
  check_f32(dinp, inp.shape(), "layernorm_backward dinp");
  check_f32(weight, {C}, "layernorm_backward weight");
  check_f32(dweight, {C}, "layernorm_backward dweight");
  check_f32(dbias, {C}, "layernorm_backward dbias");
  check_f32(mean, {N}, "layernorm_backward mean");
  check_f32(rstd, {N}, "layernorm_backward rstd");
  float* di = dinp.data<float>();
  const float* d = dout.data<float>();
  const float* x = inp.data<float>();
  const float* w = weight.data<float>();
  const float* pm = mean.data<float>();
  const float* pr = rstd.data<float>();
  // Each thread accumulates dweight/dbias privately; the partials are added in thread order,
  // so the result is deterministic for a given thread count.
  const int nt = omp_get_max_threads();
  std::vector<float> partial(static_cast<size_t>(nt) * 2 * C, 0.0f);
  int used = 1;
#pragma omp parallel
  {
    const int id = omp_get_thread_num();
#pragma omp single
    used = omp_get_num_threads();
    float* pdw = partial.data() + static_cast<size_t>(id) * 2 * C;
    float* pdb = pdw + C;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N; ++i)
      layernorm_backward_row(di + i * C, pdw, pdb, d + i * C, x + i * C, w, pm[i], pr[i], C);
  }
  float* gw = dweight.data<float>();
  float* gb = dbias.data<float>();
  for (int t = 0; t < used; ++t) {
    const float* pdw = partial.data() + static_cast<size_t>(t) * 2 * C;
    for (int64_t c = 0; c < C; ++c) {
      gw[c] += pdw[c];
      gb[c] += pdw[C + c];
    }
  }
}

}  // namespace llm::cpu
