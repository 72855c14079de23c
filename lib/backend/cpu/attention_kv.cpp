// Attention against a KV cache, for generation: append the new tokens' keys and values, then
// each new query attends to every cached position up to its own. Decode (one new token) is
// memory-bound on reading the cache; one task per (batch, head, query) keeps both cores busy.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace llm::cpu {

namespace {

LLM_SIMD_CLONES float dot(const float* a, const float* b, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

LLM_SIMD_CLONES void axpy(float* y, const float* x, float a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

}  // namespace

void attention_kv_forward(const Tensor& out, const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache,
                          int64_t past, int n_head) {
  const AttentionKvShape k = attention_kv_shape(qkv, k_cache, past, n_head);
  const int64_t B = k.B, Tn = k.Tn, C = k.C, maxT = k.maxT, hd = C / n_head, NH = n_head;
  check_f32(qkv, qkv.shape(), "attention_kv_forward qkv");
  check_f32(k_cache, {B, maxT, C}, "attention_kv_forward k_cache");
  check_f32(v_cache, {B, maxT, C}, "attention_kv_forward v_cache");
  check_f32(out, {B, Tn, C}, "attention_kv_forward out");
  const float* q = qkv.data<float>();
  float* kc = k_cache.data<float>();
  float* vc = v_cache.data<float>();
  float* o = out.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < Tn; ++t) {
      const float* row = q + (b * Tn + t) * 3 * C;
      std::memcpy(kc + (b * maxT + past + t) * C, row + C, static_cast<size_t>(C) * sizeof(float));
      std::memcpy(vc + (b * maxT + past + t) * C, row + 2 * C, static_cast<size_t>(C) * sizeof(float));
    }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel
  {
    std::vector<float> s(static_cast<size_t>(past + Tn));
#pragma omp for collapse(3) schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < NH; ++h)
        for (int64_t t = 0; t < Tn; ++t) {
          const float* qi = q + (b * Tn + t) * 3 * C + h * hd;
          const int64_t L = past + t + 1;
          const float* kb = kc + b * maxT * C + h * hd;
          const float* vb = vc + b * maxT * C + h * hd;
          float m = -INFINITY;
          for (int64_t j = 0; j < L; ++j) {
            s[j] = dot(qi, kb + j * C, hd) * scale;
            m = std::max(m, s[j]);
          }
          float z = 0.0f;
          for (int64_t j = 0; j < L; ++j) z += (s[j] = std::exp(s[j] - m));
          float* oi = o + (b * Tn + t) * C + h * hd;
          std::fill(oi, oi + hd, 0.0f);
          const float inv = 1.0f / z;
          for (int64_t j = 0; j < L; ++j) axpy(oi, vb + j * C, s[j] * inv, hd);
        }
  }
}

}  // namespace llm::cpu
