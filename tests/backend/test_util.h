// Helpers shared by the backend tests: deterministic inputs, host/device conversion, and a
// tolerance check that reports the worst element.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/reference.h"
#include "core/philox.h"
#include "core/tensor.h"

namespace bt {

using ref::IVec;
using ref::Vec;

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Deterministic random data. Every call draws from a fresh Philox stream, so each tensor of a
// test gets independent values; values are rounded to float so the double reference sees
// exactly what the backend sees.
class Rng {
 public:
  explicit Rng(uint64_t seed) : seed_(seed) {}
  Vec normal(size_t n, double sd = 1.0, double mean = 0.0) {
    const uint64_t s = stream_++;
    Vec v(n);
    for (size_t i = 0; i < n; ++i)
      v[i] = double(float(mean + sd * double(llm::philox_normal(seed_, s, i))));
    return v;
  }
  Vec uniform(size_t n, double lo, double hi) {
    const uint64_t s = stream_++;
    Vec v(n);
    for (size_t i = 0; i < n; ++i)
      v[i] = double(float(lo + (hi - lo) * double(llm::philox_uniform(seed_, s, i))));
    return v;
  }
  IVec below(size_t n, int k) {
    const uint64_t s = stream_++;
    IVec v(n);
    for (size_t i = 0; i < n; ++i) v[i] = int32_t(llm::philox_below(seed_, s, i, uint64_t(k)));
    return v;
  }

 private:
  uint64_t seed_;
  uint64_t stream_ = 0;
};

inline Vec constant(size_t n, double value) { return Vec(n, value); }

inline Vec add(const Vec& a, const Vec& b) {
  Vec r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] + b[i];
  return r;
}

inline Vec abs_of(const Vec& a) {
  Vec r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = std::fabs(a[i]);
  return r;
}

inline double max_abs(const Vec& a) {
  double m = 0.0;
  for (double x : a) m = std::max(m, std::fabs(x));
  return m;
}

inline double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Elements [start, start+len) of every row of a [rows, width] matrix.
inline Vec columns(const Vec& a, size_t rows, size_t width, size_t start, size_t len) {
  Vec r;
  r.reserve(rows * len);
  for (size_t i = 0; i < rows; ++i)
    for (size_t j = 0; j < len; ++j) r.push_back(a[i * width + start + j]);
  return r;
}

// ---- host tensors ---------------------------------------------------------------------------

inline llm::Tensor host_f32(const llm::Shape& shape, const Vec& v) {
  llm::Tensor t = llm::Tensor::empty(shape, llm::DType::f32);
  EXPECT_EQ(size_t(t.numel()), v.size()) << "host_f32 size mismatch for " << llm::shape_str(shape);
  float* p = t.data<float>();
  for (size_t i = 0; i < v.size() && i < size_t(t.numel()); ++i) p[i] = float(v[i]);
  return t;
}

inline llm::Tensor host_i32(const llm::Shape& shape, const IVec& v) {
  llm::Tensor t = llm::Tensor::empty(shape, llm::DType::i32);
  EXPECT_EQ(size_t(t.numel()), v.size()) << "host_i32 size mismatch for " << llm::shape_str(shape);
  int32_t* p = t.data<int32_t>();
  for (size_t i = 0; i < v.size() && i < size_t(t.numel()); ++i) p[i] = v[i];
  return t;
}

