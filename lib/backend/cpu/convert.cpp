// Element-type conversion between f32, bf16 and f16, and the non-finite count: the pieces of
// mixed precision on the host (CpuBackend widens bf16/f16 operands to f32 through these).
#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_ops.h"

namespace llm::cpu {

namespace {
constexpr int64_t kChunk = 16384;

bool is_float(DType t) { return t == DType::f32 || t == DType::bf16 || t == DType::f16; }

void check_float(const Tensor& t, const Shape& shape, const char* what) {
  expect_shape(t, shape, what, t.dtype());
  LLM_CHECK(is_float(t.dtype()), what, ": element type must be f32, bf16 or f16, got ", dtype_name(t.dtype()));
  LLM_CHECK(t.device().is_cpu() && t.is_contiguous(), what, ": needs a contiguous host tensor");
}

float load(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
}  // namespace

void convert(const Tensor& dst, const Tensor& src) {
  check_float(src, src.shape(), "convert src");
  check_float(dst, src.shape(), "convert dst");
  const DType st = src.dtype(), dt = dst.dtype();
  const void* s = src.raw();
  void* d = dst.raw();
  const int64_t n = src.numel();
  if (st == dt) {
    if (s != d) std::copy_n(static_cast<const char*>(s), src.nbytes(), static_cast<char*>(d));
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t e = std::min(n, c + kChunk);
    switch (dt) {
      case DType::f32:
        for (int64_t i = c; i < e; ++i) static_cast<float*>(d)[i] = load(st, s, i);
        break;
      case DType::bf16:
        for (int64_t i = c; i < e; ++i) static_cast<uint16_t*>(d)[i] = f32_to_bf16(load(st, s, i));
        break;
      default:
        for (int64_t i = c; i < e; ++i) static_cast<uint16_t*>(d)[i] = f32_to_f16(load(st, s, i));
        break;
    }
  }
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
