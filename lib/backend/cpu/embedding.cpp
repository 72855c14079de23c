// Token + learned position embedding.
#include <omp.h>

#include <algorithm>

#include "backend/cpu/cpu_ops.h"

namespace llm::cpu {

void embedding_forward(const Tensor& out, const Tensor& tokens, const Tensor& wte, const Tensor& wpe,
                       int64_t vocab_begin, int64_t vocab_total) {
  LLM_CHECK(tokens.dim() == 2, "embedding_forward tokens: expected [B,T], got ", shape_str(tokens.shape()));
  const int64_t B = tokens.size(0), T = tokens.size(1), C = wte.size(1), Vl = wte.size(0);
  const int64_t Vt = vocab_total > 0 ? vocab_total : Vl;
  expect_shape(tokens, {B, T}, "embedding_forward tokens", DType::i32);
  check_float(wte, {Vl, C}, "embedding_forward wte");
  LLM_CHECK(vocab_begin >= 0 && vocab_begin + Vl <= Vt, "embedding_forward: shard [", vocab_begin, ", ",
            vocab_begin + Vl, ") outside the vocabulary of ", Vt);
  const bool pos = wpe.defined();
  if (pos) {
    LLM_CHECK(wpe.dim() == 2 && wpe.size(0) >= T, "embedding_forward: sequence length ", T,
              " exceeds the position table ", shape_str(wpe.shape()));
    check_f32(wpe, {wpe.size(0), C}, "embedding_forward wpe");
  }
  check_f32(out, {B, T, C}, "embedding_forward out");
  const int32_t* tok = tokens.data<int32_t>();
  const DType wt = wte.dtype();
  const char* pte = static_cast<const char*>(wte.raw());
  const int64_t row_bytes = C * static_cast<int64_t>(dtype_size(wt));
  const float* ppe = pos ? wpe.data<float>() : nullptr;
  float* o = out.data<float>();
  for (int64_t i = 0; i < B * T; ++i)
    LLM_CHECK(tok[i] >= 0 && tok[i] < Vt, "embedding_forward: token id ", tok[i], " at position ", i,
              " outside the vocabulary [0, ", Vt, ")");
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < B * T; ++i) {
    const int64_t row = static_cast<int64_t>(tok[i]) - vocab_begin;
    const char* e = row >= 0 && row < Vl ? pte + row * row_bytes : nullptr;
    const float* p = pos ? ppe + (i % T) * C : nullptr;
    float* dst = o + i * C;
    if (e) {
      widen(dst, wt, e, C);  // a copy in f32
      if (p)
        for (int64_t c = 0; c < C; ++c) dst[c] += p[c];
    } else if (p)
      std::copy(p, p + C, dst);
    else
      std::fill(dst, dst + C, 0.0f);
  }
}

void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& dout, const Tensor& tokens,
                        int64_t vocab_begin) {
  const int64_t B = tokens.size(0), T = tokens.size(1), C = dwte.size(1), Vl = dwte.size(0);
  expect_shape(tokens, {B, T}, "embedding_backward tokens", DType::i32);
  check_f32(dwte, {Vl, C}, "embedding_backward dwte");
  const bool pos = dwpe.defined();
  if (pos) {
    LLM_CHECK(dwpe.dim() == 2 && dwpe.size(0) >= T, "embedding_backward: sequence length ", T,
              " exceeds the position gradient ", shape_str(dwpe.shape()));
    check_f32(dwpe, {dwpe.size(0), C}, "embedding_backward dwpe");
  }
  check_f32(dout, {B, T, C}, "embedding_backward dout");
  const int32_t* tok = tokens.data<int32_t>();
  const float* d = dout.data<float>();
  float* gte = dwte.data<float>();
  float* gpe = pos ? dwpe.data<float>() : nullptr;
  // Repeated tokens make row-parallel scatter racy; instead each thread owns a band of
  // channels and walks all positions, which is race-free and deterministic.
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t c0 = C * id / nt, c1 = C * (id + 1) / nt;
    for (int64_t i = 0; i < B * T; ++i) {
      const int64_t row = static_cast<int64_t>(tok[i]) - vocab_begin;
      if (row < 0 || row >= Vl) continue;  // another shard's token
      float* g = gte + row * C;
      const float* s = d + i * C;
      for (int64_t c = c0; c < c1; ++c) g[c] += s[c];
    }
    if (pos) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T; ++t) {
        float* g = gpe + t * C;
        for (int64_t b = 0; b < B; ++b) {
          const float* s = d + (b * T + t) * C;
          for (int64_t c = 0; c < C; ++c) g[c] += s[c];
        }
      }
    }
  }
}

}  // namespace llm::cpu
