// Element-type conversion between f32, bf16 and f16, and the non-finite count: the pieces of
// mixed precision on the host (CpuBackend widens bf16/f16 operands to f32 through these).
#include <algorithm>
#include <cmath>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/simd.h"

namespace llm::cpu {

void check_float(const Tensor& t, const Shape& shape, const char* what) {
  expect_shape(t, shape, what, t.dtype());
  LLM_CHECK(is_float(t.dtype()), what, ": element type must be f32, bf16 or f16, got ", dtype_name(t.dtype()));
  LLM_CHECK(t.device().is_cpu() && t.is_contiguous(), what, ": needs a contiguous host tensor");
}

namespace {
constexpr int64_t kChunk = 16384;

float load(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// Typed per-chunk kernels, branch-free so GCC vectorises them (f16 through vcvtps2ph/vcvtph2ps in
// the AVX-512 and AVX2 clones instead of the library's scalar conversion).
LLM_SIMD_CLONES void f32_to_bf16_chunk(uint16_t* d, const float* s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(s[i]);
}
LLM_SIMD_CLONES void bf16_to_f32_chunk(float* d, const uint16_t* s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
}
// f16: GCC converts _Float16 through a library call per element unless F16C is enabled, which
// target_clones cannot add to a clone; so an F16C path (vcvtps2ph / vcvtph2ps, round to nearest
// even as IEEE conversion) chosen at run time, and the portable loop elsewhere.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx,f16c"))) void f32_to_f16_f16c(_Float16* d, const float* s, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) d[i] = static_cast<_Float16>(s[i]);
}
__attribute__((target("avx,f16c"))) void f16_to_f32_f16c(float* d, const _Float16* s, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  for (; i < n; ++i) d[i] = static_cast<float>(s[i]);
}
bool have_f16c() {
  static const bool yes = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  return yes;
}
#else
bool have_f16c() { return false; }
void f32_to_f16_f16c(_Float16*, const float*, int64_t) {}
void f16_to_f32_f16c(float*, const _Float16*, int64_t) {}
#endif
void f32_to_f16_chunk(_Float16* d, const float* s, int64_t n) {
  if (have_f16c()) return f32_to_f16_f16c(d, s, n);
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<_Float16>(s[i]);
}
void f16_to_f32_chunk(float* d, const _Float16* s, int64_t n) {
  if (have_f16c()) return f16_to_f32_f16c(d, s, n);
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
}

// One chunk of dst = src between two different types (bf16 <-> f16 through f32).
void convert_chunk(DType dt, void* d, DType st, const void* s, int64_t n) {
  if (st == DType::f32) {
    if (dt == DType::bf16) return f32_to_bf16_chunk(static_cast<uint16_t*>(d), static_cast<const float*>(s), n);
    return f32_to_f16_chunk(static_cast<_Float16*>(d), static_cast<const float*>(s), n);
  }
  if (dt == DType::f32) {
    if (st == DType::bf16) return bf16_to_f32_chunk(static_cast<float*>(d), static_cast<const uint16_t*>(s), n);
    return f16_to_f32_chunk(static_cast<float*>(d), static_cast<const _Float16*>(s), n);
  }
  float tmp[kChunk];
  convert_chunk(DType::f32, tmp, st, s, n);
  convert_chunk(dt, d, DType::f32, tmp, n);
}
}  // namespace

void widen(float* dst, DType st, const void* src, int64_t n) {
  LLM_CHECK(is_float(st), "widen: f32, bf16 or f16, not ", dtype_name(st));
  if (st == DType::f32) {
    std::copy_n(static_cast<const float*>(src), n, dst);
    return;
  }
  convert_chunk(DType::f32, dst, st, src, n);  // to f32: any length
}

void convert(const Tensor& dst, const Tensor& src) {
  check_float(src, src.shape(), "convert src");
  check_float(dst, src.shape(), "convert dst");
  const DType st = src.dtype(), dt = dst.dtype();
  const char* s = static_cast<const char*>(src.raw());
  char* d = static_cast<char*>(dst.raw());
  const int64_t n = src.numel();
  if (st == dt) {
    if (s != d) std::copy_n(s, src.nbytes(), d);
    return;
  }
  const int64_t ss = static_cast<int64_t>(dtype_size(st)), ds = static_cast<int64_t>(dtype_size(dt));
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n; c += kChunk) convert_chunk(dt, d + c * ds, st, s + c * ss, std::min(kChunk, n - c));
}

int64_t count_nonfinite(const Tensor& x) {
  check_float(x, x.shape(), "count_nonfinite x");
  const DType t = x.dtype();
  const void* p = x.raw();
  const int64_t n = x.numel();
  int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count)
  for (int64_t i = 0; i < n; ++i) count += std::isfinite(load(t, p, i)) ? 0 : 1;
  return count;
}

}  // namespace llm::cpu
