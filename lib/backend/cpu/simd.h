// Vectorisation helpers for the CPU backend.
//
// Hot loops are written as plain, branch-free C++ that GCC auto-vectorises. LLM_SIMD_CLONES
// compiles a function three times (AVX-512, AVX2, baseline x86-64) and picks one at load time
// (GCC function multi-versioning), so one portable binary still uses AVX-512 where the CPU has
// it. Apply it to the per-chunk kernel, not to a function holding an OpenMP region (the outlined
// region would not inherit the clone's ISA).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define LLM_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LLM_SIMD_CLONES
#endif

namespace llm::cpu {

// exp(x) to ~2 ulp over the float range, branch-free so loops vectorise. Inputs below -87.3
// flush to ~1e-38 (not 0), above 88.7 saturate.
static inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  float t = x * 1.4426950408889634f;               // x / ln 2
  float n = (t + 12582912.0f) - 12582912.0f;        // round to nearest (1.5 * 2^23 trick)
  float y = (t - n) * 0.6931471805599453f;          // remainder, |y| <= ln2 / 2
  float p = 1.0f / 720.0f;
  p = p * y + 1.0f / 120.0f;
  p = p * y + 1.0f / 24.0f;
  p = p * y + 1.0f / 6.0f;
  p = p * y + 0.5f;
  p = p * y + 1.0f;
  p = p * y + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// tanh through exp; absolute error ~1e-7, which is what GELU needs.
static inline float fast_tanh(float x) { return 1.0f - 2.0f / (fast_exp(2.0f * x) + 1.0f); }

}  // namespace llm::cpu