inline Vec to_vec(const llm::Tensor& host) {
  const float* p = host.data<float>();
  Vec v(size_t(host.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = double(p[i]);
  return v;
}

// Low-precision (bf16/f16) host tensors holding round(v); the f32 values they hold; and back.
inline llm::Tensor host_low(const llm::Shape& s, const Vec& v, llm::DType t) {
  llm::Tensor h = llm::Tensor::empty(s, t);
  EXPECT_EQ(size_t(h.numel()), v.size()) << "host_low size mismatch for " << llm::shape_str(s);
  auto* p = static_cast<uint16_t*>(h.raw());
  for (size_t i = 0; i < v.size() && i < size_t(h.numel()); ++i)
    p[i] = t == llm::DType::bf16 ? llm::f32_to_bf16(float(v[i])) : llm::f32_to_f16(float(v[i]));
  return h;
}
inline Vec rounded_to(const Vec& v, llm::DType t) {
  Vec r(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    r[i] = t == llm::DType::bf16 ? llm::bf16_to_f32(llm::f32_to_bf16(float(v[i])))
                                 : llm::f16_to_f32(llm::f32_to_f16(float(v[i])));
  return r;
}
inline Vec low_to_vec(const llm::Tensor& host) {
  const auto* p = static_cast<const uint16_t*>(host.raw());
  Vec r(size_t(host.numel()));
  for (size_t i = 0; i < r.size(); ++i)
    r[i] = host.dtype() == llm::DType::bf16 ? llm::bf16_to_f32(p[i]) : llm::f16_to_f32(p[i]);
  return r;
}
// Unit roundoff of a type: the relative error of storing one value.
inline double unit(llm::DType t) {
  return t == llm::DType::bf16 ? 1.0 / 256 : t == llm::DType::f16 ? 1.0 / 2048 : 1e-7;
}

// ---- tolerance check ------------------------------------------------------------------------

// Element i passes when |got - ref| <= rtol |ref| + atol + mtol * mag[i] (mag: the magnitude of
// the terms that produced ref, e.g. sum |a_k b_k| of a dot product; fp32 rounding error scales
// with it rather than with |ref|). NaN or Inf in got always fails.
struct Tol {
  double rtol = 0.0;
  double atol = 0.0;
  double mtol = 0.0;
};

inline bool verbose() {
  static const bool v = std::getenv("BACKEND_TEST_VERBOSE") != nullptr;
  return v;
}

inline ::testing::AssertionResult all_close(const std::string& what, const Vec& got,
                                            const Vec& ref, Tol tol, const Vec* mag = nullptr) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure()
           << what << ": size mismatch, got " << got.size() << " elements, reference " << ref.size();
  if (ref.empty())  // two empty vectors compare nothing: a test that meant to check something did not
    return ::testing::AssertionFailure() << what << ": nothing to compare (0 elements)";
  if (mag && mag->size() != ref.size())
    return ::testing::AssertionFailure() << what << ": magnitude vector has the wrong size";
  size_t bad = 0, worst = 0;
  double worst_ratio = -1.0, max_abs_err = 0.0, max_rel_err = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(got[i] - ref[i]);
    const double t = tol.rtol * std::fabs(ref[i]) + tol.atol + (mag ? tol.mtol * (*mag)[i] : 0.0);
    const bool ok = std::isfinite(got[i]) && err <= t;
    const double ratio = std::isfinite(err) ? (t > 0 ? err / t : (err > 0 ? INFINITY : 0.0)) : INFINITY;
    if (!ok) ++bad;
    if (ratio > worst_ratio || (!ok && worst_ratio <= 1.0)) {
      worst_ratio = ratio;
      worst = i;
    }
    if (std::isfinite(err)) {
      max_abs_err = std::max(max_abs_err, err);
      if (ref[i] != 0.0) max_rel_err = std::max(max_rel_err, err / std::fabs(ref[i]));
    }
  }
  auto describe = [&](std::ostream& os) {
    os << what << ": " << bad << " of " << ref.size() << " elements out of tolerance (rtol "
       << tol.rtol << ", atol " << tol.atol;
    if (mag) os << ", mtol " << tol.mtol;
    os << "); worst at flat index " << worst << ": got " << got[worst] << ", ref " << ref[worst]
       << ", |diff| " << std::fabs(got[worst] - ref[worst]);
    if (mag) os << ", mag " << (*mag)[worst];
    os << ", |diff|/tol " << worst_ratio << "; max |diff| " << max_abs_err << ", max rel "
       << max_rel_err;
  };
  if (bad) {
    auto r = ::testing::AssertionFailure();
    std::ostringstream os;
    os.precision(9);
    describe(os);
    return r << os.str();
  }
  if (verbose() && !ref.empty()) {
    std::ostringstream os;
    os.precision(3);
    os << "  [ok] " << what << ": worst |diff|/tol " << worst_ratio << " (max |diff| "
       << max_abs_err << ")\n";
    std::printf("%s", os.str().c_str());
  }
  return ::testing::AssertionSuccess();
}

// Every element of `got` must equal the same element of `expected` exactly (e.g. untouched
// padding, zero gradients, two kernels' bits); the sizes must agree (0 is allowed: a shape with
// no padding has none to check).
inline ::testing::AssertionResult all_equal(const std::string& what, const Vec& got,
                                            const Vec& expected) {
  if (got.size() != expected.size())
    return ::testing::AssertionFailure() << what << ": " << got.size() << " elements against " << expected.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (!(got[i] == expected[i]))
      return ::testing::AssertionFailure() << what << ": element " << i << " is " << got[i]
                                           << ", expected exactly " << expected[i];
  return ::testing::AssertionSuccess();
}

}  // namespace bt
